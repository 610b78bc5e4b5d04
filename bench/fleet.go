package main

// The fleet simulator: many lightweight simulated agents against one real
// `wicket issuer` process, speaking its public API as agents do (one
// metadata long poll each, token refreshes with per-request copies of a real
// machine token), measuring what a fleet does to the issuer:
//
//   - machines held in long poll vs the issuer's RSS and CPU;
//   - fan-out: every machine of one app updated through the admin socket,
//     per machine the time from its write to its waiter's answer;
//   - a refresh storm: every machine of the storm asks for a new token
//     within a few seconds (a fleet-wide restart);
//   - cold start of the issuer with every machine registered.
//
// It is a benchmark, not a test: nothing asserts a time. Every loop is
// bounded in count and time; only loopback TCP and Unix sockets are used.
//
//	go run ./bench -fleet                                   # small, a few minutes
//	go run ./bench -fleet -fleet-sizes 1000,10000,50000 -fleet-fanout 10000 -fleet-storm 10000

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/issuer"
	"github.com/wicket-sh/wicket/internal/machinetoken"
)

var (
	fleetOn      = flag.Bool("fleet", false, "run the fleet simulator against a real issuer process instead of the guest API bench")
	fleetSizes   = flag.String("fleet-sizes", "1000,5000", "machines held in long poll, a curve point each (ascending)")
	fleetFanout  = flag.Int("fleet-fanout", 5000, "machines of the app updated in the fan-out measure (<= the largest size)")
	fleetStorm   = flag.Int("fleet-storm", 5000, "machines asking for a token in the refresh storm (<= the largest size)")
	fleetWindow  = flag.Duration("fleet-storm-window", 3*time.Second, "time over which the storm's requests are spread")
	fleetHold    = flag.Duration("fleet-hold", 10*time.Second, "time each curve point is held while CPU is measured")
	fleetRefresh = flag.Duration("fleet-refresh", 5*time.Minute, "each held machine's token refresh period during the hold")
	fleetSources = flag.Int("fleet-sources", 8, "loopback source addresses 127.0.0.1..N the agents connect from")
	fleetWriters = flag.Int("fleet-writers", 8, "concurrent admin socket connections writing the fan-out updates")
)

const (
	fleetOrg   = "fleet"
	fleetESOrg = "fleet-es" // the ES256 storm's org: its first key is made under alg ES256
	fleetAud   = "sts.example.com"
	// fleetAppSize machines per app; app-0 is the fan-out's.
	fleetAppSize = 10000
)

// FleetReport is everything one fleet run measured.
type FleetReport struct {
	Date      string         `json:"date"`
	CPUs      int            `json:"cpus"`
	GoVersion string         `json:"go"`
	Options   string         `json:"options"`
	Hold      []holdFigure   `json:"hold"`
	Fanout    []fanoutFigure `json:"fanout"`
	Storms    []stormFigure  `json:"storms"`
	ColdStart []coldFigure   `json:"cold_start"`
	Notes     []string       `json:"notes"`
}

type holdFigure struct {
	Machines      int     `json:"machines"`
	LongPolls     int64   `json:"long_polls"` // the issuer's own gauge
	RSSKiB        int64   `json:"rss_kib"`
	AnonKiB       int64   `json:"anon_kib"`
	CPUPercent    float64 `json:"cpu_percent"` // of one core, over the hold
	Refreshes     int64   `json:"refreshes"`
	RefreshErrors int64   `json:"refresh_errors"`
	RefreshP99ms  float64 `json:"refresh_p99_ms"`
	WaiterErrors  int64   `json:"waiter_errors"`
	ClientRSSKiB  int64   `json:"client_rss_kib"`
}

type fanoutFigure struct {
	Machines    int     `json:"machines"`
	WriteErrors int64   `json:"write_errors"`
	Answered    int     `json:"answered"`
	P50ms       float64 `json:"p50_ms"`
	P99ms       float64 `json:"p99_ms"`
	MaxMs       float64 `json:"max_ms"`
	TotalS      float64 `json:"total_s"`
	WritesPerS  float64 `json:"writes_per_s"`
}

