// Package agent is the in-machine service: the guest API on its Unix
// socket, the admin socket, and the hot-reloadable configuration behind them.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/admin"
	"github.com/wicket-sh/wicket/internal/agent/workloadapi"
	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/httpapi"
	"github.com/wicket-sh/wicket/internal/metrics"
	"github.com/wicket-sh/wicket/internal/peer"
	"github.com/wicket-sh/wicket/internal/proxy"
	"github.com/wicket-sh/wicket/internal/unixsock"
	"github.com/wicket-sh/wicket/internal/version"
)

// Options configure an Agent.
type Options struct {
	// ConfigPath is the TOML file; empty means built-in defaults.
	ConfigPath string
	// Overrides come from command-line flags; they are applied at startup
	// and on every reload.
	Overrides []config.Override
	Logger    *slog.Logger
	// LogLevel, when set, is adjusted to the config's log.level on reload.
	LogLevel *slog.LevelVar
	// MachineToken, when set, is the machine token; otherwise it is read
	// from issuer.token_file or the WICKET_MACHINE_TOKEN environment
	// variable. `wicket dev` and --token-fd pass it this way. Giving more
	// than one source is an error.
	MachineToken MachineToken
	// Now replaces the clock in tests; nil means time.Now. It is the clock
	// of the token cache, the rate limiter, the metadata watch and the
	// token files' refreshers. Their timers still run on the time
	// package's clock, so a test that needs time to pass runs them under
	// testing/synctest, whose bubble fakes both. Machine-token attenuation
	// keeps the wall clock: the issuer checks those windows against its
	// own.
	Now func() time.Time
}

// runtime is everything a reload swaps in one step.
type runtime struct {
	cfg        *config.Agent
	policy     *peer.Policy
	routes     *proxy.Table
	adminAuth  admin.Auth
	generation uint64
}

// Agent is a running (or ready to run) agent.
type Agent struct {
	opts    Options
	log     *slog.Logger
	selfUID uint32
	started time.Time

	rt       atomic.Pointer[runtime]
	reloadMu sync.Mutex // reloads are serialized (S-reload)

	api, adm  *unixsock.Listener
	admin     *admin.Server
	denied    atomic.Uint64
	denials   *unixsock.DenialLog // the API socket's denials, summarized per uid
	reloadsOK atomic.Uint64
	reloadsKO atomic.Uint64

	readyOnce sync.Once
	ready     chan struct{}

	// Guest API state. issuerURL and token are fixed at New.
	issuerURL   *url.URL
	token       MachineToken
	tokenSource string // "option", "file", "env" or "" (for status)
	issuer      *issuerClient
	meta        metaCache
	tokens      *tokenCache // nil without an issuer
	limiter     *rateLimiter
	forwarder   *proxy.Forwarder
	metaOK      atomic.Int64 // unix time of the last good metadata fetch
	metaFailing atomic.Bool
	files       tokenFiles // token file refreshers (tokenfiles.go)
	// The SPIFFE Workload API (spiffe.go), when [spiffe] enabled.
	spiffe   *workloadapi.Server
	spiffeLn *unixsock.Listener

	// stop ends background work and local long polls at shutdown.
	stop     context.Context
	stopFunc context.CancelFunc
	bg       sync.WaitGroup

	upstreamWait, backoffMin, backoffMax time.Duration

	rateLimitedN, tokensServed, tokensIssued, upstreamErrors atomic.Uint64
	proxied, proxyErrors                                     atomic.Uint64

	// served remembers which process got which cached token, so the
	// audit log has one line per process and token (see firstServe).
	servedMu sync.Mutex
	served   map[servedKey]struct{}
}

