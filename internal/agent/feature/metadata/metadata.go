package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/httpapi"
	"github.com/wicket-sh/wicket/internal/machinetoken"
	"github.com/wicket-sh/wicket/internal/proxy"
)

// Watch timing defaults; tests shorten them.
const (
	upstreamWaitDefault = 60 * time.Second // one upstream long poll
	backoffMinDefault   = 200 * time.Millisecond
	backoffMaxDefault   = 15 * time.Second
	// minPollInterval spaces out upstream polls that come back unchanged
	// at once, so an issuer that never waits cannot make us spin.
	minPollInterval = time.Second
)

// metaSnapshot is one version of the machine's metadata. It is immutable;
// changed is closed when a newer version replaces it, which wakes every
// local long poll at once.
type metaSnapshot struct {
	raw     []byte // the issuer's JSON, served as is
	etag    string // the issuer's ETag, quoted as it sent it
	fields  map[string]string
	tags    map[string]string
	tagsRaw []byte
	vars    proxy.Vars
	changed chan struct{}
}

// parseMetadata checks the issuer's reply and indexes its fields: string
// values as they are, numbers and booleans as their JSON text.
func parseMetadata(raw []byte, etag string) (*metaSnapshot, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(raw, &top); err != nil || top == nil {
		return nil, errors.New("metadata reply is not a JSON object")
	}
	s := &metaSnapshot{raw: raw, etag: etag, fields: map[string]string{}, tags: map[string]string{}, changed: make(chan struct{})}
	for k, v := range top {
		if k == "tags" {
			var tags map[string]json.RawMessage
			if err := json.Unmarshal(v, &tags); err != nil {
				return nil, errors.New("metadata tags is not a JSON object")
			}
			for tk, tv := range tags {
				var str string
				if json.Unmarshal(tv, &str) == nil {
					s.tags[tk] = str
				}
			}
			continue
		}
		var str string
		switch {
		case json.Unmarshal(v, &str) == nil:
			s.fields[k] = str
		case len(v) > 0 && (v[0] == '-' || v[0] >= '0' && v[0] <= '9' || v[0] == 't' || v[0] == 'f'):
			s.fields[k] = string(v)
		}
	}
	s.tagsRaw, _ = json.Marshal(s.tags)
	s.tagsRaw = append(s.tagsRaw, '\n')
	s.vars = proxy.Vars{Self: s.fields["machine_id"], App: s.fields["app"]}
	if !validETag(etag) {
		// An issuer that sends none still gets stable local long polls.
		sum := sha256.Sum256(raw)
		s.etag = `"` + hex.EncodeToString(sum[:12]) + `"`
	}
	return s, nil
}

func validETag(e string) bool {
	if e == "" || len(e) > 256 {
		return false
	}
	for i := 0; i < len(e); i++ {
		if e[i] < 0x21 || e[i] > 0x7e {
			return false
		}
	}
	return true
}

// sameETag compares a caller's etag with ours, quoted or not.
func sameETag(ours, theirs string) bool {
	unq := func(s string) string {
		s = strings.TrimPrefix(s, "W/")
		if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
			return s[1 : len(s)-1]
		}
		return s
	}
	return ours == theirs || unq(ours) == unq(theirs)
}

// metaCache holds the current snapshot.
type metaCache struct {
	cur     atomic.Pointer[metaSnapshot]
	mu      sync.Mutex // serializes replacements
	waiters atomic.Int64

	// attempted is closed once the first upstream fetch has finished, with
	// or without success: requests arriving before that wait for it rather
	// than fail while the agent is still starting.
	attemptOnce sync.Once
	attempted   chan struct{}
}

func (m *metaCache) init() { m.attempted = make(chan struct{}) }

func (m *metaCache) markAttempted() { m.attemptOnce.Do(func() { close(m.attempted) }) }

// set installs next unless it has the current ETag; it reports whether it
// did.
func (m *metaCache) set(next *metaSnapshot) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	old := m.cur.Load()
	if old != nil && old.etag == next.etag {
		return false
	}
	m.cur.Store(next)
	if old != nil {
		close(old.changed)
	}
	return true
}

// watchMetadata keeps one long poll running against the issuer for as long
// as ctx lives, whatever the number of local waiters, and retries with
// jittered exponential backoff when the issuer fails. The last good
// snapshot stays in use meanwhile.
func (a *Agent) watchMetadata(ctx context.Context) {
	a.watchMetadataFrom(ctx, a.fetchMetadata)
}