type stormFigure struct {
	Alg      string  `json:"alg"`
	Requests int     `json:"requests"`
	WindowS  float64 `json:"window_s"`
	Errors   int64   `json:"errors"`
	// ConnectErrors are the part of Errors that never connected.
	ConnectErrors int64   `json:"connect_errors"`
	P50ms         float64 `json:"p50_ms"`
	P99ms         float64 `json:"p99_ms"`
	MaxMs         float64 `json:"max_ms"`
	TotalS        float64 `json:"total_s"`
	TokensPerS    float64 `json:"tokens_per_s"`
	RSSKiB        int64   `json:"issuer_rss_kib"`
	// IssuerCPUPercent is the issuer's CPU (% of one core) from the
	// window's start to the last answer: below 100 × CPUs, the client or
	// the connection setup bounds the rate, not the issuer.
	IssuerCPUPercent float64 `json:"issuer_cpu_percent"`
}

type coldFigure struct {
	Registered int     `json:"registered"`
	ServeMs    float64 `json:"serve_ms"` // exec to the first authenticated answer
	RSSKiB     int64   `json:"rss_kib"`
}

// fleetMachine is one simulated agent's identity. token is a real machine
// token: kept in this process's memory only, never printed.
type fleetMachine struct {
	id, token string
}

type fleet struct {
	bin, work string
	addr      string // the issuer's public host:port
	adminSock string
	cfgPath   string
	sources   []net.IP
	machines  []fleetMachine // org fleet, app-N
	esMachine []fleetMachine // org fleet-es
	issuer    *exec.Cmd
	logFile   *os.File

	dialSem chan struct{}
	// Per machine of org fleet, Unix nanoseconds: when its fan-out write
	// was sent, and when its waiter saw the new state.
	writeAt, answerAt []atomic.Int64
	waiterErrs        atomic.Int64
	waiting           atomic.Int64 // waiters with a long poll sent
}

