package oidctoken

import (
	"container/list"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/agent/feature"
)

// errBadAudience is the issuer refusing the audience, or a token file's
// ttl beyond its max_ttl (400): the caller's or the config's fault, not
// an outage.
var errBadAudience = errors.New("issuer refused the audience or ttl")

// cacheKey names one cache entry: the audience alone for the tokens the
// guest API hands out (their life is [tokens] ttl), the audience and a
// life for a token file that sets ttl, so such a file gets tokens of its
// own life without changing anyone else's. The separator cannot occur in
// an audience (printable ASCII only, checked before any lookup).
func cacheKey(aud string, ttl time.Duration) string {
	if ttl <= 0 {
		return aud
	}
	return aud + "\x00" + ttl.String()
}

// splitCacheKey is the inverse of cacheKey.
func splitCacheKey(key string) (aud string, ttl time.Duration) {
	aud, life, ok := strings.Cut(key, "\x00")
	if !ok {
		return key, 0
	}
	ttl, _ = time.ParseDuration(life)
	return aud, ttl
}

// errCacheClosed is returned once the agent is shutting down.
var errCacheClosed = errors.New("token cache closed")

// issued is one OIDC token as the cache hands it out.
type issued = feature.Token

// tokenEntry is one cached audience.
type tokenEntry struct {
	aud       string
	tok       issued
	fetched   time.Time
	refreshAt time.Time
	usableTil time.Time // expiry minus a safety margin
	// used: requested during this token's life. Only such audiences are
	// refreshed in the background, so one that nobody asks for any more
	// lapses instead of being renewed forever.
	used  bool
	timer *time.Timer
	elem  *list.Element
	// body is tok.JWT as the reply's bytes, built once per token so a
	// cache hit copies nothing; bodyLen is its Content-Length and reply
	// the whole header of its reply, for the fast lane (jwtReply).
	body    []byte
	bodyLen []string
	reply   []byte
	// servedTo: the processes this token was handed to from the cache,
	// so the audit log has one line per process and token (see serve).
	// It starts empty with each new token.
	servedTo map[servedProc]struct{}
}

// servedProc identifies a calling process for the audit dedup.
type servedProc struct {
	uid uint32
	pid int32
}

// maxServed bounds the memory of which process got which token, over the
// whole cache: past it every entry forgets, and the next serve of each is
// logged again (more lines, never fewer).
const maxServed = 8192

// flight is one issuer call that every concurrent caller for the same
// audience waits on.
type flight struct {
	done chan struct{}
	tok  issued
	err  error
}

// tokenCacheConfig is read on every use, so a reload applies at once.
type tokenCacheConfig struct {
	refreshAt    float64
	maxAudiences int
	timeout      time.Duration
}

// tokenCache caches OIDC tokens per audience: single flight per audience,
// background refresh at a fraction of the lifetime, bounded size (oldest
// audience evicted first), and a cached token still usable is served while
// the issuer is down.
type tokenCache struct {
	now   func() time.Time // the agent's clock (agent.Options.Now)
	fetch func(ctx context.Context, aud string) (issued, error)
	cfg   func() tokenCacheConfig
	ctx   context.Context // ends at shutdown; parent of every fetch

	mu      sync.Mutex
	entries map[string]*tokenEntry
	order   *list.List // of *tokenEntry, oldest first
	flights map[string]*flight
	served  int // entries in every tokenEntry.servedTo
	closed  bool
	wg      sync.WaitGroup

	hits, misses, fetches, fetchErrors, refreshes atomic.Uint64
}

func newTokenCache(ctx context.Context, now func() time.Time, fetch func(context.Context, string) (issued, error), cfg func() tokenCacheConfig) *tokenCache {
	return &tokenCache{
		now:     now,
		fetch:   fetch,
		cfg:     cfg,
		ctx:     ctx,
		entries: map[string]*tokenEntry{},
		order:   list.New(),
		flights: map[string]*flight{},
	}
}

// Token sources reported by get, for the log.
const (
	SourceCache  = "cache"
	SourceIssuer = "issuer"
)

// get returns a token for aud: cached when usable (starting a background
// refresh once past the refresh point), else from the one issuer call in
// flight for aud.
func (c *tokenCache) get(ctx context.Context, aud string) (issued, string, error) {
	h, err := c.lookup(ctx, aud, nil)
	return h.tok, h.src, err
}

