// Package agent is the in-machine service: the guest API on its Unix
// socket, the admin socket, and the hot-reloadable configuration behind them.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/admin"
	"github.com/wicket-sh/wicket/internal/agent/builtin"
	"github.com/wicket-sh/wicket/internal/agent/feature"
	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/fastlane"
	"github.com/wicket-sh/wicket/internal/httpapi"
	"github.com/wicket-sh/wicket/internal/machinetoken"
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
	// Features are the agent's feature modules; nil means
	// builtin.Features(), the list both binaries run.
	Features []feature.Module
}

// LoadConfig reads and validates an agent config with the built-in
// features, as the agent itself would at start: what `wicket agent
// --check-config` and the cloud helpers read.
func LoadConfig(path string, overrides ...config.Override) (*config.Agent, error) {
	return config.LoadAgent(path, feature.Sections(builtin.Features()), overrides...)
}

// runtime is everything a reload swaps in one step.
type runtime struct {
	cfg        *config.Agent
	policy     *peer.Policy
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
	lane      atomic.Pointer[fastlane.Server] // the guest API's, while Run serves it
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
	limiter     *rateLimiter
	// featureSocks are the sockets features serve (feature.Listener),
	// open while Run runs.
	featureSocks []*unixsock.Listener

	// built are the features' run-time parts (feature.Runtime), in
	// registration order; tokens is the one that implements
	// feature.TokenSource (the OIDC token feature), nil if none does;
	// fallback the one that implements feature.Fallback (the proxy);
	// meta the one that implements feature.Metadata.
	built    []builtFeature
	tokens   feature.TokenSource
	fallback feature.Fallback
	meta     feature.Metadata

	// stop ends background work and local long polls at shutdown.
	stop     context.Context
	stopFunc context.CancelFunc

	rateLimitedN, upstreamErrors atomic.Uint64
}

// builtFeature is one feature's run-time part.
type builtFeature struct {
	key  string
	inst feature.Instance
}

// New loads and validates the configuration; it opens no socket yet.
func New(opts Options) (*Agent, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Features == nil {
		opts.Features = builtin.Features()
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
	}
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
	if err := a.buildFeatures(); err != nil {
		return nil, err
	}
	return a, nil
}

// buildFeatures builds the run-time part of every feature that has one,
// once, in registration order.
func (a *Agent) buildFeatures() error {
	h := runHost{a}
	for _, m := range a.opts.Features {
		r, ok := m.(feature.Runtime)
		if !ok {
			continue
		}
		inst, err := r.Build(h)
		if err != nil {
			return fmt.Errorf("%s: %w", m.Key(), err)
		}
		a.built = append(a.built, builtFeature{key: m.Key(), inst: inst})
		if ts, ok := inst.(feature.TokenSource); ok && a.tokens == nil {
			a.tokens = ts
		}
		if fb, ok := inst.(feature.Fallback); ok {
			if a.fallback != nil {
				// Two would make which one forwards a request depend on
				// registration order.
				return fmt.Errorf("%s: a second feature serves unrouted requests", m.Key())
			}
			a.fallback = fb
		}
		if md, ok := inst.(feature.Metadata); ok && a.meta == nil {
			a.meta = md
		}
	}
	return nil
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
	return nil
}

// load reads and validates the config and everything derived from it.
func (a *Agent) load() (*runtime, error) {
	cfg, err := config.LoadAgent(a.opts.ConfigPath, feature.Sections(a.opts.Features), a.opts.Overrides...)
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
	for _, b := range a.built {
		if r, ok := b.inst.(feature.Reloader); ok {
			r.Reloaded()
		}
	}
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
	apiSrv.ConnContext = withPolicyMemo(apiSrv.ConnContext)
	admSrv := unixsock.NewHTTPServer(a.admin, lim, a.log)

	listeners, err := a.listenFeatures()
	for _, fl := range listeners {
		defer fl.l.Close()
	}
	if err != nil {
		return err
	}
	var served sync.WaitGroup // the features' Serve calls
	defer func() {
		a.stopBackground()
		served.Wait() // Worker.Stop has ended each Serve
	}()
	for _, b := range a.built {
		if w, ok := b.inst.(feature.Worker); ok {
			w.Start()
		}
	}

	lane := a.fastLane(apiSrv)
	a.lane.Store(lane)
	errc := make(chan error, 2+len(listeners))
	go func() { errc <- serve(lane, a.api) }()
	go func() { errc <- serve(admSrv, a.adm) }()
	for _, fl := range listeners {
		served.Add(1)
		go func() {
			defer served.Done()
			if err := fl.srv.Serve(fl.l); err != nil {
				errc <- fmt.Errorf("%s socket: %w", fl.l.Name(), err)
			}
		}()
	}
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
	// Shutdown waits for in-flight requests, each socket for at most 5 s
	// of its own (a guest API client cannot spend the admin socket's);
	// long polls end with ctx.
	shutdown(lane, 5*time.Second)
	shutdown(admSrv, 5*time.Second)
	// The counts still waiting for their summary line go to the log now.
	a.denials.Flush()
	a.admin.FlushDenials()
	return runErr
}