// watchMetadataFrom is watchMetadata's loop with the upstream call given,
// so tests can drive the backoff without an issuer.
func (a *Agent) watchMetadataFrom(ctx context.Context, fetch func(context.Context, *metaSnapshot) (*metaSnapshot, error)) {
	backoff := a.backoffMin
	failing := false
	for ctx.Err() == nil {
		cur := a.meta.cur.Load()
		start := a.now()
		next, err := fetch(ctx, cur)
		if ctx.Err() != nil {
			return
		}

		if err != nil {
			a.upstreamErrors.Add(1)
			a.metaFailing.Store(true)
			if !failing {
				a.log.Warn("metadata watch failing; serving cached metadata", "err", err, "cached", cur != nil)
			} else {
				a.log.Debug("metadata watch still failing", "err", err, "retry_in", backoff)
			}
			failing = true
			a.meta.markAttempted()
			sleepCtx(ctx, backoff/2+rand.N(backoff/2+1))
			backoff = min(backoff*2, a.backoffMax)
			continue
		}
		if failing {
			a.log.Info("metadata watch recovered")
		}
		failing = false
		a.metaFailing.Store(false)
		backoff = a.backoffMin
		a.metaOK.Store(a.now().Unix())
		changed := a.meta.set(next)
		a.meta.markAttempted()
		if changed {
			a.log.Debug("metadata changed", "etag", next.etag)
		} else if el := a.now().Sub(start); el < minPollInterval {
			sleepCtx(ctx, minPollInterval-el)
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// fetchMetadata gets the metadata, as a long poll when cur is known.
func (a *Agent) fetchMetadata(ctx context.Context, cur *metaSnapshot) (*metaSnapshot, error) {
	timeout := a.rt.Load().cfg.Issuer.RequestTimeout.Duration
	q := url.Values{}
	if cur != nil {
		q.Set("wait", "true")
		q.Set("etag", cur.etag)
		q.Set("timeout", a.upstreamWait.String())
		timeout += a.upstreamWait
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	rep, err := a.issuer.call(ctx, http.MethodGet, "/v1/machines/self", q, nil, machinetoken.FeatureMetadata)
	if err != nil {
		return nil, err
	}
	if rep.Status != http.StatusOK {
		return nil, fmt.Errorf("issuer answered %d %s", rep.Status, rep.Code())
	}
	return parseMetadata(rep.Body, rep.Header.Get("ETag"))
}

// waitParams are a request's long-poll parameters.
type waitParams struct {
	wait    bool
	etag    string
	timeout time.Duration
}

// parseWait reads wait, etag and timeout; ok is false for bad values.
func parseWait(q url.Values) (p waitParams, ok bool) {
	p.timeout = api.DefaultWait
	switch q.Get("wait") {
	case "", "false":
	case "true":
		p.wait = true
	default:
		return p, false
	}
	if t := q.Get("timeout"); t != "" {
		d, err := time.ParseDuration(t)
		if err != nil || d < api.MinWait || d > api.MaxWait {
			return p, false
		}
		p.timeout = d
	}
	p.etag = q.Get("etag")
	if len(p.etag) > 256 || len(q["etag"]) > 1 || len(q["timeout"]) > 1 || len(q["wait"]) > 1 {
		return p, false
	}
	return p, true
}

// snapshotFor returns the snapshot to answer r with, after waiting for a
// change when r asks to; ok is false when a reply was already written (or
// the caller left).
func (a *Agent) snapshotFor(w http.ResponseWriter, r *http.Request) (*metaSnapshot, bool) {
	p, ok := parseWait(r.URL.Query())
	if !ok {
		httpapi.BadRequest(w)
		return nil, false
	}
	snap := a.meta.cur.Load()
	if snap == nil && a.meta.attempted != nil {
		// Starting up: wait for the first fetch (bounded by the upstream
		// request timeout) instead of failing a caller that came early.
		t := time.NewTimer(a.rt.Load().cfg.Issuer.RequestTimeout.Duration)
		select {
		case <-a.meta.attempted:
		case <-t.C:
		case <-r.Context().Done():
		}
		t.Stop()
		snap = a.meta.cur.Load()
	}
	if snap == nil {
		httpapi.Write(w, http.StatusServiceUnavailable, api.CodeUpstreamUnavailable, "metadata unavailable")
		return nil, false
	}
	if !p.wait || !sameETag(snap.etag, p.etag) {
		return snap, true
	}
	a.meta.waiters.Add(1)
	defer a.meta.waiters.Add(-1)
	t := time.NewTimer(p.timeout)
	defer t.Stop()
	select {
	case <-snap.changed:
		return a.meta.cur.Load(), true
	case <-t.C:
		return snap, true
	case <-a.stop.Done():
		return snap, true
	case <-r.Context().Done():
		return nil, false
	}
}

func writeSnapshotHeaders(w http.ResponseWriter, s *metaSnapshot, contentType string) {
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("ETag", s.etag)
}

func (a *Agent) handleMetadata(w http.ResponseWriter, r *http.Request) {
	s, ok := a.snapshotFor(w, r)
	if !ok {
		return
	}
	writeSnapshotHeaders(w, s, "application/json")
	w.Write(s.raw)
}

// handleMetadataKey serves one field as text/plain, or the tags as JSON.
func (a *Agent) handleMetadataKey(w http.ResponseWriter, r *http.Request) {
	s, ok := a.snapshotFor(w, r)
	if !ok {
		return
	}
	key := r.PathValue("key")
	if key == "tags" {
		writeSnapshotHeaders(w, s, "application/json")
		w.Write(s.tagsRaw)
		return
	}
	v, found := s.fields[key]
	if !found {
		httpapi.NotFound(w)
		return
	}
	writeSnapshotHeaders(w, s, "text/plain; charset=utf-8")
	w.Write([]byte(v))
}

func (a *Agent) handleMetadataTag(w http.ResponseWriter, r *http.Request) {
	s, ok := a.snapshotFor(w, r)
	if !ok {
		return
	}
	v, found := s.tags[r.PathValue("name")]
	if !found {
		httpapi.NotFound(w)
		return
	}
	writeSnapshotHeaders(w, s, "text/plain; charset=utf-8")
	w.Write([]byte(v))
}