func runFleet(out string) error {
	sizes, err := parseSizes(*fleetSizes)
	if err != nil {
		return err
	}
	n := sizes[len(sizes)-1]
	if *fleetFanout > n || *fleetStorm > n || *fleetSources < 1 || *fleetSources > 250 {
		return fmt.Errorf("fleet: fanout (%d) and storm (%d) must be <= the largest size (%d); sources 1..250", *fleetFanout, *fleetStorm, n)
	}
	raiseNoFile(uint64(n)*2 + 4096)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// tmpfs when there is one: the state's fsyncs are the disk's figure,
	// not the issuer's.
	base := ""
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		base = "/dev/shm"
	}
	work, err := os.MkdirTemp(base, "wbf")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	f := &fleet{work: work, bin: filepath.Join(work, "wicket"), adminSock: filepath.Join(work, "admin.sock"),
		cfgPath: filepath.Join(work, "issuer.toml"), dialSem: make(chan struct{}, 64)}
	for i := range *fleetSources {
		f.sources = append(f.sources, net.IPv4(127, 0, 0, byte(1+i)))
	}
	fmt.Fprintln(os.Stderr, "building wicket…")
	if out, err := exec.Command("go", "build", "-o", f.bin, "./cmd/wicket").CombinedOutput(); err != nil {
		return fmt.Errorf("build: %v\n%s", err, out)
	}
	rep := &FleetReport{Date: time.Now().UTC().Format(time.RFC3339), CPUs: runtime.NumCPU(), GoVersion: runtime.Version(),
		Options: fmt.Sprintf("sizes=%v fanout=%d storm=%d window=%s hold=%s refresh=%s sources=%d writers=%d",
			sizes, *fleetFanout, *fleetStorm, *fleetWindow, *fleetHold, *fleetRefresh, *fleetSources, *fleetWriters)}
	if f.addr, err = freePort(); err != nil {
		return err
	}
	start := time.Now()
	if err := f.register(ctx, n, *fleetStorm); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "registered %d machines with tokens in %s\n", n+*fleetStorm, time.Since(start).Round(time.Millisecond))
	f.writeAt, f.answerAt = make([]atomic.Int64, n), make([]atomic.Int64, n)

	if _, err := f.startIssuer(ctx, "RS256"); err != nil {
		return err
	}
	defer f.stopIssuer()
	waitCtx, stopWaiters := context.WithCancel(ctx)
	var wg sync.WaitGroup
	held := 0
	for _, size := range sizes {
		for ; held < size; held++ {
			wg.Add(1)
			go func(i int) { defer wg.Done(); f.waiter(waitCtx, i) }(held)
		}
		h := f.measureHold(ctx, size)
		rep.Hold = append(rep.Hold, h)
		fmt.Fprintf(os.Stderr, "hold %d: long_polls %d, issuer RSS %.0f MiB, CPU %.1f%%, refreshes %d (errors %d), waiter errors %d\n",
			size, h.LongPolls, float64(h.RSSKiB)/1024, h.CPUPercent, h.Refreshes, h.RefreshErrors, h.WaiterErrors)
	}
	fo := f.measureFanout(ctx, *fleetFanout)
	rep.Fanout = append(rep.Fanout, fo)
	fmt.Fprintf(os.Stderr, "fanout %d: answered %d, p50 %.0f ms p99 %.0f ms, total %.1f s, write errors %d\n",
		fo.Machines, fo.Answered, fo.P50ms, fo.P99ms, fo.TotalS, fo.WriteErrors)
	// A fleet-wide restart closes the agents' long polls too; it also
	// keeps both processes under RLIMIT_NOFILE with the storm's
	// connections.
	stopWaiters()
	wg.Wait()
	st := f.storm(ctx, "RS256", f.machines[:*fleetStorm])
	rep.Storms = append(rep.Storms, st)
	fmt.Fprintf(os.Stderr, "storm RS256 %d: p50 %.0f ms p99 %.0f ms, errors %d, %.0f tokens/s, issuer CPU %.0f%%\n", st.Requests, st.P50ms, st.P99ms, st.Errors, st.TokensPerS, st.IssuerCPUPercent)
	f.stopIssuer()

	// Cold start: a restart on the same state, every machine registered;
	// under alg ES256 so the fleet-es org's first key is an ES256 key.
	d, err := f.startIssuer(ctx, "ES256")
	if err != nil {
		return err
	}
	rep.ColdStart = append(rep.ColdStart, coldFigure{Registered: n + *fleetStorm, ServeMs: float64(d.Microseconds()) / 1000, RSSKiB: rssKiB(f.issuer.Process.Pid)})
	fmt.Fprintf(os.Stderr, "cold start with %d machines: %s\n", n+*fleetStorm, d.Round(time.Millisecond))
	if err := f.prime(ctx, f.esMachine[0]); err != nil {
		return fmt.Errorf("fleet: first ES256 token: %w", err)
	}
	st = f.storm(ctx, "ES256", f.esMachine)
	rep.Storms = append(rep.Storms, st)
	fmt.Fprintf(os.Stderr, "storm ES256 %d: p50 %.0f ms p99 %.0f ms, errors %d, %.0f tokens/s, issuer CPU %.0f%%\n", st.Requests, st.P50ms, st.P99ms, st.Errors, st.TokensPerS, st.IssuerCPUPercent)
	f.stopIssuer()

	rep.Notes = append(rep.Notes,
		"One issuer process (bbolt on tmpfs when /dev/shm exists); the simulated agents share the machine's cores with it.",
		fmt.Sprintf("Agents connect from %d loopback source addresses; every long poll and token request carries its own copy of a real machine token.", len(f.sources)),
		"Fan-out latency is from the admin request's send to the waiter's answer, so it includes the write itself.")
	return writeFleetReport(rep, out)
}

func parseSizes(s string) ([]int, error) {
	var out []int
	for _, p := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(p))
		if err != nil || n < 1 || n > 200000 || (len(out) > 0 && n <= out[len(out)-1]) {
			return nil, fmt.Errorf("fleet-sizes %q: want ascending counts in 1..200000", s)
		}
		out = append(out, n)
	}
	return out, nil
}

// raiseNoFile lifts RLIMIT_NOFILE to at least want (root may raise the
// hard limit); the issuer child inherits it.
func raiseNoFile(want uint64) {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return
	}
	if lim.Max < want {
		lim.Max = want
	}
	lim.Cur = lim.Max
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		fmt.Fprintf(os.Stderr, "fleet: raising RLIMIT_NOFILE to %d: %v\n", want, err)
	}
}