// hit is what lookup found: the token, its reply bytes, length and header
// (nil from a fetch) and, for a cache hit with a caller, whether this is
// the token's first serve to that process.
type hit struct {
	tok     issued
	body    []byte
	bodyLen []string
	reply   []byte
	src     string
	first   bool
}

// serve is get for a guest API caller: the token, its pre-built reply
// bytes and the audit dedup, all under the cache's one lock.
func (c *tokenCache) serve(ctx context.Context, aud string, p servedProc) (hit, error) {
	return c.lookup(ctx, aud, &p)
}

func (c *tokenCache) lookup(ctx context.Context, aud string, p *servedProc) (hit, error) {
	now := c.now()
	c.mu.Lock()
	if e := c.entries[aud]; e != nil && now.Before(e.usableTil) {
		h := c.hitLocked(e, now, p)
		c.mu.Unlock()
		c.hits.Add(1)
		return h, nil
	}
	f := c.startFlightLocked(aud, true)
	c.mu.Unlock()
	c.misses.Add(1)
	select {
	case <-f.done:
	case <-ctx.Done():
		return hit{}, ctx.Err()
	}
	if f.err != nil {
		return hit{}, f.err
	}
	return hit{tok: f.tok, src: SourceIssuer}, nil
}

// hitLocked is a lookup's answer from e, a usable entry: it marks e used,
// starts its refresh once past the refresh point, and tells whether p
// (when given) is handed this token for the first time.
func (c *tokenCache) hitLocked(e *tokenEntry, now time.Time, p *servedProc) hit {
	e.used = true
	if !now.Before(e.refreshAt) {
		c.startFlightLocked(e.aud, true)
	}
	h := hit{tok: e.tok, body: e.body, bodyLen: e.bodyLen, reply: e.reply, src: SourceCache}
	if p != nil {
		h.first = c.firstServeLocked(e, *p)
	}
	return h
}

// serveCached is serve for the fast lane: a cache hit only, for an
// audience given as the request's bytes; ok is false, and nothing
// changed, when aud has no usable token (the handler then fetches one).
func (c *tokenCache) serveCached(aud []byte, p servedProc) (h hit, ok bool) {
	now := c.now()
	c.mu.Lock()
	e := c.entries[string(aud)]
	if e == nil || !now.Before(e.usableTil) {
		c.mu.Unlock()
		return hit{}, false
	}
	h = c.hitLocked(e, now, &p)
	c.mu.Unlock()
	c.hits.Add(1)
	return h, true
}

// firstServeLocked reports whether e's token is handed to p for the
// first time, and remembers it.
func (c *tokenCache) firstServeLocked(e *tokenEntry, p servedProc) bool {
	if _, seen := e.servedTo[p]; seen {
		return false
	}
	if c.served >= maxServed {
		for _, o := range c.entries {
			o.servedTo = nil
		}
		c.served = 0
	}
	if e.servedTo == nil {
		e.servedTo = make(map[servedProc]struct{}, 4)
	}
	e.servedTo[p] = struct{}{}
	c.served++
	return true
}

// startFlightLocked returns the flight for aud, starting one if none is
// under way. The fetch runs on the cache's context, not a caller's: one
// caller giving up must not fail the others waiting on it.
func (c *tokenCache) startFlightLocked(aud string, requested bool) *flight {
	if f := c.flights[aud]; f != nil {
		return f
	}
	f := &flight{done: make(chan struct{})}
	if c.closed {
		f.err = errCacheClosed
		close(f.done)
		return f
	}
	c.flights[aud] = f
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		cfg := c.cfg()
		ctx, cancel := context.WithTimeout(c.ctx, cfg.timeout)
		tok, err := c.fetch(ctx, aud)
		cancel()
		c.fetches.Add(1)
		c.mu.Lock()
		delete(c.flights, aud)
		if err != nil {
			c.fetchErrors.Add(1)
			f.err = err
			c.retryLocked(aud)
		} else {
			f.tok = tok
			c.storeLocked(aud, tok, requested, cfg)
		}
		c.mu.Unlock()
		close(f.done)
	}()
	return f
}

