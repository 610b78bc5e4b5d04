package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/issuer"
	"github.com/wicket-sh/wicket/internal/oidc"
)

type system struct {
	issuer, agent *exec.Cmd
	api, admin    string
	pprof         string // the bench build's pprof socket, when asked for
	spiffe        string // the Workload API's socket, when asked for
	stopOnce      sync.Once
}

func (s *system) stop() {
	s.stopOnce.Do(func() {
		for _, c := range []*exec.Cmd{s.agent, s.issuer} {
			if c != nil && c.Process != nil {
				c.Process.Signal(os.Interrupt)
				done := make(chan struct{})
				go func() { c.Wait(); close(done) }()
				select {
				case <-done:
				case <-time.After(5 * time.Second):
					c.Process.Kill()
				}
			}
		}
	})
}

func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func waitSocket(path string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		c, err := net.Dial("unix", path)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not up after %s: %v", path, d, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// startSystem runs a real issuer and a real agent as separate processes,
// with one registered machine, the way they run in production; with
// spiffe, the agent also serves the SPIFFE Workload API ([spiffe]).
func startSystem(ctx context.Context, bin, work string, pprof, spiffe bool) (*system, error) {
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	state := filepath.Join(work, "state")
	isock := filepath.Join(work, "issuer.sock")
	iflags := []string{"--state-dir", state, "--admin-socket", isock, "--listen", addr, "--public-url", "http://" + addr, "--log-level", "error"}
	if out, err := exec.Command(bin, append([]string{"issuer", "init"}, iflags...)...).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("issuer init: %v\n%s", err, out)
	}
	s := &system{api: filepath.Join(work, "run", "api.sock"), admin: filepath.Join(work, "run", "admin.sock")}
	s.issuer = exec.Command(bin, append([]string{"issuer"}, iflags...)...)
	s.issuer.Stderr = os.Stderr
	if err := s.issuer.Start(); err != nil {
		return nil, err
	}
	if err := waitSocket(isock, 10*time.Second); err != nil {
		s.stop()
		return nil, err
	}
	out, err := exec.Command(bin, "issuer", "machine", "add", "--socket", isock, "--org", "dev", "--app", "dev-app",
		"--name", "bench", "--region", "local", "--tag", "env=bench").Output()
	if err != nil {
		s.stop()
		return nil, fmt.Errorf("machine add: %v", err)
	}
	var added struct {
		Token struct {
			Token string `json:"token"`
		} `json:"token"`
	}
	if err := json.Unmarshal(out, &added); err != nil {
		s.stop()
		return nil, err
	}
	cfg := filepath.Join(work, "agent.toml")
	body := fmt.Sprintf(`[api]
socket_path = %q
max_conns = 4096
[admin]
socket_path = %q
[issuer]
url = "http://%s"
[tokens]
max_audiences = 20000
[limits]
token_rate = 1000000
token_burst = 1000000
[log]
level = "info"
`, s.api, s.admin, addr)
	if spiffe {
		s.spiffe = filepath.Join(work, "run", "spiffe.sock")
		body += fmt.Sprintf("[spiffe]\nenabled = true\nsocket_path = %q\n", s.spiffe)
	}
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		s.stop()
		return nil, err
	}
	s.agent = exec.Command(bin, "agent", "--config", cfg)
	// The token reaches the agent through its environment, which the agent
	// scrubs right after reading.
	s.agent.Env = append(os.Environ(), api.MachineTokenEnv+"="+added.Token.Token)
	if pprof {
		s.pprof = filepath.Join(work, "pprof.sock")
		s.agent.Env = append(s.agent.Env, benchPprofEnv+"="+s.pprof)
	}
	// The production default log level, written to a file as a service
	// manager would: the audit lines are part of what is measured.
	agentLog, err := os.Create(filepath.Join(work, "agent.log"))
	if err != nil {
		s.stop()
		return nil, err
	}
	s.agent.Stderr = agentLog
	if err := s.agent.Start(); err != nil {
		s.stop()
		return nil, err
	}
	if err := waitSocket(s.api, 10*time.Second); err != nil {
		s.stop()
		return nil, err
	}
	// Wait until metadata is served (first upstream fetch done).
	md := newTarget("md", s.api, "GET", "/v1/metadata", nil)
	deadline := time.Now().Add(10 * time.Second)
	for runLoad(ctx, md, 1, 0, 50*time.Millisecond).Requests == 0 {
		if time.Now().After(deadline) {
			s.stop()
			return nil, fmt.Errorf("agent never served metadata")
		}
	}
	if spiffe {
		if err := waitSocket(s.spiffe, 10*time.Second); err != nil {
			s.stop()
			return nil, err
		}
	}
	return s, nil
}

// startReference runs this binary with flag (-serve-reference or
// -serve-raw-reference) on sock, in a process of its own.
func startReference(flag, sock string) (*exec.Cmd, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	c := exec.Command(self, flag, sock)
	c.Stderr = os.Stderr
	if err := c.Start(); err != nil {
		return nil, err
	}
	return c, waitSocket(sock, 10*time.Second)
}

