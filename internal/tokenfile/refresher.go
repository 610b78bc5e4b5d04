package tokenfile

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"sync"
	"syscall"
	"time"

	"github.com/wicket-sh/wicket/internal/metrics"
)

// Source fetches a fresh token and the time it expires.
type Source func(ctx context.Context) (token string, expiresAt time.Time, err error)

// Defaults for Config fields left zero.
const (
	DefaultMode            fs.FileMode = 0o440
	DefaultRefreshFraction             = 0.8
	DefaultMinBackoff                  = time.Second
	DefaultMaxBackoff                  = time.Minute
	DefaultFetchTimeout                = 30 * time.Second
)

// minDelay keeps a token with almost no life left from turning the loop
// into a busy one.
const minDelay = 100 * time.Millisecond

// Config describes one token file.
type Config struct {
	Path   string
	Source Source
	// Mode is the file's permission bits (default 0440).
	Mode fs.FileMode
	// GID is the file's group; -1 keeps the writer's group. 0 is root's
	// group, not "unset".
	GID int
	// Audience is reported in Status; the Source is what asks for it.
	Audience string
	// RefreshFraction of a token's remaining life passes before the next
	// fetch (default 0.8).
	RefreshFraction float64
	// MinBackoff and MaxBackoff bound the retry delay after failures
	// (defaults 1s and 60s); the delay doubles per consecutive failure,
	// with jitter.
	MinBackoff, MaxBackoff time.Duration
	// FetchTimeout bounds one call to Source (default 30s).
	FetchTimeout time.Duration
	Logger       *slog.Logger
	// Now replaces the clock in tests (default time.Now). The refresh
	// and retry timers run on the time package's clock, so a test that
	// needs time to pass runs Run under testing/synctest.
	Now func() time.Time
}

// Status is a snapshot of a Refresher, for status pages and metrics. It
// never holds the token.
type Status struct {
	Path        string    `json:"path"`
	Audience    string    `json:"audience,omitempty"`
	LastRefresh time.Time `json:"last_refresh,omitzero"`
	ExpiresAt   time.Time `json:"expires_at,omitzero"`
	NextRefresh time.Time `json:"next_refresh,omitzero"`
	// LastError is a generic description of the latest failure, cleared
	// by the next success.
	LastError string `json:"last_error,omitempty"`
	// Failures counts every failed attempt; ConsecutiveFailures only those
	// since the last success.
	Failures            uint64 `json:"failures"`
	ConsecutiveFailures int    `json:"consecutive_failures"`
	Refreshes           uint64 `json:"refreshes"`
}

// Refresher keeps one token file fresh until its context ends.
type Refresher struct {
	cfg     Config
	log     *slog.Logger
	written chan struct{}
	once    sync.Once

	mu sync.Mutex
	st Status
}

// NewRefresher validates cfg and fills in defaults.
func NewRefresher(cfg Config) (*Refresher, error) {
	if cfg.Path == "" {
		return nil, errors.New("token file: path is required")
	}
	if cfg.Source == nil {
		return nil, errors.New("token file: source is required")
	}
	if cfg.Mode == 0 {
		cfg.Mode = DefaultMode
	}
	if cfg.Mode&^fs.ModePerm != 0 {
		return nil, fmt.Errorf("token file %s: mode %#o has bits beyond permissions", cfg.Path, uint32(cfg.Mode))
	}
	if cfg.GID < -1 {
		return nil, fmt.Errorf("token file %s: invalid group %d", cfg.Path, cfg.GID)
	}
	switch f := cfg.RefreshFraction; {
	case f == 0:
		cfg.RefreshFraction = DefaultRefreshFraction
	case f < 0.1 || f > 0.95:
		return nil, fmt.Errorf("token file %s: refresh fraction %v outside 0.1..0.95", cfg.Path, f)
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = DefaultMinBackoff
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = DefaultMaxBackoff
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = cfg.MinBackoff
	}
	if cfg.FetchTimeout <= 0 {
		cfg.FetchTimeout = DefaultFetchTimeout
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Refresher{
		cfg:     cfg,
		log:     log.With("token_file", cfg.Path),
		written: make(chan struct{}),
		st:      Status{Path: cfg.Path, Audience: cfg.Audience},
	}, nil
}

// Written is closed once the file has been written the first time, so a
// supervisor can start the workload only when its token is there.
func (r *Refresher) Written() <-chan struct{} { return r.written }

// Status returns a snapshot.
func (r *Refresher) Status() Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.st
}