// register creates the state and n machines of org fleet (apps of
// fleetAppSize) plus es machines of org fleet-es, each with a real machine
// token, through an in-process issuer on the same state (faster than n
// admin requests), then creates org fleet's first (RS256) signing key.
func (f *fleet) register(ctx context.Context, n, es int) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	ov := []config.IssuerOverride{func(c *config.Issuer) {
		c.State.Dir, c.Admin.Path = filepath.Join(f.work, "state"), filepath.Join(f.work, "setup.sock")
		c.Server.Listen, c.Server.PublicURL = ln.Addr().String(), "http://"+f.addr
		c.OIDC.Alg = "RS256"
		c.Log.Level = "error"
	}}
	r, err := issuer.Start(ctx, issuer.StartOptions{Init: true, Options: issuer.Options{Overrides: ov, Listener: ln, Logger: slog.New(slog.DiscardHandler)}})
	if err != nil {
		return err
	}
	defer r.Stop()
	f.machines, f.esMachine = make([]fleetMachine, n), make([]fleetMachine, es)
	jobs := make(chan int)
	errc := make(chan error, 4)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				spec := api.MachineSpec{Org: fleetOrg, App: fmt.Sprintf("app-%d", i/fleetAppSize), Name: fmt.Sprintf("m-%d", i), Region: "local",
					Tags: map[string]string{"fanout": "0"}}
				var dst *fleetMachine
				if i < n {
					dst = &f.machines[i]
				} else {
					spec.Org, spec.App, spec.Name = fleetESOrg, "es-0", fmt.Sprintf("e-%d", i-n)
					dst = &f.esMachine[i-n]
				}
				m, tok, err := r.AddMachine(ctx, spec)
				if err == nil {
					*dst = fleetMachine{id: m.ID, token: tok.Token}
				}
				if err != nil {
					select {
					case errc <- err:
					default:
					}
				}
			}
		}()
	}
	for i := range n + es {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	select {
	case err := <-errc:
		return fmt.Errorf("fleet: registering: %w", err)
	default:
	}
	// Org fleet's first key, made under RS256.
	h := r.PublicHandler()
	cp, err := copyFor(f.machines[0].token, machinetoken.FeatureOIDC)
	if err != nil {
		return err
	}
	req, _ := http.NewRequest("POST", "/v1/tokens/oidc", strings.NewReader(`{"aud":"`+fleetAud+`"}`))
	req.RemoteAddr = "127.0.0.1:1"
	req.Header.Set("Authorization", api.AuthScheme+" "+cp)
	w := &nullWriter{h: http.Header{}}
	h.ServeHTTP(w, req)
	if w.status != 0 && w.status != http.StatusOK {
		return fmt.Errorf("fleet: first RS256 token: status %d", w.status)
	}
	return nil
}

// copyFor is what an agent sends: a copy of the machine token narrowed to
// one feature (and, for OIDC, the audience) for ten minutes.
func copyFor(token string, feature machinetoken.Feature) (string, error) {
	s := machinetoken.Scope{Features: []machinetoken.Feature{feature}}
	if feature == machinetoken.FeatureOIDC {
		s.Audiences = []string{fleetAud}
	}
	return machinetoken.RestrictScope(token, time.Now(), 10*time.Minute, s)
}

