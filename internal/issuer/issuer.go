// Package issuer is the platform-side service: the machine registry, machine
// token minting and verification, per-org OIDC signing with discovery and
// JWKS, metadata long polls, and the optional gateway to a platform API.
package issuer

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/admin"
	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/metrics"
	"github.com/wicket-sh/wicket/internal/peer"
	"github.com/wicket-sh/wicket/internal/seal"
	"github.com/wicket-sh/wicket/internal/store"
	"github.com/wicket-sh/wicket/internal/unixsock"
	"github.com/wicket-sh/wicket/internal/version"
)

// tokenLocation is the macaroon location of machine tokens.
const tokenLocation = "wicket"

var errUnknownOrg = errors.New("unknown org")

// Options configure an Issuer.
type Options struct {
	ConfigPath string
	Overrides  []config.IssuerOverride
	Logger     *slog.Logger
	LogLevel   *slog.LevelVar
	// Now replaces the clock in tests.
	Now func() time.Time
	// Listener, when set, is used for the public HTTP API instead of
	// listening on server.listen (tests, dev mode on a port chosen by the OS).
	Listener net.Listener

	// FederationRefreshMin and FederationRefreshMax replace the bounds
	// of the wait between fetches of a foreign SPIFFE bundle (30 s and
	// 1 h), whatever its refresh hint says; tests shorten them.
	FederationRefreshMin, FederationRefreshMax time.Duration

	allowNoMintKey bool                          // Init creates the first key
	maintainEvery  time.Duration                 // key maintenance period; 0 = a minute (tests shorten it)
	wrapStore      func(store.Store) store.Store // tests: interpose on the opened store
}

type runtime struct {
	cfg        *config.Issuer
	adminAuth  admin.Auth
	generation uint64
}

// Issuer is the issuer service.
type Issuer struct {
	opts    Options
	log     *slog.Logger
	selfUID uint32
	started time.Time

	store  store.Store
	sealer *seal.Sealer

	rt       atomic.Pointer[runtime]
	reloadMu sync.Mutex
	keys     atomic.Pointer[keyring]
	keyMu    sync.Mutex // serializes key ring loads
	rotateMu sync.Mutex // serializes key creation and rotation
	verified verifyCache
	fed      *federation // [[spiffe.federation]]: static
	signing  *mintGate   // minting's CPU-bound part, a few at a time, in order

	adm      *unixsock.Listener
	admin    *admin.Server
	pub      net.Listener
	remote   atomic.Pointer[remoteAPI] // the remote admin API, when configured
	ready    chan struct{}
	readyOne sync.Once

	reloadsOK, reloadsKO     atomic.Uint64
	tokensIssued, authFailed atomic.Uint64
	machineTokensMinted      atomic.Uint64
	x509SVIDsIssued          atomic.Uint64
	jwtSVIDsIssued           atomic.Uint64
	svidsRefused             atomic.Uint64 // CSRs and IDs outside the namespace
	longPolls                atomic.Int64
}

// New loads the config, opens the state and unseals the keys. The state
// must have been created by Init.
func New(ctx context.Context, opts Options) (*Issuer, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	s := &Issuer{opts: opts, log: opts.Logger, selfUID: uint32(os.Geteuid()), started: time.Now(), ready: make(chan struct{}), signing: newMintGate()}
	rt, err := s.load()
	if err != nil {
		return nil, err
	}
	rt.generation = 1
	s.rt.Store(rt)
	s.applyLogLevel(rt.cfg)
	if s.fed, err = newFederation(rt.cfg.SPIFFE); err != nil {
		return nil, err
	}

	key, err := loadSealKey(rt.cfg.State)
	if err != nil {
		return nil, err
	}
	s.sealer, err = seal.New(key)
	clear(key)
	if err != nil {
		return nil, err
	}
	s.store, err = openStore(ctx, rt.cfg.State, s.log)
	if err != nil {
		return nil, err
	}
	if opts.wrapStore != nil {
		s.store = opts.wrapStore(s.store)
	}
	if err := s.refreshKeys(ctx); err != nil {
		s.store.Close()
		return nil, err
	}
	if s.keys.Load().mintKey == nil && !opts.allowNoMintKey {
		s.store.Close()
		return nil, errors.New("state has no machine token key: run `wicket issuer init`")
	}
	return s, nil
}