// New loads and validates the configuration; it opens no socket yet.
func New(opts Options) (*Agent, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	a := &Agent{
		opts:    opts,
		log:     opts.Logger,
		selfUID: uint32(os.Geteuid()),
		ready:   make(chan struct{}),
		started: opts.Now(),
		limiter: newRateLimiter(),
		denials: unixsock.NewDenialLog(opts.Logger, unixsock.DenialLogConfig{
			Msg: "request denied", SummaryMsg: "request denials suppressed",
		}),
		upstreamWait: upstreamWaitDefault,
		backoffMin:   backoffMinDefault,
		backoffMax:   backoffMaxDefault,
	}
	a.meta.init()
	a.stop, a.stopFunc = context.WithCancel(context.Background())
	// The environment variable is taken (and unset) whatever happens next,
	// so no child can inherit it.
	envTok, envSet, envErr := takeEnvToken()
	rt, err := a.load()
	if err != nil {
		return nil, err
	}
	if envErr != nil {
		return nil, envErr
	}
	if err := a.initUpstream(rt.cfg, envTok, envSet); err != nil {
		return nil, err
	}
	rt.generation = 1
	a.rt.Store(rt)
	a.applyLogLevel(rt.cfg)
	return a, nil
}

// now is the agent's clock (Options.Now).
func (a *Agent) now() time.Time { return a.opts.Now() }

// initUpstream settles the machine token and the issuer client.
func (a *Agent) initUpstream(cfg *config.Agent, envTok MachineToken, envSet bool) error {
	var sources []string
	if !a.opts.MachineToken.IsZero() {
		sources = append(sources, "option")
	}
	if cfg.Issuer.TokenFile != "" {
		sources = append(sources, "file")
	}
	if envSet {
		sources = append(sources, "env")
	}
	if len(sources) > 1 {
		return fmt.Errorf("machine token given more than once (%s): give exactly one of issuer.token_file, --token-fd or %s", strings.Join(sources, ", "), api.MachineTokenEnv)
	}
	switch {
	case !a.opts.MachineToken.IsZero():
		a.token, a.tokenSource = a.opts.MachineToken, "option"
	case cfg.Issuer.TokenFile != "":
		tok, err := MachineTokenFromFile(cfg.Issuer.TokenFile, cfg.Issuer.TokenUnlink)
		if err != nil {
			return err
		}
		a.token, a.tokenSource = tok, "file"
	case envSet:
		a.token, a.tokenSource = envTok, "env"
	}
	a.forwarder = proxy.NewForwarder(proxy.Options{ContainsSecret: a.token.containedIn})
	if cfg.Issuer.URL == "" {
		if !a.token.IsZero() {
			return errors.New("a machine token was given but issuer.url is not set")
		}
		return nil
	}
	if a.token.IsZero() {
		return fmt.Errorf("issuer.url is set but no machine token was given (issuer.token_file, --token-fd or %s)", api.MachineTokenEnv)
	}
	u, err := proxy.ParseUpstream(cfg.Issuer.URL)
	if err != nil {
		return fmt.Errorf("issuer.url: %w", err)
	}
	if u.Scheme == "http" && !httpapi.LoopbackHost(u.Hostname()) {
		a.log.Warn("issuer.url is plain http to a non-loopback host: attenuated machine tokens travel unencrypted", "issuer", u.Host)
	}
	a.issuerURL = u
	a.issuer = newIssuerClient(u, a.token)
	a.tokens = newTokenCache(a.stop, a.now, a.fetchToken, a.tokenCacheConfig)
	return nil
}

// tokenCacheConfig is the token cache's view of the live config.
func (a *Agent) tokenCacheConfig() tokenCacheConfig {
	c := a.rt.Load().cfg
	return tokenCacheConfig{refreshAt: c.Tokens.RefreshAt, maxAudiences: c.Tokens.MaxAudiences, timeout: c.Issuer.RequestTimeout.Duration}
}