// startIssuer runs `wicket issuer` on the fleet's state with alg and
// returns the time from exec to its first authenticated answer.
func (f *fleet) startIssuer(ctx context.Context, alg string) (time.Duration, error) {
	cfg := fmt.Sprintf(`[server]
public_url = "http://%s"
listen = %q
[admin]
socket_path = %q
[state]
dir = %q
[oidc]
alg = %q
[log]
level = "info"
`, f.addr, f.addr, f.adminSock, filepath.Join(f.work, "state"), alg)
	if err := os.WriteFile(f.cfgPath, []byte(cfg), 0o600); err != nil {
		return 0, err
	}
	lf, err := os.OpenFile(filepath.Join(f.work, "issuer.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return 0, err
	}
	f.logFile = lf
	start := time.Now()
	f.issuer = exec.Command(f.bin, "issuer", "--config", f.cfgPath)
	f.issuer.Stderr = lf
	if err := f.issuer.Start(); err != nil {
		return 0, err
	}
	probe := f.machines[0]
	cp, err := copyFor(probe.token, machinetoken.FeatureMetadata)
	if err != nil {
		return 0, err
	}
	req := []byte("GET /v1/machines/self HTTP/1.1\r\nHost: wicket\r\nAuthorization: " + api.AuthScheme + " " + cp + "\r\n\r\n")
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("tcp", f.addr, time.Second); err == nil {
			c.SetDeadline(time.Now().Add(5 * time.Second))
			st, _, err := fleetRoundTrip(c, bufio.NewReaderSize(c, 1024), req)
			c.Close()
			if err == nil && st == http.StatusOK {
				return time.Since(start), nil
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	return 0, errors.New("fleet: issuer not serving after 60s (see its log)")
}

func (f *fleet) stopIssuer() {
	if f.issuer == nil || f.issuer.Process == nil {
		return
	}
	f.issuer.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { f.issuer.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		f.issuer.Process.Kill()
		<-done
	}
	f.issuer = nil
	f.logFile.Close()
}

// dial connects from machine i's loopback source address. The timeout
// outlasts SYN retransmits (1 s, 3 s, 7 s), as an agent's client would:
// a full accept queue in a storm is then latency, not an error.
func (f *fleet) dial(i int) (net.Conn, error) {
	d := net.Dialer{Timeout: 30 * time.Second, LocalAddr: &net.TCPAddr{IP: f.sources[i%len(f.sources)]}}
	return d.Dial("tcp", f.addr)
}

// waiter is one simulated agent's metadata watch: a long poll with the
// last ETag, re-sent as soon as it is answered, over one keep-alive
// connection with a 1 KiB read buffer.
func (f *fleet) waiter(ctx context.Context, i int) {
	m := f.machines[i]
	var (
		c      net.Conn
		br     *bufio.Reader
		stop   func() bool
		etag   string
		cp     string
		cpTime time.Time
		polled bool
	)
	defer func() {
		if c != nil {
			stop()
			c.Close()
		}
		if polled {
			f.waiting.Add(-1)
		}
	}()
	for attempt := 0; ctx.Err() == nil && attempt < 1000; attempt++ {
		if c == nil {
			f.dialSem <- struct{}{}
			var err error
			c, err = f.dial(i)
			<-f.dialSem
			if err != nil {
				c = nil
				f.waiterErrs.Add(1)
				sleepCtx(ctx, time.Second)
				continue
			}
			br = bufio.NewReaderSize(c, 1024)
			conn := c
			stop = context.AfterFunc(ctx, func() { conn.Close() })
		}
		if time.Since(cpTime) > 5*time.Minute {
			var err error
			if cp, err = copyFor(m.token, machinetoken.FeatureMetadata); err != nil {
				f.waiterErrs.Add(1)
				return
			}
			cpTime = time.Now()
		}
		req := "GET /v1/machines/self?wait=true&timeout=120s&etag=" + url.QueryEscape(etag) +
			" HTTP/1.1\r\nHost: wicket\r\nAuthorization: " + api.AuthScheme + " " + cp + "\r\n\r\n"
		if etag != "" && !polled {
			polled = true
			f.waiting.Add(1)
		}
		st, tag, err := fleetRoundTrip(c, br, []byte(req))
		if ctx.Err() != nil {
			return
		}
		if err != nil || st != http.StatusOK {
			f.waiterErrs.Add(1)
			stop()
			c.Close()
			c = nil
			sleepCtx(ctx, 100*time.Millisecond)
			continue
		}
		if etag != "" && tag != etag && f.writeAt[i].Load() != 0 {
			f.answerAt[i].CompareAndSwap(0, time.Now().UnixNano())
		}
		etag = tag
	}
}

// fleetRoundTrip writes req and reads one Content-Length framed response,
// returning its status and ETag.
func fleetRoundTrip(c net.Conn, br *bufio.Reader, req []byte) (int, string, error) {
	if _, err := c.Write(req); err != nil {
		return 0, "", err
	}
	line, err := br.ReadSlice('\n')
	if err != nil {
		return 0, "", err
	}
	if len(line) < 12 {
		return 0, "", errors.New("short status line")
	}
	status, _ := strconv.Atoi(string(line[9:12]))
	n, etag := -1, ""
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return 0, "", err
		}
		if len(line) <= 2 {
			break
		}
		k, v, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		v = bytes.TrimSpace(v)
		switch {
		case bytes.EqualFold(k, []byte("Content-Length")):
			n, _ = strconv.Atoi(string(v))
		case bytes.EqualFold(k, []byte("ETag")):
			etag = string(v)
		}
	}
	if n < 0 {
		return 0, "", errors.New("response without Content-Length")
	}
	if _, err := br.Discard(n); err != nil {
		return 0, "", err
	}
	return status, etag, nil
}

// issuerStatus reads the issuer's status document over its admin socket.
func (f *fleet) issuerStatus() (map[string]any, error) {
	// Its connection is closed after: the admin socket caps connections
	// per uid, and lingering idle ones would take the writers' slots.
	c := f.adminClient(1)
	defer c.CloseIdleConnections()
	resp, err := c.Get("http://issuer/v1/status")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var st map[string]any
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

func (f *fleet) adminClient(conns int) *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		MaxIdleConnsPerHost: conns, MaxConnsPerHost: conns,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", f.adminSock)
		},
	}}
}