func loadSealKey(st config.State) ([]byte, error) {
	if st.SealKeyEnv != "" {
		k, err := seal.KeyFromEnv(st.SealKeyEnv)
		os.Unsetenv(st.SealKeyEnv)
		return k, err
	}
	return seal.LoadKeyFile(st.KeyFile())
}

func (s *Issuer) load() (*runtime, error) {
	cfg, err := config.LoadIssuer(s.opts.ConfigPath, s.opts.Overrides...)
	if err != nil {
		return nil, err
	}
	tok, err := admin.LoadToken(cfg.Admin)
	if err != nil {
		return nil, err
	}
	return &runtime{cfg: cfg, adminAuth: admin.Auth{
		Allow: peer.Allowlist{UIDs: cfg.Admin.AllowUIDs, GIDs: cfg.Admin.AllowGIDs},
		Token: tok,
	}}, nil
}

func (s *Issuer) applyLogLevel(cfg *config.Issuer) {
	if s.opts.LogLevel != nil {
		if lv, err := cfg.Log.SlogLevel(); err == nil {
			s.opts.LogLevel.Set(lv)
		}
	}
}

func (s *Issuer) cfg() *config.Issuer { return s.rt.Load().cfg }
func (s *Issuer) now() time.Time      { return s.opts.Now() }

// Store returns the issuer's state store (dev mode and tests).
func (s *Issuer) Store() store.Store { return s.store }

// Ready is closed when the public listener and admin socket accept.
func (s *Issuer) Ready() <-chan struct{} { return s.ready }

// PublicURL returns the configured public base URL.
func (s *Issuer) PublicURL() string { return s.cfg().Server.PublicURL }

// Reload re-reads the config; only dynamic settings take effect.
func (s *Issuer) Reload(ctx context.Context) (api.ReloadResult, error) {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	old := s.rt.Load()
	next, err := s.load()
	if err != nil {
		s.reloadsKO.Add(1)
		return api.ReloadResult{}, err
	}
	restart := config.RestartRequired(old.cfg, next.cfg)
	if len(restart) > 0 {
		config.KeepStatic(next.cfg, old.cfg)
	}
	next.generation = old.generation + 1
	s.rt.Store(next)
	s.applyLogLevel(next.cfg)
	s.reloadsOK.Add(1)
	s.log.Info("config reloaded", "generation", next.generation, "restart_required", restart)
	return api.ReloadResult{Status: "ok", Generation: next.generation, RestartRequired: restart}, nil
}

// Run serves the public API and the admin socket until ctx ends.
func (s *Issuer) Run(ctx context.Context) error {
	defer s.store.Close()
	cfg := s.cfg()
	admCfg, err := cfg.Admin.UnixSock("admin", 0o700)
	if err != nil {
		return err
	}
	admCfg.Logger = s.log
	s.adm, err = unixsock.Listen(admCfg)
	if err != nil {
		return fmt.Errorf("admin socket: %w", err)
	}
	defer s.adm.Close()
	s.pub = s.opts.Listener
	if s.pub == nil {
		s.pub, err = net.Listen("tcp", cfg.Server.Listen)
		if err != nil {
			return fmt.Errorf("listen %s: %w", cfg.Server.Listen, err)
		}
	}
	defer s.pub.Close()

	lim := cfg.HTTP.Limits()
	s.admin = admin.New(s, func() admin.Auth { return s.rt.Load().adminAuth }, s.selfUID, s.log.With("socket", "admin"))
	s.registerAdmin(s.admin)
	admSrv := unixsock.NewHTTPServer(s.admin, lim, s.log)
	pubSrv := s.tcpServer(s.publicHandler(), lim)

	remote, err := s.listenRemote(cfg, lim)
	if err != nil {
		return err
	}
	if remote != nil {
		defer remote.ln.Close()
		s.remote.Store(remote)
	}

	bg, stopBG := context.WithCancel(ctx)
	var bgDone sync.WaitGroup
	defer bgDone.Wait() // before the store closes (deferred earlier, runs later)
	defer stopBG()
	bgDone.Go(func() { s.watchKeys(bg) })
	bgDone.Go(func() { s.keyMaintenance(bg) })
	bgDone.Go(func() { s.runFederation(bg) })

	errc := make(chan error, 3)
	go func() { errc <- ignoreClosed(admSrv.Serve(s.adm)) }()
	if remote != nil {
		go func() { errc <- ignoreClosed(remote.serve()) }()
	}
	go func() {
		if cfg.Server.TLSCert != "" {
			pubSrv.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
			errc <- ignoreClosed(pubSrv.ServeTLS(s.pub, cfg.Server.TLSCert, cfg.Server.TLSKey))
			return
		}
		errc <- ignoreClosed(pubSrv.Serve(s.pub))
	}()
	s.log.Info("issuer ready", "public_url", cfg.Server.PublicURL, "listen", s.pub.Addr().String(), "admin_socket", s.adm.Path())
	s.readyOne.Do(func() { close(s.ready) })

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	s.log.Info("issuer shutting down")
	// Background work ends first: an elected replica resigns while the
	// store is still open, so another takes over at once.
	stopBG()
	bgDone.Wait()
	shCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	servers := []*http.Server{pubSrv, admSrv}
	if remote != nil {
		servers = append(servers, remote.http)
	}
	for _, srv := range servers {
		if err := srv.Shutdown(shCtx); err != nil {
			srv.Close()
		}
	}
	s.admin.FlushDenials() // pending per-uid denial counts reach the log
	return runErr
}