// measureMinting compares the issuer's token handler with a bare signing
// loop of the same algorithm, both in this process with as many workers as
// CPUs, alternating, for the same time.
func measureMinting(ctx context.Context, o options) ([]comparison, error) {
	var out []comparison
	for _, alg := range []string{"RS256", "ES256"} {
		dir, err := os.MkdirTemp("", "wbm")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ov := []config.IssuerOverride{func(c *config.Issuer) {
			c.State.Dir, c.Admin.Path = filepath.Join(dir, "state"), filepath.Join(dir, "a.sock")
			c.Server.Listen, c.Server.PublicURL = ln.Addr().String(), "http://"+ln.Addr().String()
			c.OIDC.Alg = alg
			c.Log.Level = "error"
		}}
		r, err := issuer.Start(ctx, issuer.StartOptions{Init: true, Options: issuer.Options{Overrides: ov, Listener: ln, Logger: slog.New(slog.DiscardHandler)}})
		if err != nil {
			return nil, err
		}
		s, cancel := r.Issuer, func() { r.Stop() }
		done := r.Done()
		m, err := s.EnsureMachine(ctx, api.MachineSpec{Org: "dev", App: "dev-app", Name: "mint", Region: "local"})
		if err != nil {
			cancel()
			return nil, err
		}
		tok, err := s.MintToken(ctx, m.ID, time.Hour)
		if err != nil {
			cancel()
			return nil, err
		}
		h := s.PublicHandler()
		key, err := oidc.GenerateKey(oidc.Alg(alg), time.Now(), 0)
		if err != nil {
			cancel()
			return nil, err
		}
		claims := oidc.Claims{Issuer: "http://x/dev", Subject: "dev:dev-app:mint", Audience: []string{"bench"},
			IssuedAt: time.Now(), Expiry: time.Now().Add(10 * time.Minute), ID: "jti", Org: "dev", App: "dev-app", MachineID: m.ID, MachineName: "mint"}
		bare, err := bareSigner(key, claims)
		if err != nil {
			cancel()
			return nil, err
		}
		endpoint := func() error {
			req, _ := http.NewRequest("POST", "/v1/tokens/oidc", strings.NewReader(`{"aud":"bench"}`))
			req.RemoteAddr = "127.0.0.1:1"
			req.Header.Set("Authorization", api.AuthScheme+" "+tok.Token)
			w := &nullWriter{h: http.Header{}}
			h.ServeHTTP(w, req)
			if w.status != 0 && w.status != 200 {
				return fmt.Errorf("status %d", w.status)
			}
			return nil
		}
		target := "ratio >= 0.95"
		if alg == "ES256" {
			target = "ratio >= 0.85"
		}
		c := comparison{Name: "issuer /v1/tokens/oidc " + alg, Target: target}
		var refs, subs []loadResult
		for i := 0; i < o.rounds; i++ {
			refs = append(refs, loop(ctx, "bare sign "+alg, bare, o.warmup/2, o.duration/2))
			subs = append(subs, loop(ctx, c.Name, endpoint, o.warmup/2, o.duration/2))
		}
		c.Reference, c.Subject, c.Runs = median(refs), median(subs), append(refs, subs...)
		c.ratios()
		fmt.Fprintf(os.Stderr, "%s: %.0f/s vs bare %.0f/s → %.2f, CPU/token %.1f vs %.1f µs → %.2f\n", c.Name, c.Subject.RPS, c.Reference.RPS, c.Ratio,
			c.Subject.CPUusPerReq, c.Reference.CPUusPerReq, c.CPURatio)
		out = append(out, c)
		cancel()
		<-done
	}
	return out, nil
}

// bareSigner is the reference of minting: go-jose signing the payload of
// claims, encoded once, with a signer built once and the same header
// (kid, typ JWT), and nothing else; internal/oidc's BenchmarkBareSign.
func bareSigner(key *oidc.Key, claims oidc.Claims) (func() error, error) {
	alg := jose.SignatureAlgorithm(key.Alg)
	tok, err := oidc.Sign(key, claims)
	if err != nil {
		return nil, err
	}
	parsed, err := jose.ParseSigned(tok, []jose.SignatureAlgorithm{alg})
	if err != nil {
		return nil, err
	}
	payload := parsed.UnsafePayloadWithoutVerification()
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: jose.JSONWebKey{Key: key.Private, KeyID: key.ID}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return nil, err
	}
	return func() error {
		jws, err := s.Sign(payload)
		if err == nil {
			_, err = jws.CompactSerialize()
		}
		return err
	}, nil
}

type nullWriter struct {
	h      http.Header
	status int
}

func (n *nullWriter) Header() http.Header         { return n.h }
func (n *nullWriter) Write(p []byte) (int, error) { return len(p), nil }
func (n *nullWriter) WriteHeader(s int)           { n.status = s }