func (f *fleet) longPolls() int64 {
	st, err := f.issuerStatus()
	if err != nil {
		return -1
	}
	v, _ := st["long_polls"].(float64)
	return int64(v)
}

// cpuTicks is a process's user+system time in clock ticks (USER_HZ, 100
// on Linux).
func cpuTicks(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	fs := strings.Fields(string(b[i+1:]))
	if len(fs) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(fs[11], 10, 64)
	s, _ := strconv.ParseInt(fs[12], 10, 64)
	return u + s
}

// measureHold waits (bounded) for size long polls to be held, then
// measures the issuer's memory and CPU over the hold while the held
// machines refresh their tokens at the configured period.
func (f *fleet) measureHold(ctx context.Context, size int) holdFigure {
	deadline := time.Now().Add(time.Duration(size/100+30) * time.Second)
	for f.waiting.Load() < int64(size) && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	for f.longPolls() < int64(size) && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(time.Second) // settle: the last requests' garbage
	pid := f.issuer.Process.Pid
	errs0 := f.waiterErrs.Load()
	t0, c0 := time.Now(), cpuTicks(pid)
	// Refreshes: size machines every period, over 16 keep-alive
	// connections, each with a fresh copy of the machine's token.
	rate := float64(size) / fleetRefresh.Seconds()
	count := int(rate * fleetHold.Seconds())
	lat, errsR := f.refreshLoad(ctx, size, count, *fleetHold)
	el := time.Since(t0)
	h := holdFigure{Machines: size, LongPolls: f.longPolls(), RSSKiB: rssKiB(pid), AnonKiB: anonKiB(pid),
		CPUPercent:    float64(cpuTicks(pid)-c0) / el.Seconds(), // ticks/s at 100 Hz = % of a core
		Refreshes:     int64(len(lat)),
		RefreshErrors: errsR,
		WaiterErrors:  f.waiterErrs.Load() - errs0, ClientRSSKiB: rssKiB(os.Getpid())}
	h.RefreshP99ms = pct(lat, 0.99)
	return h
}

// refreshLoad sends count token requests paced evenly over d from 16
// keep-alive connections, each for a random machine below size.
func (f *fleet) refreshLoad(ctx context.Context, size, count int, d time.Duration) ([]float64, int64) {
	var mu sync.Mutex
	var lat []float64
	var errs atomic.Int64
	jobs := make(chan int)
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var c net.Conn
			var br *bufio.Reader
			defer func() {
				if c != nil {
					c.Close()
				}
			}()
			for i := range jobs {
				if c == nil {
					var err error
					if c, err = f.dial(w); err != nil {
						errs.Add(1)
						c = nil
						continue
					}
					br = bufio.NewReaderSize(c, 2048)
				}
				req, err := tokenRequest(f.machines[i].token, false)
				if err != nil {
					errs.Add(1)
					continue
				}
				c.SetDeadline(time.Now().Add(30 * time.Second))
				t := time.Now()
				st, _, err := fleetRoundTrip(c, br, req)
				if err != nil || st != http.StatusOK {
					errs.Add(1)
					if err != nil {
						c.Close()
						c = nil
					}
					continue
				}
				mu.Lock()
				lat = append(lat, float64(time.Since(t).Microseconds())/1000)
				mu.Unlock()
			}
		}()
	}
	if count > 0 {
		gap := d / time.Duration(count)
		start := time.Now()
		for k := 0; k < count && ctx.Err() == nil; k++ {
			if w := time.Until(start.Add(time.Duration(k) * gap)); w > 0 {
				time.Sleep(w)
			}
			jobs <- rand.IntN(size)
		}
	}
	if count == 0 {
		sleepCtx(ctx, d)
	}
	close(jobs)
	wg.Wait()
	return lat, errs.Load()
}