// load reads and validates the config and everything derived from it.
func (a *Agent) load() (*runtime, error) {
	cfg, err := config.LoadAgent(a.opts.ConfigPath, a.opts.Overrides...)
	if err != nil {
		return nil, err
	}
	tok, err := admin.LoadToken(cfg.Admin)
	if err != nil {
		return nil, err
	}
	pol := cfg.CompiledPolicy(a.selfUID)
	if pol.UsesExes() {
		if err := unixsock.PeerPidfdSupported(); err != nil {
			// Not an error: the rules stay in force and fail closed.
			a.log.Warn("policy rules with exes will deny every caller: the executable cannot be checked safely", "err", err)
		}
	}
	return &runtime{
		cfg:    cfg,
		policy: pol,
		routes: cfg.CompiledRoutes(),
		adminAuth: admin.Auth{
			Allow: peer.Allowlist{UIDs: cfg.Admin.AllowUIDs, GIDs: cfg.Admin.AllowGIDs},
			Token: tok,
		},
	}, nil
}

func (a *Agent) applyLogLevel(cfg *config.Agent) {
	if a.opts.LogLevel != nil {
		if lv, err := cfg.Log.SlogLevel(); err == nil {
			a.opts.LogLevel.Set(lv)
		}
	}
}

// Config returns the running configuration. Callers must not modify it.
func (a *Agent) Config() *config.Agent { return a.rt.Load().cfg }

// Ready is closed once both sockets accept connections.
func (a *Agent) Ready() <-chan struct{} { return a.ready }

// Reload re-reads the config file and swaps in the new dynamic settings if
// the whole file is valid; otherwise the running config stays untouched.
// Static fields that changed are reported, not applied.
func (a *Agent) Reload(ctx context.Context) (api.ReloadResult, error) {
	a.reloadMu.Lock()
	defer a.reloadMu.Unlock()
	old := a.rt.Load()
	next, err := a.load()
	if err != nil {
		a.reloadsKO.Add(1)
		return api.ReloadResult{}, err
	}
	restart := config.RestartRequired(old.cfg, next.cfg)
	if len(restart) > 0 {
		// Keep running on the static settings we started with; only the
		// dynamic part takes effect until a restart.
		config.KeepStatic(next.cfg, old.cfg)
	}
	next.generation = old.generation + 1
	a.rt.Store(next)
	a.applyLogLevel(next.cfg)
	a.syncTokenFiles()
	a.reloadsOK.Add(1)
	a.log.Info("config reloaded", "generation", next.generation, "restart_required", restart)
	return api.ReloadResult{Status: "ok", Generation: next.generation, RestartRequired: restart}, nil
}

// Run opens the sockets and serves until ctx ends, then shuts down cleanly
// and removes its own sockets.
func (a *Agent) Run(ctx context.Context) error {
	cfg := a.rt.Load().cfg
	apiCfg, err := cfg.API.UnixSock("api", 0o750)
	if err != nil {
		return err
	}
	admCfg, err := cfg.Admin.UnixSock("admin", 0o700)
	if err != nil {
		return err
	}
	apiCfg.Logger, admCfg.Logger = a.log, a.log
	a.api, err = unixsock.Listen(apiCfg)
	if err != nil {
		return fmt.Errorf("api socket: %w", err)
	}
	defer a.api.Close()
	a.adm, err = unixsock.Listen(admCfg)
	if err != nil {
		return fmt.Errorf("admin socket: %w", err)
	}
	defer a.adm.Close()

	lim := cfg.HTTP.Limits()
	a.admin = admin.New(a, func() admin.Auth { return a.rt.Load().adminAuth }, a.selfUID, a.log.With("socket", "admin"))
	// Admin bodies are read only once the caller is authorized.
	a.admin.LimitBodies(a.bodyLimits, httpapi.WriteBodyError)
	apiSrv := unixsock.NewHTTPServer(a.apiHandler(), lim, a.log)
	admSrv := unixsock.NewHTTPServer(a.admin, lim, a.log)

	defer a.stopBackground()
	if a.issuer != nil {
		a.bg.Add(1)
		go func() {
			defer a.bg.Done()
			a.watchMetadata(a.stop)
		}()
	} else {
		a.meta.markAttempted() // no issuer: nothing to wait for
	}
	a.startTokenFiles()
	if err := a.startWorkloadAPI(); err != nil {
		return err
	}
	defer a.stopWorkloadAPI()

	errc := make(chan error, 2)
	go func() { errc <- serve(apiSrv, a.api) }()
	go func() { errc <- serve(admSrv, a.adm) }()
	a.log.Info("agent ready", "api_socket", a.api.Path(), "admin_socket", a.adm.Path())
	a.readyOnce.Do(func() { close(a.ready) })

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	a.log.Info("agent shutting down")
	// Ends local long polls and upstream calls, so Shutdown need not wait.
	a.stopFunc()
	shCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// Shutdown waits for in-flight requests; long polls end with ctx.
	for _, s := range []*http.Server{apiSrv, admSrv} {
		if err := s.Shutdown(shCtx); err != nil {
			s.Close()
		}
	}
	// The counts still waiting for their summary line go to the log now.
	a.denials.Flush()
	a.admin.FlushDenials()
	return runErr
}