// stopBackground ends the features' workers (the metadata watch and the
// token files' refreshers among them) and waits for them.
func (a *Agent) stopBackground() {
	a.stopFunc()
	for i := len(a.built) - 1; i >= 0; i-- {
		if w, ok := a.built[i].inst.(feature.Worker); ok {
			w.Stop()
		}
	}
}

// featureListener is one open socket a feature serves.
type featureListener struct {
	srv feature.Listener
	l   *unixsock.Listener
}

// listenFeatures opens the sockets of the features that serve one, with
// unixsock and the core's rules (feature.Listener). On error the sockets
// opened so far are returned too, for the caller to close.
func (a *Agent) listenFeatures() ([]featureListener, error) {
	var out []featureListener
	for _, b := range a.built {
		fl, ok := b.inst.(feature.Listener)
		if !ok {
			continue
		}
		sc, ok, err := fl.ListenConfig()
		if err != nil {
			return out, fmt.Errorf("%s: %w", b.key, err)
		}
		if !ok {
			continue
		}
		sc.Logger = a.log
		l, err := unixsock.Listen(sc)
		if err != nil {
			return out, fmt.Errorf("%s socket: %w", b.key, err)
		}
		out = append(out, featureListener{srv: fl, l: l})
		a.featureSocks = append(a.featureSocks, l)
	}
	return out, nil
}

// serve runs s (an http.Server, or the guest API's fast lane in front of
// one) on l until it is shut down.
func serve(s interface{ Serve(net.Listener) error }, l *unixsock.Listener) error {
	if err := s.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("%s socket: %w", l.Name(), err)
	}
	return nil
}

// shutdown shuts s down gracefully within d, then closes what is left.
func shutdown(s interface {
	Shutdown(context.Context) error
	Close() error
}, d time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		s.Close()
	}
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
	for _, l := range append([]*unixsock.Listener{a.api, a.adm}, a.featureSocks...) {
		if l != nil {
			socks[l.Name()] = sock{Path: l.Path(), Stats: l.Stats()}
		}
	}
	st := map[string]any{
		"service":           "agent",
		"version":           v,
		"commit":            c,
		"uptime_seconds":    int64(a.now().Sub(a.started).Seconds()),
		"config_generation": rt.generation,
		"sockets":           socks,
		"counters":          a.admin.StatusCounters(a.counters()),
		"upstream":          a.upstreamStatus(),
	}
	for _, b := range a.built {
		if s, ok := b.inst.(feature.StatusSection); ok {
			if k, v := s.StatusSection(); st[k] == nil {
				st[k] = v
			}
		}
	}
	return st
}

// counters lists every counter the agent reports: status shows each
// under its key, /metrics as its sample (TestStatusAndMetrics_SameCounters).
func (a *Agent) counters() metrics.CounterSet {
	reloads := "Config reloads."
	set := metrics.CounterSet{
		{Key: "api_denied", Name: "wicket_api_denied_total", Help: "Guest API requests refused by policy.", Value: a.denied.Load},
		{Key: "reloads_ok", Name: "wicket_reloads_total", Help: reloads, Labels: map[string]string{"outcome": "ok"}, Value: a.reloadsOK.Load},
		{Key: "reloads_failed", Name: "wicket_reloads_total", Help: reloads, Labels: map[string]string{"outcome": "failed"}, Value: a.reloadsKO.Load},
		{Key: "rate_limited", Name: "wicket_rate_limited_total", Help: "Guest API requests refused by the per-uid rate limit.", Value: a.rateLimitedN.Load},
		{Key: "upstream_errors", Name: "wicket_upstream_errors_total", Help: "Failed calls to the issuer or a proxy upstream.", Value: a.upstreamErrors.Load},
		{Key: "api_fast_lane", Name: "wicket_api_fast_lane_total", Help: "Guest API requests answered by the fast lane (package fastlane) rather than net/http.",
			Value: func() uint64 { return a.laneStats().Served }},
		{Key: "api_fast_lane_handoffs", Name: "wicket_api_fast_lane_handoffs_total", Help: "Guest API connections the fast lane handed to net/http.",
			Value: func() uint64 { return a.laneStats().Handed }},
	}
	for _, b := range a.built {
		if c, ok := b.inst.(feature.Counters); ok {
			set = append(set, c.Counters()...)
		}
	}
	return set
}

// laneStats are the guest API fast lane's counters, zero before Run.
func (a *Agent) laneStats() fastlane.Stats {
	if l := a.lane.Load(); l != nil {
		return l.Stats()
	}
	return fastlane.Stats{}
}