// storeLocked caches tok for aud and schedules its refresh.
func (c *tokenCache) storeLocked(aud string, tok issued, requested bool, cfg tokenCacheConfig) {
	if c.closed {
		return
	}
	now := c.now()
	life := tok.Expires.Sub(now)
	e := c.entries[aud]
	if e == nil {
		e = &tokenEntry{aud: aud}
		e.elem = c.order.PushBack(e)
		c.entries[aud] = e
	} else if e.timer != nil {
		e.timer.Stop()
	}
	if e.tok.JWT != tok.JWT {
		// A new token: nobody has been handed it yet.
		c.served -= len(e.servedTo)
		e.servedTo = nil
		e.body = []byte(tok.JWT)
		e.bodyLen = []string{strconv.Itoa(len(e.body))}
		e.reply = jwtReply(e.bodyLen)
	}
	e.tok, e.fetched, e.used = tok, now, requested
	e.refreshAt = now.Add(time.Duration(float64(life) * cfg.refreshAt))
	// Never hand out a token in its last moments: the caller still has to
	// present it somewhere.
	e.usableTil = tok.Expires.Add(-min(life/10, 30*time.Second))
	e.timer = c.afterLocked(e, e.refreshAt.Sub(now))
	for c.order.Len() > max(cfg.maxAudiences, 1) {
		c.dropLocked(c.order.Front().Value.(*tokenEntry))
	}
}

// retryLocked schedules another background try after a failed fetch while
// the cached token (if any) is still usable.
func (c *tokenCache) retryLocked(aud string) {
	e := c.entries[aud]
	if e == nil || c.closed {
		return
	}
	left := e.usableTil.Sub(c.now())
	if left <= 0 {
		return
	}
	if e.timer != nil {
		e.timer.Stop()
	}
	e.timer = c.afterLocked(e, min(max(left/4, 500*time.Millisecond), 30*time.Second))
}

func (c *tokenCache) afterLocked(e *tokenEntry, d time.Duration) *time.Timer {
	return time.AfterFunc(d, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		// The entry may have been evicted or replaced since.
		if c.closed || c.entries[e.aud] != e || !e.used || !c.now().Before(e.usableTil) {
			return
		}
		c.refreshes.Add(1)
		c.startFlightLocked(e.aud, false)
	})
}

func (c *tokenCache) dropLocked(e *tokenEntry) {
	if e.timer != nil {
		e.timer.Stop()
	}
	c.order.Remove(e.elem)
	delete(c.entries, e.aud)
	c.served -= len(e.servedTo)
}

// size returns the number of cached audiences.
func (c *tokenCache) size() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

// close stops every timer and waits for fetches under way; the caller
// cancels the cache's context first.
func (c *tokenCache) close() {
	c.mu.Lock()
	c.closed = true
	for _, e := range c.entries {
		if e.timer != nil {
			e.timer.Stop()
		}
	}
	c.mu.Unlock()
	c.wg.Wait()
}

// maxJWTLen bounds a token accepted from the issuer.
const maxJWTLen = 16 << 10

// parseTokenReply checks the issuer's {"token","expires_at"} reply.
func parseTokenReply(body []byte, now time.Time) (issued, error) {
	var rep api.TokenReply
	if err := json.Unmarshal(body, &rep); err != nil {
		return issued{}, errors.New("token reply is not the expected JSON")
	}
	if !compactJWS(rep.Token) {
		return issued{}, errors.New("token reply holds no compact JWS")
	}
	if !rep.ExpiresAt.After(now) {
		return issued{}, fmt.Errorf("token reply expires at %s, not in the future", rep.ExpiresAt.Format(time.RFC3339))
	}
	return issued{JWT: rep.Token, Expires: rep.ExpiresAt.UTC(), ID: jwtID(rep.Token)}, nil
}

// compactJWS reports whether s looks like header.payload.signature in
// base64url: anything else is not relayed to callers.
func compactJWS(s string) bool {
	if s == "" || len(s) > maxJWTLen || strings.Count(s, ".") != 2 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c == '.' || c == '-' || c == '_' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9') {
			return false
		}
	}
	return true
}

// jwtID returns the token's jti, which logs may carry instead of the token.
func jwtID(tok string) string {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return ""
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return ""
	}
	var c struct {
		ID string `json:"jti"`
	}
	if json.Unmarshal(payload, &c) != nil || len(c.ID) > 128 {
		return ""
	}
	return c.ID
}