// loop runs f on GOMAXPROCS workers for d after a warm-up.
func loop(ctx context.Context, name string, f func() error, warmup, d time.Duration) loadResult {
	var n, errs atomic.Int64
	var measuring, stop atomic.Bool
	var wg sync.WaitGroup
	for i := 0; i < cpus(); i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				err := f()
				if measuring.Load() {
					if err != nil {
						errs.Add(1)
					} else {
						n.Add(1)
					}
				}
			}
		}()
	}
	sleepCtx(ctx, warmup)
	measuring.Store(true)
	start, cpu0 := time.Now(), procCPU(os.Getpid())
	sleepCtx(ctx, d)
	measuring.Store(false)
	el, cpu1 := time.Since(start), procCPU(os.Getpid())
	stop.Store(true)
	wg.Wait()
	r := loadResult{Name: name, Conns: cpus(), Seconds: el.Seconds(), Requests: n.Load(), Errors: errs.Load(), RPS: float64(n.Load()) / el.Seconds()}
	if r.Requests > 0 {
		// This process's CPU per call: on a shared machine, what the
		// other processes take changes the rate, not this.
		r.CPUusPerReq = (cpu1 - cpu0).Seconds() * 1e6 / float64(r.Requests)
	}
	return r
}

func connScale(ctx context.Context, t target, sys *system, o options) []loadResult {
	var out []loadResult
	for _, c := range []int{1, 64, 512, 2000} {
		r := runLoad(ctx, t, c, o.warmup, o.duration/2)
		r.RSSKiB = rssKiB(sys.agent.Process.Pid)
		fmt.Fprintf(os.Stderr, "conns %d: %.0f req/s p99 %.0fµs errors %d\n", c, r.RPS, r.P99us, r.Errors)
		out = append(out, r)
	}
	return out
}

// audienceScale fills the agent's token cache with N audiences, then
// measures cached token requests spread over them.
func audienceScale(ctx context.Context, sys *system, o options) ([]audFigure, error) {
	var out []audFigure
	filled := 0
	for _, n := range []int{1, 100, 10000} {
		prime := func(from, to int) {
			var wg sync.WaitGroup
			ch := make(chan int)
			for w := 0; w < 16; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range ch {
						t := newTarget("", sys.api, "POST", "/v1/tokens/oidc", []byte(fmt.Sprintf(`{"aud":"aud-%d"}`, i)))
						conn, err := net.Dial("unix", sys.api)
						if err != nil {
							continue
						}
						roundTrip(conn, bufio.NewReader(conn), t.request)
						conn.Close()
					}
				}()
			}
			for i := from; i < to; i++ {
				ch <- i
			}
			close(ch)
			wg.Wait()
		}
		prime(filled, n)
		filled = n
		var targets []target
		for i := 0; i < o.conns; i++ {
			targets = append(targets, newTarget("", sys.api, "POST", "/v1/tokens/oidc", []byte(fmt.Sprintf(`{"aud":"aud-%d"}`, i*max(1, n/o.conns)%n))))
		}
		r := runLoadMulti(ctx, targets, o.warmup, o.duration/2)
		out = append(out, audFigure{Audiences: n, RSSKiB: rssKiB(sys.agent.Process.Pid), RPS: r.RPS, P99us: r.P99us})
		fmt.Fprintf(os.Stderr, "audiences %d: %.0f req/s p99 %.0fµs\n", n, r.RPS, r.P99us)
	}
	return out, nil
}

// runLoadMulti runs one connection per target concurrently and merges.
func runLoadMulti(ctx context.Context, ts []target, warmup, d time.Duration) loadResult {
	res := make([]loadResult, len(ts))
	var wg sync.WaitGroup
	for i, t := range ts {
		wg.Add(1)
		go func() { defer wg.Done(); res[i] = runLoad(ctx, t, 1, warmup, d) }()
	}
	wg.Wait()
	var m loadResult
	for _, r := range res {
		m.Requests += r.Requests
		m.Errors += r.Errors
		m.RPS += r.RPS
		m.P99us = max(m.P99us, r.P99us)
	}
	return m
}

// measureDev times `wicket dev` from exec to its ready line, on a fresh
// directory (creates state and keys) and again on the existing state.
func measureDev(bin, work string) ([]devFigure, error) {
	dir := filepath.Join(work, "dev")
	var out []devFigure
	for _, name := range []string{"first start (creates state and keys)", "restart (existing state)"} {
		addr, err := freePort()
		if err != nil {
			return nil, err
		}
		c := exec.Command(bin, "dev", "--dir", dir, "--issuer-addr", addr)
		c.Stderr = io.Discard
		stdout, err := c.StdoutPipe()
		if err != nil {
			return nil, err
		}
		start := time.Now()
		if err := c.Start(); err != nil {
			return nil, err
		}
		line, err := bufio.NewReader(stdout).ReadString('\n')
		el := time.Since(start)
		c.Process.Signal(os.Interrupt)
		c.Wait()
		if err != nil || !strings.HasPrefix(line, "ready") {
			return nil, fmt.Errorf("wicket dev: %q %v", line, err)
		}
		out = append(out, devFigure{Name: name, Ms: float64(el.Microseconds()) / 1000})
	}
	return out, nil
}

func cpus() int { return max(1, runtimeNumCPU()) }