// upstreamStatus describes the issuer connection; it never includes the
// machine token, only where it came from.
func (a *Agent) upstreamStatus() map[string]any {
	st := map[string]any{"issuer_configured": a.issuerURL != nil, "machine_token": a.tokenSource != "", "machine_token_source": a.tokenSource}
	for _, b := range a.built {
		if s, ok := b.inst.(feature.Status); ok {
			for k, v := range s.Status() {
				st[k] = v
			}
		}
	}
	if a.issuerURL == nil {
		return st
	}
	st["issuer"] = a.issuerURL.Redacted()
	return st
}

// Metrics implements admin.Service.
func (a *Agent) Metrics() []metrics.Sample {
	rt := a.rt.Load()
	s := []metrics.Sample{
		{Name: "wicket_uptime_seconds", Help: "Seconds since start.", Type: metrics.Gauge, Value: a.now().Sub(a.started).Seconds()},
		{Name: "wicket_config_generation", Help: "Generation of the running config.", Type: metrics.Gauge, Value: float64(rt.generation)},
	}
	for _, b := range a.built {
		if g, ok := b.inst.(feature.Gauges); ok {
			s = append(s, g.Gauges()...)
		}
	}
	s = append(s, a.counters().Samples()...)
	s = append(s, unixsock.Metrics(append([]*unixsock.Listener{a.api, a.adm}, a.featureSocks...)...)...)
	s = append(s, unixsock.DenialMetrics("api", a.denials)...)
	return s
}

// runHost is the agent as its features' host (feature.RunHost).
type runHost struct{ *Agent }

func (h runHost) Now() time.Time           { return h.now() }
func (h runHost) Logger() *slog.Logger     { return h.log }
func (h runHost) Context() context.Context { return h.stop }
func (h runHost) UpstreamError()           { h.upstreamErrors.Add(1) }

// Issuer returns the issuer client, a nil interface without an issuer.
func (h runHost) Issuer() feature.Issuer {
	if h.issuer == nil {
		return nil
	}
	return h.issuer
}

func (h runHost) RateLimited(w http.ResponseWriter, p unixsock.Peer) bool {
	return h.rateLimited(w, h.rt.Load(), p)
}

func (h runHost) TakeRate(p unixsock.Peer) bool {
	l := h.rt.Load().cfg.Limits
	ok, _ := h.limiter.Allow(p.UID, l.TokenRate, l.TokenBurst, h.now())
	return ok
}

func (h runHost) ReturnRate(p unixsock.Peer) {
	h.limiter.Return(p.UID, h.rt.Load().cfg.Limits.TokenBurst)
}

// TokenSource returns the OIDC token feature's instance, a nil interface
// when no feature is one.
func (h runHost) TokenSource() feature.TokenSource { return h.tokens }

// IssuerURL returns the issuer's base URL, nil without an issuer.
func (h runHost) IssuerURL() *url.URL { return h.issuerURL }

func (h runHost) ContainsMachineToken(b []byte) bool { return h.token.containedIn(b) }

func (h runHost) UpstreamToken(upstream *url.URL, features []machinetoken.Feature) (string, error) {
	if h.token.IsZero() {
		return "", feature.ErrNoMachineToken
	}
	scope := machinetoken.Scope{Features: features}
	if !issuerGateway(upstream, h.issuerURL) {
		// Not the issuer: that upstream gets a copy wicket refuses, so a
		// copy it leaks or reflects back is worth nothing here.
		scope.External = upstream.Scheme + "://" + upstream.Host
	}
	// The wall clock: the issuer checks the copy's window on its own.
	tok, err := h.token.restrictScope(time.Now(), attenuatedTTL, scope)
	if err != nil {
		return "", fmt.Errorf("attenuate machine token: %w", err)
	}
	return tok, nil
}

// Authorize decides a call on a feature's own socket by the policy, as
// the guest API's guard decides a request, and counts and logs a refusal
// as the guard does.
func (h runHost) Authorize(ctx context.Context, p unixsock.Peer, socket, method, path string) (peer.Decision, bool) {
	d := h.rt.Load().policy.Decide(p, method, path)
	if d.Allowed {
		return d, true
	}
	h.denied.Add(1)
	reason := denyReason(true, d)
	h.denials.Deny(ctx, p, reason, denyArgs(p, reason, d,
		"socket", socket, "method", method, "route", httpapi.Truncate(path, httpapi.MaxLoggedPath))...)
	return d, false
}

// RouteVars reads the metadata feature's snapshot; without that feature
// the variables are never known.
func (h runHost) RouteVars() (proxy.Vars, bool) {
	if h.meta == nil {
		return proxy.Vars{}, false
	}
	return h.meta.Vars()
}