// stopBackground ends the metadata watch, the token files' refreshers and
// the token cache and waits for them.
func (a *Agent) stopBackground() {
	a.stopFunc()
	a.stopTokenFiles()
	if a.tokens != nil {
		a.tokens.close()
	}
	a.bg.Wait()
}

func serve(s *http.Server, l *unixsock.Listener) error {
	if err := s.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("%s socket: %w", l.Name(), err)
	}
	return nil
}

func (a *Agent) bodyLimits() unixsock.BodyLimits {
	l := a.rt.Load().cfg.Limits
	return unixsock.BodyLimits{MaxBytes: l.MaxBodyBytes, Timeout: l.BodyTimeout.Duration}
}

// Status implements admin.Service.
func (a *Agent) Status() any {
	rt := a.rt.Load()
	v, c := version.Get()
	type sock struct {
		Path string `json:"path"`
		unixsock.Stats
	}
	socks := map[string]sock{}
	for _, l := range []*unixsock.Listener{a.api, a.adm, a.spiffeLn} {
		if l != nil {
			socks[l.Name()] = sock{Path: l.Path(), Stats: l.Stats()}
		}
	}
	var admDenied uint64
	if a.admin != nil {
		admDenied = a.admin.Denied()
	}
	return map[string]any{
		"service":           "agent",
		"version":           v,
		"commit":            c,
		"uptime_seconds":    int64(a.now().Sub(a.started).Seconds()),
		"config_generation": rt.generation,
		"sockets":           socks,
		"counters": map[string]uint64{
			"api_denied":         a.denied.Load(),
			"admin_denied":       admDenied,
			"reloads_ok":         a.reloadsOK.Load(),
			"reloads_failed":     a.reloadsKO.Load(),
			"rate_limited":       a.rateLimitedN.Load(),
			"tokens_served":      a.tokensServed.Load(),
			"tokens_issued":      a.tokensIssued.Load(),
			"token_cache_hits":   a.cacheStat(func(c *tokenCache) uint64 { return c.hits.Load() }),
			"token_cache_misses": a.cacheStat(func(c *tokenCache) uint64 { return c.misses.Load() }),
			"token_refreshes":    a.cacheStat(func(c *tokenCache) uint64 { return c.refreshes.Load() }),
			"upstream_errors":    a.upstreamErrors.Load(),
			"proxied":            a.proxied.Load(),
			"proxy_errors":       a.proxyErrors.Load(),
		},
		"upstream":    a.upstreamStatus(),
		"token_files": a.tokenFilesStatus(),
		"spiffe":      a.spiffeStatus(),
	}
}

func (a *Agent) cacheStat(f func(*tokenCache) uint64) uint64 {
	if a.tokens == nil {
		return 0
	}
	return f(a.tokens)
}