// tcpServer is an HTTP server for one of the issuer's TCP listeners.
func (s *Issuer) tcpServer(h http.Handler, lim unixsock.HTTPLimits) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: lim.ReadHeaderTimeout,
		IdleTimeout:       lim.IdleTimeout,
		WriteTimeout:      lim.WriteTimeout,
		MaxHeaderBytes:    lim.MaxHeaderBytes,
		// "OPTIONS *" reaches the handler (and its JSON errors) instead
		// of net/http's own empty 200.
		DisableGeneralOptionsHandler: true,
		ErrorLog:                     slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
}

// Addr returns the public listener's address once running.
func (s *Issuer) Addr() net.Addr {
	if s.pub == nil {
		return nil
	}
	return s.pub.Addr()
}

func ignoreClosed(err error) error {
	if errors.Is(err, http.ErrServerClosed) || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// watchKeys reloads the key ring whenever keys or revocations change in the
// store (another replica, or the admin socket). This is how a revocation or
// a rotation made on one replica reaches the others.
func (s *Issuer) watchKeys(ctx context.Context) {
	ch, err := s.store.WatchKeys(ctx)
	if err != nil {
		s.log.Error("watch keys", "err", err)
		return
	}
	for range ch {
		s.reloadKeys(ctx)
	}
}

// reloadKeys refreshes the key ring, retrying until it loads: the change
// that woke us must not be lost to a store that flickered meanwhile.
func (s *Issuer) reloadKeys(ctx context.Context) {
	pause := 100 * time.Millisecond
	for {
		err := s.refreshKeys(ctx)
		if err == nil || ctx.Err() != nil {
			return
		}
		s.log.Error("reload keys", "err", err, "retry_in", pause.String())
		if !sleepCtx(ctx, pause) {
			return
		}
		pause = min(2*pause, 5*time.Second)
	}
}

// keyMaintenance runs the scheduled key work (pruning, rotate_every) on
// exactly one replica: the one the store elects when it is shared, else
// this one. Other replicas see the results through watchKeys.
func (s *Issuer) keyMaintenance(ctx context.Context) {
	el, err := store.ElectorFor(s.store)
	if err != nil {
		// openStore refuses such a store; should one get here anyway, no
		// maintenance is safer than maintenance on every replica.
		s.log.Error("key maintenance disabled", "err", err)
		return
	}
	if el == nil {
		s.maintainLoop(ctx)
		return
	}
	pause := time.Second
	for ctx.Err() == nil {
		lctx, resign, err := el.Lead(ctx, "key-maintenance")
		if err != nil {
			if ctx.Err() == nil {
				s.log.Warn("key maintenance election", "err", err, "retry_in", pause.String())
				sleepCtx(ctx, pause)
				pause = min(2*pause, 30*time.Second)
			}
			continue
		}
		pause = time.Second
		s.log.Info("elected to run key maintenance")
		// Decide on the newest keys: the previous leader may have rotated
		// a moment ago, and its watch event need not have arrived yet.
		if err := s.refreshKeys(lctx); err != nil {
			s.log.Error("key maintenance: load keys", "err", err)
			sleepCtx(lctx, time.Second)
		} else {
			s.maintainLoop(lctx)
		}
		resign()
		if ctx.Err() == nil {
			s.log.Warn("key maintenance leadership lost; campaigning again")
		}
	}
}

// maintainLoop runs maintainKeys now and then periodically until ctx ends.
func (s *Issuer) maintainLoop(ctx context.Context) {
	t := time.NewTicker(cmp.Or(s.opts.maintainEvery, time.Minute))
	defer t.Stop()
	for {
		if err := s.maintainKeys(ctx); err != nil && ctx.Err() == nil {
			s.log.Error("key maintenance", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// sleepCtx sleeps for d and reports whether ctx is still live.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// Status implements admin.Service.
func (s *Issuer) Status() any {
	rt := s.rt.Load()
	v, c := version.Get()
	socks := map[string]any{}
	if s.adm != nil {
		socks["admin"] = map[string]any{"path": s.adm.Path(), "stats": s.adm.Stats()}
	}
	kr := s.keys.Load()
	return map[string]any{
		"service":           "issuer",
		"version":           v,
		"commit":            c,
		"uptime_seconds":    int64(time.Since(s.started).Seconds()),
		"config_generation": rt.generation,
		"public_url":        rt.cfg.Server.PublicURL,
		"sockets":           socks,
		"orgs":              len(kr.oidcSets),
		"counters":          s.admin.StatusCounters(s.counters()),
		"long_polls":        s.longPolls.Load(),
		"state":             s.stateStatus(rt.cfg.State),
		"remote_admin":      s.remoteStatus(),
		"spiffe_federation": s.federationStatus(),
	}
}

// counters lists every counter the issuer reports: status shows each
// under its key, /metrics as its sample, so the two cannot drift.
func (s *Issuer) counters() metrics.CounterSet {
	reloads := "Config reloads."
	return append(metrics.CounterSet{
		{Key: "oidc_tokens_issued", Name: "wicket_oidc_tokens_issued_total", Help: "OIDC tokens signed.", Value: s.tokensIssued.Load},
		{Key: "machine_tokens_minted", Name: "wicket_machine_tokens_minted_total", Help: "Machine tokens minted.", Value: s.machineTokensMinted.Load},
		{Key: "auth_failures", Name: "wicket_auth_failures_total", Help: "Requests refused with 401.", Value: s.authFailed.Load},
		{Key: "x509_svids_issued", Name: "wicket_x509_svids_issued_total", Help: "X.509-SVIDs signed.", Value: s.x509SVIDsIssued.Load},
		{Key: "jwt_svids_issued", Name: "wicket_jwt_svids_issued_total", Help: "JWT-SVIDs signed.", Value: s.jwtSVIDsIssued.Load},
		{Key: "svids_refused", Name: "wicket_svids_refused_total", Help: "SVID requests refused for their CSR or SPIFFE ID (after the token passed).", Value: s.svidsRefused.Load},
		{Key: "reloads_ok", Name: "wicket_reloads_total", Help: reloads, Labels: map[string]string{"outcome": "ok"}, Value: s.reloadsOK.Load},
		{Key: "reloads_failed", Name: "wicket_reloads_total", Help: reloads, Labels: map[string]string{"outcome": "failed"}, Value: s.reloadsKO.Load},
	}, s.federationCounters()...)
}

// Metrics implements admin.Service.
func (s *Issuer) Metrics() []metrics.Sample {
	out := []metrics.Sample{
		{Name: "wicket_uptime_seconds", Help: "Seconds since start.", Type: metrics.Gauge, Value: time.Since(s.started).Seconds()},
		{Name: "wicket_config_generation", Help: "Generation of the running config.", Type: metrics.Gauge, Value: float64(s.rt.Load().generation)},
		{Name: "wicket_long_polls", Help: "Metadata long polls in progress.", Type: metrics.Gauge, Value: float64(s.longPolls.Load())},
	}
	out = append(out, s.counters().Samples()...)
	out = append(out, s.stateMetrics()...)
	out = append(out, unixsock.Metrics(s.adm)...)
	out = append(out, s.remoteMetrics()...)
	out = append(out, s.federationGauges()...)
	return out
}

// PublicHandler returns the public HTTP API handler (benchmarks measure it
// without the network in between).
func (s *Issuer) PublicHandler() http.Handler { return s.publicHandler() }
