// Package oidctoken is the OIDC token feature: POST /v1/tokens/oidc, the
// token cache behind it (one entry per audience, single flight, background
// refresh) and the [tokens] section that tunes it. The cache is also the
// agent's one TokenSource: the token files' refreshers take their tokens
// from it, so a file and the API's callers share one issuer call per
// renewal.
//
// The core's guard runs before the handler: the peer policy is decided
// from method, path and peer before the body is read; the handler then
// applies the per-uid rate limit, parses the body, and logs every token it
// hands out with the peer (S-audit).
package oidctoken

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/wicket-sh/wicket/internal/agent/feature"
	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/metrics"
)

// Key is the section's TOML key.
const Key = "tokens"

// Settings is the [tokens] section (dynamic): the token cache's tuning and
// the life of the machine-token copy each issuer call carries.
type Settings struct {
	// RefreshAt is the fraction of a token's lifetime after which the
	// cached token is renewed in the background.
	RefreshAt float64 `toml:"refresh_at"`
	// MaxAudiences caps the cache; the oldest audience is evicted first.
	MaxAudiences int `toml:"max_audiences"`
	// TTL is how long the copy of the machine token sent with each OIDC
	// token request is valid. The issuer never issues a JWT that outlives
	// the copy, so this bounds the JWTs the agent gets (the issuer's
	// [oidc] token_ttl applies when shorter) and what a copy captured
	// upstream can buy.
	TTL config.Duration `toml:"ttl"`
}

// Module is the feature. Fetch, when set, replaces the call to the issuer
// (tests in a testing/synctest bubble, where no socket may block); nil
// asks the issuer the agent is configured with.
type Module struct {
	Fetch func(ctx context.Context, aud string) (feature.Token, error)
}

// Key implements config.Section.
func (Module) Key() string { return Key }

// New implements config.Section: the defaults.
func (Module) New() any {
	return &Settings{RefreshAt: 0.8, MaxAudiences: 1000, TTL: config.Duration{Duration: 10 * time.Minute}}
}

// Validate implements config.Section.
func (Module) Validate(v any, _ *config.Agent) []error {
	s := v.(*Settings)
	var errs []error
	if r := s.RefreshAt; !(r >= 0.1 && r <= 0.95) {
		errs = append(errs, fmt.Errorf("tokens.refresh_at %v: want a fraction of the lifetime, 0.1..0.95", r))
	}
	if n := s.MaxAudiences; n < 1 || n > 100000 {
		errs = append(errs, fmt.Errorf("tokens.max_audiences %d: want 1..100000", n))
	}
	if d := s.TTL.Duration; d < time.Minute || d > time.Hour {
		errs = append(errs, fmt.Errorf("tokens.ttl %v: want 1m..1h", d))
	}
	return errs
}

// From returns the [tokens] section of c (the defaults when the feature
// is not registered).
func From(c *config.Agent) *Settings {
	if s, ok := c.Section(Key).(*Settings); ok {
		return s
	}
	return Module{}.New().(*Settings)
}

// Build implements feature.Runtime.
func (m Module) Build(h feature.RunHost) (feature.Instance, error) {
	f := &Feature{host: h, log: h.Logger()}
	fetch := m.Fetch
	if fetch == nil {
		if h.Issuer() == nil {
			return f, nil // no issuer: the endpoint answers 503
		}
		fetch = f.fetch
	}
	// The cache's context ends at shutdown: it is the parent of every
	// issuer call, so none outlives the agent.
	f.cache = newTokenCache(h.Context(), h.Now, fetch, f.cacheConfig)
	return f, nil
}

// Feature is the built feature: the cache and the handler.
type Feature struct {
	host  feature.RunHost
	log   *slog.Logger
	cache *tokenCache // nil without an issuer

	served, issued atomic.Uint64
}

var (
	_ feature.Routes      = (*Feature)(nil)
	_ feature.Worker      = (*Feature)(nil)
	_ feature.Counters    = (*Feature)(nil)
	_ feature.Status      = (*Feature)(nil)
	_ feature.TokenSource = (*Feature)(nil)
)

// cacheConfig is the token cache's view of the live config.
func (f *Feature) cacheConfig() tokenCacheConfig {
	c := f.host.Config()
	s := From(c)
	return tokenCacheConfig{refreshAt: s.RefreshAt, maxAudiences: s.MaxAudiences, timeout: c.Issuer.RequestTimeout.Duration}
}

// errNoIssuer is Token's answer in an agent without an issuer.
var errNoIssuer = errors.New("no issuer configured")

// Token implements feature.TokenSource.
func (f *Feature) Token(ctx context.Context, aud string) (feature.Token, string, error) {
	return f.get(ctx, cacheKey(aud, 0))
}

// get looks a cache key (see cacheKey) up.
func (f *Feature) get(ctx context.Context, key string) (feature.Token, string, error) {
	if f.cache == nil {
		return feature.Token{}, "", errNoIssuer
	}
	return f.cache.get(ctx, key)
}

// Start implements feature.Worker: the cache's timers start with its
// first token, so there is nothing to start.
func (f *Feature) Start() {}

// Stop implements feature.Worker: it stops the cache's timers and waits
// for the issuer calls under way (which end with the host's context).
func (f *Feature) Stop() {
	if f.cache != nil {
		f.cache.close()
	}
}

// Counters implements feature.Counters.
func (f *Feature) Counters() metrics.CounterSet {
	cache := func(get func(*tokenCache) *atomic.Uint64) func() uint64 {
		return func() uint64 {
			if f.cache == nil {
				return 0
			}
			return get(f.cache).Load()
		}
	}
	lookups := "OIDC token cache lookups."
	return metrics.CounterSet{
		{Key: "tokens_served", Name: "wicket_oidc_tokens_served_total", Help: "OIDC tokens handed to callers.", Value: f.served.Load},
		{Key: "tokens_issued", Name: "wicket_oidc_tokens_issued_total", Help: "OIDC tokens obtained from the issuer.", Value: f.issued.Load},
		{Key: "token_cache_hits", Name: "wicket_oidc_token_cache_total", Help: lookups, Labels: map[string]string{"result": "hit"},
			Value: cache(func(c *tokenCache) *atomic.Uint64 { return &c.hits })},
		{Key: "token_cache_misses", Name: "wicket_oidc_token_cache_total", Help: lookups, Labels: map[string]string{"result": "miss"},
			Value: cache(func(c *tokenCache) *atomic.Uint64 { return &c.misses })},
		{Key: "token_refreshes", Name: "wicket_oidc_token_refreshes_total", Help: "Cached OIDC tokens renewed in the background.",
			Value: cache(func(c *tokenCache) *atomic.Uint64 { return &c.refreshes })},
	}
}

// Status implements feature.Status: how many audiences are cached.
func (f *Feature) Status() map[string]any {
	if f.cache == nil {
		return nil
	}
	return map[string]any{"cached_audiences": f.cache.size()}
}

// Entry is what the cache holds for one audience, without the token.
type Entry struct {
	Fetched, RefreshAt, Expires time.Time
}

// Cached returns aud's cache entry, for diagnostics and tests.
func (f *Feature) Cached(aud string) (Entry, bool) {
	if f.cache == nil {
		return Entry{}, false
	}
	c := f.cache
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.entries[aud]
	if e == nil {
		return Entry{}, false
	}
	return Entry{Fetched: e.fetched, RefreshAt: e.refreshAt, Expires: e.tok.Expires}, true
}