// upstreamStatus describes the issuer connection; it never includes the
// machine token, only where it came from.
func (a *Agent) upstreamStatus() map[string]any {
	st := map[string]any{"issuer_configured": a.issuerURL != nil, "machine_token": a.tokenSource != "", "machine_token_source": a.tokenSource}
	if a.issuerURL == nil {
		return st
	}
	st["issuer"] = a.issuerURL.Redacted()
	snap := a.meta.cur.Load()
	meta := map[string]any{"available": snap != nil, "failing": a.metaFailing.Load(), "waiters": a.meta.waiters.Load()}
	if snap != nil {
		meta["etag"] = snap.etag
	}
	if t := a.metaOK.Load(); t > 0 {
		meta["last_ok"] = time.Unix(t, 0).UTC().Format(time.RFC3339)
	}
	st["metadata"] = meta
	if a.tokens != nil {
		st["cached_audiences"] = a.tokens.size()
	}
	return st
}

// Metrics implements admin.Service.
func (a *Agent) Metrics() []metrics.Sample {
	rt := a.rt.Load()
	s := []metrics.Sample{
		{Name: "wicket_uptime_seconds", Help: "Seconds since start.", Type: metrics.Gauge, Value: a.now().Sub(a.started).Seconds()},
		{Name: "wicket_config_generation", Help: "Generation of the running config.", Type: metrics.Gauge, Value: float64(rt.generation)},
		{Name: "wicket_reloads_total", Help: "Config reloads.", Type: metrics.Counter, Labels: map[string]string{"outcome": "ok"}, Value: float64(a.reloadsOK.Load())},
		{Name: "wicket_reloads_total", Help: "Config reloads.", Type: metrics.Counter, Labels: map[string]string{"outcome": "failed"}, Value: float64(a.reloadsKO.Load())},
		{Name: "wicket_api_denied_total", Help: "Guest API requests refused by policy.", Type: metrics.Counter, Value: float64(a.denied.Load())},
		{Name: "wicket_rate_limited_total", Help: "Guest API requests refused by the per-uid rate limit.", Type: metrics.Counter, Value: float64(a.rateLimitedN.Load())},
		{Name: "wicket_oidc_tokens_served_total", Help: "OIDC tokens handed to callers.", Type: metrics.Counter, Value: float64(a.tokensServed.Load())},
		{Name: "wicket_oidc_tokens_issued_total", Help: "OIDC tokens obtained from the issuer.", Type: metrics.Counter, Value: float64(a.tokensIssued.Load())},
		{Name: "wicket_oidc_token_cache_total", Help: "OIDC token cache lookups.", Type: metrics.Counter, Labels: map[string]string{"result": "hit"}, Value: float64(a.cacheStat(func(c *tokenCache) uint64 { return c.hits.Load() }))},
		{Name: "wicket_oidc_token_cache_total", Help: "OIDC token cache lookups.", Type: metrics.Counter, Labels: map[string]string{"result": "miss"}, Value: float64(a.cacheStat(func(c *tokenCache) uint64 { return c.misses.Load() }))},
		{Name: "wicket_upstream_errors_total", Help: "Failed calls to the issuer or a proxy upstream.", Type: metrics.Counter, Value: float64(a.upstreamErrors.Load())},
		{Name: "wicket_proxy_requests_total", Help: "Requests forwarded upstream.", Type: metrics.Counter, Value: float64(a.proxied.Load())},
		{Name: "wicket_metadata_waiters", Help: "Local metadata long polls waiting.", Type: metrics.Gauge, Value: float64(a.meta.waiters.Load())},
	}
	s = append(s, unixsock.Metrics(a.api, a.adm, a.spiffeLn)...)
	s = append(s, a.spiffeMetrics()...)
	s = append(s, unixsock.DenialMetrics("api", a.denials)...)
	s = append(s, a.tokenFilesMetrics()...)
	return s
}