// Run writes the file at once, then again at the refresh fraction of each
// token's remaining life, retrying failures with capped exponential backoff.
// It returns nil when ctx ends; the file is left in place (its token
// expires on its own).
func (r *Refresher) Run(ctx context.Context) error {
	if err := RemoveStale(r.cfg.Path); err != nil {
		r.log.Warn("token file: could not remove stale temporary files", "err", err)
	}
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		}
		d := r.refresh(ctx)
		if ctx.Err() != nil {
			return nil
		}
		timer.Reset(d)
	}
}

// refresh makes one attempt and returns the delay until the next one.
func (r *Refresher) refresh(ctx context.Context) time.Duration {
	fctx, cancel := context.WithTimeout(ctx, r.cfg.FetchTimeout)
	tok, exp, err := r.cfg.Source(fctx)
	cancel()
	if ctx.Err() != nil {
		return 0 // shutting down: not a failure, and Run returns
	}
	now := r.cfg.Now()
	switch {
	case err != nil:
		return r.fail(now, "fetch token failed", fmt.Errorf("fetch: %w", err))
	case tok == "":
		return r.fail(now, "fetch token failed: empty token", errors.New("source returned an empty token"))
	case !exp.After(now):
		return r.fail(now, "fetch token failed: token already expired", fmt.Errorf("source returned a token that expired at %s", exp.Format(time.RFC3339)))
	}
	if err := Write(r.cfg.Path, []byte(tok), r.cfg.Mode, r.cfg.GID); err != nil {
		return r.fail(now, "write failed"+errnoSuffix(err), err)
	}
	delay := max(time.Duration(float64(exp.Sub(now))*r.cfg.RefreshFraction), minDelay)
	r.mu.Lock()
	r.st.LastRefresh, r.st.ExpiresAt, r.st.NextRefresh = now, exp, now.Add(delay)
	r.st.LastError, r.st.ConsecutiveFailures = "", 0
	r.st.Refreshes++
	r.mu.Unlock()
	r.once.Do(func() { close(r.written) })
	r.log.Debug("token file refreshed", "expires_at", exp, "next_refresh", now.Add(delay))
	return delay
}

func (r *Refresher) fail(now time.Time, generic string, err error) time.Duration {
	r.mu.Lock()
	r.st.Failures++
	r.st.ConsecutiveFailures++
	n := r.st.ConsecutiveFailures
	delay := backoff(n, r.cfg.MinBackoff, r.cfg.MaxBackoff)
	r.st.LastError, r.st.NextRefresh = generic, now.Add(delay)
	valid := r.st.ExpiresAt.After(now)
	r.mu.Unlock()
	// The full error goes to the log; it never holds the token (Write's
	// errors do not include data, and sources must not echo tokens).
	r.log.Warn("token file refresh failed", "err", err, "consecutive_failures", n,
		"retry_in", delay.Round(time.Millisecond), "current_token_valid", valid)
	return delay
}

// backoff is min·2^(n-1) capped at max, with "equal jitter": a random value
// in [d/2, d], so retries spread out and the delays never shrink.
func backoff(n int, lo, hi time.Duration) time.Duration {
	d := lo
	for i := 1; i < n && d < hi; i++ {
		d *= 2
	}
	d = min(d, hi)
	half := d / 2
	return half + rand.N(d-half+1)
}

// errnoSuffix names the system error (e.g. "no space left on device")
// behind a failed write: generic, but enough to act on.
func errnoSuffix(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return ": " + errno.Error()
	}
	return ""
}

// Metrics returns the refresher's samples, labelled with the file's path.
func (r *Refresher) Metrics() []metrics.Sample {
	st := r.Status()
	lb := map[string]string{"path": st.Path}
	s := []metrics.Sample{
		{Name: "wicket_token_file_refreshes_total", Help: "Successful token file writes.", Type: metrics.Counter, Labels: lb, Value: float64(st.Refreshes)},
		{Name: "wicket_token_file_failures_total", Help: "Failed token file refresh attempts.", Type: metrics.Counter, Labels: lb, Value: float64(st.Failures)},
		{Name: "wicket_token_file_consecutive_failures", Help: "Failed attempts since the last success.", Type: metrics.Gauge, Labels: lb, Value: float64(st.ConsecutiveFailures)},
	}
	if !st.ExpiresAt.IsZero() {
		s = append(s, metrics.Sample{Name: "wicket_token_file_expiry_timestamp_seconds", Help: "When the token in the file expires.", Type: metrics.Gauge, Labels: lb, Value: float64(st.ExpiresAt.Unix())})
	}
	return s
}