// tokenRequest is the bytes of one POST /v1/tokens/oidc with a fresh copy
// of token; closing asks the server to close the connection after it.
func tokenRequest(token string, closing bool) ([]byte, error) {
	cp, err := copyFor(token, machinetoken.FeatureOIDC)
	if err != nil {
		return nil, err
	}
	body := `{"aud":"` + fleetAud + `"}`
	conn := ""
	if closing {
		conn = "Connection: close\r\n"
	}
	return []byte("POST /v1/tokens/oidc HTTP/1.1\r\nHost: wicket\r\nContent-Type: application/json\r\n" + conn +
		"Content-Length: " + strconv.Itoa(len(body)) + "\r\nAuthorization: " + api.AuthScheme + " " + cp + "\r\n\r\n" + body), nil
}

// measureFanout updates every machine of app-0 (the first n) through the
// admin socket, as fast as it takes them, and measures per machine the time
// from its write's send to its waiter's answer.
func (f *fleet) measureFanout(ctx context.Context, n int) fanoutFigure {
	for i := range n {
		f.writeAt[i].Store(0)
		f.answerAt[i].Store(0)
	}
	client := f.adminClient(*fleetWriters)
	defer client.CloseIdleConnections()
	var werrs atomic.Int64
	jobs := make(chan int)
	var wg sync.WaitGroup
	start := time.Now()
	for range *fleetWriters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				body := `{"set_tags":{"fanout":"1"}}`
				req, _ := http.NewRequestWithContext(ctx, "PATCH", "http://issuer/v1/machines/"+f.machines[i].id, strings.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				f.writeAt[i].Store(time.Now().UnixNano())
				resp, err := client.Do(req)
				if err != nil {
					if werrs.Add(1) == 1 {
						fmt.Fprintf(os.Stderr, "fleet: first fan-out write error: %v\n", err)
					}
					continue
				}
				b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK && werrs.Add(1) == 1 {
					fmt.Fprintf(os.Stderr, "fleet: first fan-out write error: %d %s\n", resp.StatusCode, b)
				}
			}
		}()
	}
	for i := range n {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	writesDone := time.Since(start)
	deadline := time.Now().Add(60 * time.Second)
	answered := func() int {
		k := 0
		for i := range n {
			if f.answerAt[i].Load() != 0 {
				k++
			}
		}
		return k
	}
	for answered() < n && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	var lat []float64
	var last int64
	for i := range n {
		a, w := f.answerAt[i].Load(), f.writeAt[i].Load()
		if a == 0 || w == 0 {
			continue
		}
		lat = append(lat, float64(a-w)/1e6)
		last = max(last, a)
	}
	fo := fanoutFigure{Machines: n, WriteErrors: werrs.Load(), Answered: len(lat), WritesPerS: float64(n) / writesDone.Seconds()}
	if last > 0 {
		fo.TotalS = float64(last-start.UnixNano()) / 1e9
	}
	fo.P50ms, fo.P99ms, fo.MaxMs = pct(lat, 0.5), pct(lat, 0.99), pct(lat, 1)
	return fo
}

// prime asks for one token for m (an org's first key is made then).
func (f *fleet) prime(ctx context.Context, m fleetMachine) error {
	req, err := tokenRequest(m.token, true)
	if err != nil {
		return err
	}
	c, err := f.dial(0)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	st, _, err := fleetRoundTrip(c, bufio.NewReaderSize(c, 2048), req)
	if err == nil && st != http.StatusOK {
		err = fmt.Errorf("status %d", st)
	}
	return err
}

// storm has every machine of ms ask for a token once, at a random moment
// of the window, each on a new connection (a fleet-wide restart). The
// requests (with their copies) are built before the window opens.
func (f *fleet) storm(ctx context.Context, alg string, ms []fleetMachine) stormFigure {
	reqs := make([][]byte, len(ms))
	for i, m := range ms {
		var err error
		if reqs[i], err = tokenRequest(m.token, true); err != nil {
			return stormFigure{Alg: alg, Requests: len(ms), Errors: int64(len(ms))}
		}
	}
	lat := make([]float64, len(ms))
	var errs, dialErrs atomic.Int64
	var wg sync.WaitGroup
	start := time.Now().Add(100 * time.Millisecond)
	pid := f.issuer.Process.Pid
	time.Sleep(time.Until(start))
	c0 := cpuTicks(pid)
	var lastEnd atomic.Int64
	for i := range ms {
		at := start.Add(time.Duration(rand.Int64N(int64(*fleetWindow))))
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(time.Until(at))
			t := time.Now()
			lat[i] = -1
			c, err := f.dial(i)
			if err != nil {
				errs.Add(1)
				dialErrs.Add(1)
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(60 * time.Second))
			st, _, err := fleetRoundTrip(c, bufio.NewReaderSize(c, 2048), reqs[i])
			if err != nil || st != http.StatusOK {
				errs.Add(1)
				return
			}
			end := time.Now()
			lat[i] = float64(end.Sub(t).Microseconds()) / 1000
			for {
				l := lastEnd.Load()
				if end.UnixNano() <= l || lastEnd.CompareAndSwap(l, end.UnixNano()) {
					break
				}
			}
		}()
	}
	wg.Wait()
	c1 := cpuTicks(pid)
	ok := slices.DeleteFunc(lat, func(v float64) bool { return v < 0 })
	s := stormFigure{Alg: alg, Requests: len(ms), WindowS: fleetWindow.Seconds(), Errors: errs.Load(), ConnectErrors: dialErrs.Load(), RSSKiB: rssKiB(f.issuer.Process.Pid)}
	if l := lastEnd.Load(); l > 0 {
		s.TotalS = float64(l-start.UnixNano()) / 1e9
		s.TokensPerS = float64(len(ok)) / s.TotalS
		s.IssuerCPUPercent = float64(c1-c0) / s.TotalS
	}
	s.P50ms, s.P99ms, s.MaxMs = pct(ok, 0.5), pct(ok, 0.99), pct(ok, 1)
	return s
}

// pct is the q-quantile of v (sorted in place); 0 for none.
func pct(v []float64, q float64) float64 {
	if len(v) == 0 {
		return 0
	}
	slices.Sort(v)
	return v[min(len(v)-1, int(q*float64(len(v))))]
}

func writeFleetReport(rep *FleetReport, dir string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# wicket fleet — %s, %d CPUs, %s\n\n%s\n\n", rep.Date, rep.CPUs, rep.GoVersion, rep.Options)
	b.WriteString("| machines in long poll | issuer long_polls | issuer RSS | of which anonymous | issuer CPU (% of a core) | token refreshes | refresh p99 ms | errors | simulator RSS |\n|---|---|---|---|---|---|---|---|---|\n")
	for _, h := range rep.Hold {
		fmt.Fprintf(&b, "| %d | %d | %.0f MiB | %.0f MiB | %.1f | %d | %.1f | %d | %.0f MiB |\n", h.Machines, h.LongPolls, float64(h.RSSKiB)/1024,
			float64(h.AnonKiB)/1024, h.CPUPercent, h.Refreshes, h.RefreshP99ms, h.WaiterErrors+h.RefreshErrors, float64(h.ClientRSSKiB)/1024)
	}
	b.WriteString("\n| fan-out: machines updated | answered | write→answer p50 ms | p99 ms | max ms | total s | admin writes/s | write errors |\n|---|---|---|---|---|---|---|---|\n")
	for _, o := range rep.Fanout {
		fmt.Fprintf(&b, "| %d | %d | %.0f | %.0f | %.0f | %.1f | %.0f | %d |\n", o.Machines, o.Answered, o.P50ms, o.P99ms, o.MaxMs, o.TotalS, o.WritesPerS, o.WriteErrors)
	}
	b.WriteString("\n| refresh storm | machines | window s | p50 ms | p99 ms | max ms | total s | tokens/s | issuer CPU % | errors (connect) | issuer RSS |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, s := range rep.Storms {
		fmt.Fprintf(&b, "| %s | %d | %.0f | %.0f | %.0f | %.0f | %.1f | %.0f | %.0f | %d (%d) | %.0f MiB |\n", s.Alg, s.Requests, s.WindowS, s.P50ms, s.P99ms, s.MaxMs, s.TotalS, s.TokensPerS, s.IssuerCPUPercent, s.Errors, s.ConnectErrors, float64(s.RSSKiB)/1024)
	}
	b.WriteString("\n| cold start: machines registered | exec → first authenticated answer | RSS then |\n|---|---|---|\n")
	for _, c := range rep.ColdStart {
		fmt.Fprintf(&b, "| %d | %.0f ms | %.0f MiB |\n", c.Registered, c.ServeMs, float64(c.RSSKiB)/1024)
	}
	b.WriteString("\n")
	for _, n := range rep.Notes {
		b.WriteString("- " + n + "\n")
	}
	fmt.Print(b.String())
	if dir == "" {
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	j, _ := json.MarshalIndent(rep, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, "fleet.json"), j, 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "fleet.md"), []byte(b.String()), 0o644)
}
