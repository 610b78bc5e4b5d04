package main

// The fleet simulator: many lightweight simulated agents against one real
// `wicket issuer` process on bbolt, or with -fleet-cluster against three
// replicas on one etcd member (a process of its own), speaking its public
// API as agents do (one
// metadata long poll each, token refreshes with per-request copies of a real
// machine token), measuring what a fleet does to the issuer:
//
//   - machines held in long poll vs the issuer's RSS and CPU;
//   - fan-out: every machine of one app updated through the admin socket,
//     per machine the time from its write to its waiter's answer;
//   - a refresh storm: every machine of the storm asks for a new token
//     within a few seconds (a fleet-wide restart);
//   - cold start of the issuer (in cluster mode, of one replica) with every
//     machine registered.
//
// In cluster mode machine i talks to replica i mod 3 and the fan-out's
// admin writes go through every replica's admin socket, so most waiters
// are woken through etcd's watch; figures are reported per replica, in
// total, and for the etcd process.
//
// It is a benchmark, not a test: nothing asserts a time. Every loop is
// bounded in count and time; only loopback TCP and Unix sockets are used.
//
//	go run ./bench -fleet                                   # small, a few minutes
//	go run ./bench -fleet -fleet-sizes 1000,10000,50000 -fleet-fanout 10000 -fleet-storm 10000
//	go run ./bench -fleet -fleet-cluster                    # the same against three replicas on etcd
//	go run ./bench -fleet -fleet-baseline main              # storms also against the issuer built from main

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
	fleetCluster = flag.Bool("fleet-cluster", false, "run three issuer replicas on one etcd member (a helper process) instead of one issuer on bbolt")
	fleetReps    = flag.Int("fleet-replicas", 3, "issuer replicas in cluster mode")
	fleetBase    = flag.String("fleet-baseline", "", "git revision: also run each storm against the issuer built from it (A/B in one run)")
	fleetProcs   = flag.Int("fleet-agent-procs", 0, "hold the long polls from this many child processes (each under its own RLIMIT_NOFILE) instead of this one; 0: in this process")
	fleetProfile = flag.String("fleet-profile", "", "build the issuer with the bench-only pprof socket and write a CPU profile of replica 0 under the first RS256 and ES256 storms to this directory")
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
	Mode      string         `json:"mode"`      // "bbolt" or "etcd, N replicas"
	Somaxconn int            `json:"somaxconn"` // the accept queue cap in use
	Reads     []readFigure   `json:"machine_reads,omitempty"`
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
	// Cluster mode: each replica's share (the fields above are totals)
	// and the etcd process.
	Replicas       []replicaFigure `json:"replicas,omitempty"`
	EtcdRSSKiB     int64           `json:"etcd_rss_kib,omitempty"`
	EtcdCPUPercent float64         `json:"etcd_cpu_percent,omitempty"`
}

// replicaFigure is one replica's part of a hold.
type replicaFigure struct {
	Replica    int     `json:"replica"`
	LongPolls  int64   `json:"long_polls"`
	RSSKiB     int64   `json:"rss_kib"`
	CPUPercent float64 `json:"cpu_percent"`
}

// latFigure is one replica's part of a fan-out or storm: latencies of the
// machines that talk to it, and its CPU.
type latFigure struct {
	Replica    int     `json:"replica"`
	Answered   int     `json:"answered"`
	P50ms      float64 `json:"p50_ms"`
	P99ms      float64 `json:"p99_ms"`
	MaxMs      float64 `json:"max_ms"`
	CPUPercent float64 `json:"cpu_percent"`
}

// readFigure is where one replica's store answered its machine reads
// (status state.machine_reads: the etcd store's mirror, or etcd).
type readFigure struct {
	Replica int    `json:"replica"`
	Mirror  uint64 `json:"mirror"`
	Backend uint64 `json:"backend"`
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
	// Cluster mode: by the waiter's replica, and the etcd process's CPU.
	PerReplica     []latFigure `json:"per_replica,omitempty"`
	EtcdCPUPercent float64     `json:"etcd_cpu_percent,omitempty"`
}

type stormFigure struct {
	Alg string `json:"alg"`
	// Binary is "current", "baseline <rev>" with -fleet-baseline, or
	// "warm-up" (the first storm of an A/B series, not compared).
	Binary   string  `json:"binary"`
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
	// Cluster mode: by replica, and the etcd process's CPU.
	PerReplica     []latFigure `json:"per_replica,omitempty"`
	EtcdCPUPercent float64     `json:"etcd_cpu_percent,omitempty"`
}

type coldFigure struct {
	// What was started: the issuer, or one replica while the others run.
	What       string  `json:"what"`
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
	baseBin   string // the -fleet-baseline build, "" without
	reps      []*replica
	etcd      *exec.Cmd // cluster mode: the etcd member's process
	etcdURL   string
	agents    []*agentProc // -fleet-agent-procs: the waiters' processes
	sources   []net.IP
	machines  []fleetMachine // org fleet, app-N
	esMachine []fleetMachine // org fleet-es

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
	if *fleetFanout > n || *fleetStorm > n || *fleetSources < 1 || *fleetSources > 250 || *fleetReps < 1 || *fleetReps > 9 {
		return fmt.Errorf("fleet: fanout (%d) and storm (%d) must be <= the largest size (%d); sources 1..250; replicas 1..9", *fleetFanout, *fleetStorm, n)
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
	f := &fleet{work: work, bin: filepath.Join(work, "wicket"), dialSem: make(chan struct{}, 64)}
	nrep := 1
	if *fleetCluster {
		nrep = *fleetReps
	}
	for i := range nrep {
		addr, err := freePort()
		if err != nil {
			return err
		}
		f.reps = append(f.reps, &replica{i: i, addr: addr,
			adminSock: filepath.Join(work, fmt.Sprintf("admin-%d.sock", i)), cfgPath: filepath.Join(work, fmt.Sprintf("issuer-%d.toml", i))})
	}
	for i := range *fleetSources {
		f.sources = append(f.sources, net.IPv4(127, 0, 0, byte(1+i)))
	}
	if err := f.build(); err != nil {
		return err
	}
	mode := "bbolt, one issuer"
	if *fleetCluster {
		mode = fmt.Sprintf("etcd (one member, its own process), %d issuer replicas", nrep)
		if f.etcd, f.etcdURL, err = startEtcd(filepath.Join(work, "etcd")); err != nil {
			return err
		}
		defer stopProcess(f.etcd)
	}
	rep := &FleetReport{Date: time.Now().UTC().Format(time.RFC3339), CPUs: runtime.NumCPU(), GoVersion: runtime.Version(),
		Mode: mode, Somaxconn: somaxconn(),
		Options: fmt.Sprintf("sizes=%v fanout=%d storm=%d window=%s hold=%s refresh=%s sources=%d writers=%d cluster=%v replicas=%d baseline=%q",
			sizes, *fleetFanout, *fleetStorm, *fleetWindow, *fleetHold, *fleetRefresh, *fleetSources, *fleetWriters, *fleetCluster, nrep, *fleetBase)}
	fmt.Fprintf(os.Stderr, "fleet: %s; net.core.somaxconn %d\n", mode, rep.Somaxconn)
	start := time.Now()
	if err := f.register(ctx, n, *fleetStorm); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "registered %d machines with tokens in %s\n", n+*fleetStorm, time.Since(start).Round(time.Millisecond))
	f.writeAt, f.answerAt = make([]atomic.Int64, n), make([]atomic.Int64, n)

	if err := f.startAll(ctx, f.bin, "RS256"); err != nil {
		return err
	}
	defer f.stopAll()
	waitCtx, cancelWaiters := context.WithCancel(ctx)
	defer cancelWaiters()
	var wg sync.WaitGroup
	if *fleetProcs > 1 {
		if err := f.startAgents(*fleetProcs); err != nil {
			return err
		}
		defer f.stopAgents()
	}
	held := 0
	for _, size := range sizes {
		if f.agents != nil {
			if _, err := f.agentsCall("hold " + strconv.Itoa(size)); err != nil {
				return err
			}
			held = size
		}
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
	rep.Reads = f.machineReads()
	// A fleet-wide restart closes the agents' long polls too; it also
	// keeps both processes under RLIMIT_NOFILE with the storm's
	// connections.
	cancelWaiters()
	wg.Wait()
	f.stopAgents()
	storm := func(alg, binary string, ms []fleetMachine, profile bool) {
		st := f.storm(ctx, alg, ms, profile)
		st.Binary = binary
		rep.Storms = append(rep.Storms, st)
		fmt.Fprintf(os.Stderr, "storm %s (%s) %d: p50 %.0f ms p99 %.0f ms, errors %d, %.0f tokens/s, issuer CPU %.0f%%\n",
			st.Alg, binary, st.Requests, st.P50ms, st.P99ms, st.Errors, st.TokensPerS, st.IssuerCPUPercent)
	}
	// restartAll runs every replica from bin: A/B storms on one state.
	restartAll := func(bin, alg string) error {
		f.stopAll()
		return f.startAll(ctx, bin, alg)
	}
	baseName := "baseline " + *fleetBase
	if f.baseBin != "" {
		// Every storm of an A/B series starts on freshly started replicas,
		// after one warm-up storm (recorded as such): the first storm of a
		// run is slower whatever the binary (the simulator's own first
		// burst of connections and goroutines).
		storm("RS256", "warm-up", f.machines[:*fleetStorm], false)
		if err := restartAll(f.bin, "RS256"); err != nil {
			return err
		}
	}
	storm("RS256", "current", f.machines[:*fleetStorm], *fleetProfile != "")
	if f.baseBin != "" {
		if err := restartAll(f.baseBin, "RS256"); err != nil {
			return err
		}
		storm("RS256", baseName, f.machines[:*fleetStorm], false)
		if err := restartAll(f.bin, "RS256"); err != nil {
			return err
		}
		storm("RS256", "current", f.machines[:*fleetStorm], false)
	}

	// Cold start on the same state, every machine registered: the issuer
	// (bbolt), or one replica while the others serve (etcd).
	what := "the issuer"
	if *fleetCluster {
		what = "replica 0, the others serving"
		f.stopReplica(f.reps[0])
	} else {
		f.stopAll()
	}
	d, err := f.startReplica(ctx, f.reps[0], f.bin, "ES256")
	if err != nil {
		return err
	}
	rep.ColdStart = append(rep.ColdStart, coldFigure{What: what, Registered: n + *fleetStorm, ServeMs: float64(d.Microseconds()) / 1000, RSSKiB: rssKiB(f.reps[0].pid())})
	fmt.Fprintf(os.Stderr, "cold start of %s with %d machines: %s\n", what, n+*fleetStorm, d.Round(time.Millisecond))
	if err := f.prime(ctx, f.esMachine[0]); err != nil {
		return fmt.Errorf("fleet: first ES256 token: %w", err)
	}
	storm("ES256", "current", f.esMachine, *fleetProfile != "")
	if f.baseBin != "" {
		if err := restartAll(f.baseBin, "ES256"); err != nil {
			return err
		}
		storm("ES256", baseName, f.esMachine, false)
		if err := restartAll(f.bin, "ES256"); err != nil {
			return err
		}
		storm("ES256", "current", f.esMachine, false)
	}
	f.stopAll()

	if *fleetCluster {
		rep.Notes = append(rep.Notes,
			fmt.Sprintf("%d issuer replicas on one etcd member (embedded in a helper process, data on tmpfs when /dev/shm exists); machine i talks to replica i mod %d; fan-out writes go through every replica's admin socket.", nrep, nrep))
	} else {
		rep.Notes = append(rep.Notes, "One issuer process (bbolt on tmpfs when /dev/shm exists).")
	}
	rep.Notes = append(rep.Notes,
		"The simulated agents share the machine's cores with the issuer (and etcd).",
		fmt.Sprintf("Agents connect from %d loopback source addresses; every long poll and token request carries its own copy of a real machine token.", len(f.sources)),
		"Fan-out latency is from the admin request's send to the waiter's answer, so it includes the write itself.",
		fmt.Sprintf("net.core.somaxconn was %d (the accept queue cap of every listener).", rep.Somaxconn))
	return writeFleetReport(rep, out)
}

// build compiles the issuer (with the bench pprof socket for
// -fleet-profile) and, for -fleet-baseline, the issuer of that revision
// from a `git archive` of it.
func (f *fleet) build() error {
	args := []string{"build"}
	if *fleetProfile != "" {
		args = append(args, "-tags", "wicketbench")
	}
	fmt.Fprintln(os.Stderr, "building wicket…")
	if out, err := exec.Command("go", append(args, "-o", f.bin, "./cmd/wicket")...).CombinedOutput(); err != nil {
		return fmt.Errorf("build: %v\n%s", err, out)
	}
	if *fleetBase == "" {
		return nil
	}
	src := filepath.Join(f.work, "baseline-src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "building wicket at %s…\n", *fleetBase)
	archive := exec.Command("sh", "-c", `git archive "$1" | tar -x -C "$2"`, "sh", *fleetBase, src)
	if out, err := archive.CombinedOutput(); err != nil {
		return fmt.Errorf("baseline %s: %v\n%s", *fleetBase, err, out)
	}
	f.baseBin = filepath.Join(f.work, "wicket-baseline")
	c := exec.Command("go", append(args, "-o", f.baseBin, "./cmd/wicket")...)
	c.Dir = src
	if out, err := c.CombinedOutput(); err != nil {
		return fmt.Errorf("baseline build: %v\n%s", err, out)
	}
	return nil
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
// admin requests). An org's first signing key is made with its first
// machine under the issuer's alg, so each org is registered by an issuer
// of its own alg: fleet's keys are RS256, fleet-es's ES256.
func (f *fleet) register(ctx context.Context, n, es int) error {
	f.machines, f.esMachine = make([]fleetMachine, n), make([]fleetMachine, es)
	if err := f.registerRange(ctx, "RS256", 0, n); err != nil {
		return err
	}
	return f.registerRange(ctx, "ES256", n, n+es)
}

// registerRange registers machines from..to-1 of register's numbering
// through an in-process issuer with alg.
func (f *fleet) registerRange(ctx context.Context, alg string, from, to int) error {
	n := len(f.machines)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	ov := []config.IssuerOverride{func(c *config.Issuer) {
		c.State.Dir, c.Admin.Path = filepath.Join(f.work, "state"), filepath.Join(f.work, "setup.sock")
		if f.etcdURL != "" {
			c.State.Backend, c.State.Endpoints, c.State.SealKeyFile = "etcd", []string{f.etcdURL}, f.sealKeyFile()
		}
		c.Server.Listen, c.Server.PublicURL = ln.Addr().String(), f.publicURL()
		c.OIDC.Alg = alg
		c.Log.Level = "error"
	}}
	r, err := issuer.Start(ctx, issuer.StartOptions{Init: true, Options: issuer.Options{Overrides: ov, Listener: ln, Logger: slog.New(slog.DiscardHandler)}})
	if err != nil {
		return err
	}
	defer r.Stop()
	jobs := make(chan int)
	errc := make(chan error, 4)
	var wg sync.WaitGroup
	workers := 4
	if f.etcdURL != "" {
		workers = 32 // each create is a round trip to etcd
	}
	for range workers {
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
	for i := from; i < to; i++ {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	select {
	case err := <-errc:
		return fmt.Errorf("fleet: registering: %w", err)
	default:
	}
	// One token, so the org's key is in use before the replicas start.
	if from >= to {
		return nil
	}
	first := f.machines[min(from, n-1)]
	if from >= n {
		first = f.esMachine[from-n]
	}
	h := r.PublicHandler()
	cp, err := copyFor(first.token, machinetoken.FeatureOIDC)
	if err != nil {
		return err
	}
	req, _ := http.NewRequest("POST", "/v1/tokens/oidc", strings.NewReader(`{"aud":"`+fleetAud+`"}`))
	req.RemoteAddr = "127.0.0.1:1"
	req.Header.Set("Authorization", api.AuthScheme+" "+cp)
	w := &nullWriter{h: http.Header{}}
	h.ServeHTTP(w, req)
	if w.status != 0 && w.status != http.StatusOK {
		return fmt.Errorf("fleet: first %s token: status %d", alg, w.status)
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

// replica is one `wicket issuer` process the simulator drives.
type replica struct {
	i                        int
	addr, adminSock, cfgPath string // addr: its public host:port
	cmd                      *exec.Cmd
	logFile                  *os.File
}

func (r *replica) pid() int { return r.cmd.Process.Pid }

// pprofSock is replica r's bench pprof socket (-fleet-profile).
func (f *fleet) pprofSock(r *replica) string {
	return filepath.Join(f.work, fmt.Sprintf("pprof-%d.sock", r.i))
}

// publicURL is every replica's server.public_url: one issuer URL, as
// behind a load balancer.
func (f *fleet) publicURL() string { return "http://" + f.reps[0].addr }

func (f *fleet) sealKeyFile() string { return filepath.Join(f.work, "seal.key") }

// startAll starts every replica from bin.
func (f *fleet) startAll(ctx context.Context, bin, alg string) error {
	for _, r := range f.reps {
		if _, err := f.startReplica(ctx, r, bin, alg); err != nil {
			return err
		}
	}
	return nil
}

func (f *fleet) stopAll() {
	for _, r := range f.reps {
		f.stopReplica(r)
	}
}

// startReplica runs `wicket issuer` (bin) as replica r with alg and
// returns the time from exec to its first authenticated answer.
func (f *fleet) startReplica(ctx context.Context, r *replica, bin, alg string) (time.Duration, error) {
	state := fmt.Sprintf("dir = %q\n", filepath.Join(f.work, "state"))
	if f.etcdURL != "" {
		state = fmt.Sprintf("backend = \"etcd\"\nendpoints = [%q]\nseal_key_file = %q\n", f.etcdURL, f.sealKeyFile())
	}
	cfg := fmt.Sprintf(`[server]
public_url = %q
listen = %q
[admin]
socket_path = %q
[state]
%s[oidc]
alg = %q
[log]
level = "info"
`, f.publicURL(), r.addr, r.adminSock, state, alg)
	if err := os.WriteFile(r.cfgPath, []byte(cfg), 0o600); err != nil {
		return 0, err
	}
	lf, err := os.OpenFile(filepath.Join(f.work, fmt.Sprintf("issuer-%d.log", r.i)), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return 0, err
	}
	r.logFile = lf
	start := time.Now()
	r.cmd = exec.Command(bin, "issuer", "--config", r.cfgPath)
	r.cmd.Stderr = lf
	if *fleetProfile != "" {
		r.cmd.Env = append(os.Environ(), benchPprofEnv+"="+f.pprofSock(r))
	}
	if err := r.cmd.Start(); err != nil {
		return 0, err
	}
	probe := f.machines[r.i%len(f.machines)]
	cp, err := copyFor(probe.token, machinetoken.FeatureMetadata)
	if err != nil {
		return 0, err
	}
	req := []byte("GET /v1/machines/self HTTP/1.1\r\nHost: wicket\r\nAuthorization: " + api.AuthScheme + " " + cp + "\r\n\r\n")
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if c, err := net.DialTimeout("tcp", r.addr, time.Second); err == nil {
			c.SetDeadline(time.Now().Add(5 * time.Second))
			st, _, err := fleetRoundTrip(c, bufio.NewReaderSize(c, 1024), req)
			c.Close()
			if err == nil && st == http.StatusOK {
				return time.Since(start), nil
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	return 0, fmt.Errorf("fleet: replica %d not serving after 60s (see its log)", r.i)
}

func (f *fleet) stopReplica(r *replica) {
	if r.cmd == nil {
		return
	}
	stopProcess(r.cmd)
	r.cmd = nil
	r.logFile.Close()
}

// replicaOf is the replica machine (or connection) i talks to.
func (f *fleet) replicaOf(i int) *replica { return f.reps[i%len(f.reps)] }

// dial connects from machine i's loopback source address to its replica.
// The timeout outlasts SYN retransmits (1 s, 3 s, 7 s), as an agent's
// client would: a full accept queue in a storm is then latency, not an
// error.
func (f *fleet) dial(i int) (net.Conn, error) {
	d := net.Dialer{Timeout: 30 * time.Second, LocalAddr: &net.TCPAddr{IP: f.sources[i%len(f.sources)]}}
	return d.Dial("tcp", f.replicaOf(i).addr)
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

// issuerStatus reads replica r's status document over its admin socket.
func (f *fleet) issuerStatus(r *replica) (map[string]any, error) {
	// Its connection is closed after: the admin socket caps connections
	// per uid, and lingering idle ones would take the writers' slots.
	c := f.adminClient(r, 1)
	defer c.CloseIdleConnections()
	resp, err := c.Get("http://issuer/v1/status")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var st map[string]any
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

func (f *fleet) adminClient(r *replica, conns int) *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		MaxIdleConnsPerHost: conns, MaxConnsPerHost: conns,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", r.adminSock)
		},
	}}
}

// longPolls is the sum of the replicas' long_polls gauges, and each one.
func (f *fleet) longPolls() (int64, []int64) {
	var sum int64
	each := make([]int64, len(f.reps))
	for i, r := range f.reps {
		st, err := f.issuerStatus(r)
		if err != nil {
			return -1, each
		}
		v, _ := st["long_polls"].(float64)
		each[i] = int64(v)
		sum += each[i]
	}
	return sum, each
}

// machineReads is where each replica's store answered its machine reads
// so far; nil for a store that does not count them (bbolt).
func (f *fleet) machineReads() []readFigure {
	var out []readFigure
	for _, r := range f.reps {
		st, err := f.issuerStatus(r)
		if err != nil {
			continue
		}
		state, _ := st["state"].(map[string]any)
		mr, ok := state["machine_reads"].(map[string]any)
		if !ok {
			continue
		}
		m, _ := mr["mirror"].(float64)
		b, _ := mr["backend"].(float64)
		out = append(out, readFigure{Replica: r.i, Mirror: uint64(m), Backend: uint64(b)})
	}
	return out
}

// cpuAll is every replica's CPU ticks so far, and the etcd process's.
func (f *fleet) cpuAll() ([]int64, int64) {
	each := make([]int64, len(f.reps))
	for i, r := range f.reps {
		each[i] = cpuTicks(r.pid())
	}
	var e int64
	if f.etcd != nil {
		e = cpuTicks(f.etcd.Process.Pid)
	}
	return each, e
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

// waitingTotal is how many waiters have a long poll sent, here and in the
// agent processes.
func (f *fleet) waitingTotal() int64 {
	w := f.waiting.Load()
	if f.agents != nil {
		r, _ := f.agentsCall("status")
		w += r.Waiting
	}
	return w
}

func (f *fleet) waiterErrsTotal() int64 {
	e := f.waiterErrs.Load()
	if f.agents != nil {
		r, _ := f.agentsCall("status")
		e += r.Errors
	}
	return e
}

// measureHold waits (bounded) for size long polls to be held, then
// measures the issuer's memory and CPU over the hold while the held
// machines refresh their tokens at the configured period.
func (f *fleet) measureHold(ctx context.Context, size int) holdFigure {
	deadline := time.Now().Add(time.Duration(size/100+30) * time.Second)
	for f.waitingTotal() < int64(size) && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	for lp, _ := f.longPolls(); lp < int64(size) && time.Now().Before(deadline); lp, _ = f.longPolls() {
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(time.Second) // settle: the last requests' garbage
	errs0 := f.waiterErrsTotal()
	t0 := time.Now()
	c0, e0 := f.cpuAll()
	// Refreshes: size machines every period, over 16 keep-alive
	// connections, each with a fresh copy of the machine's token.
	rate := float64(size) / fleetRefresh.Seconds()
	count := int(rate * fleetHold.Seconds())
	lat, errsR := f.refreshLoad(ctx, size, count, *fleetHold)
	el := time.Since(t0)
	c1, e1 := f.cpuAll()
	lp, each := f.longPolls()
	h := holdFigure{Machines: size, LongPolls: lp,
		Refreshes:     int64(len(lat)),
		RefreshErrors: errsR,
		WaiterErrors:  f.waiterErrsTotal() - errs0, ClientRSSKiB: rssKiB(os.Getpid())}
	if f.agents != nil {
		r, _ := f.agentsCall("status")
		h.ClientRSSKiB += r.RSSKiB
	}
	for i, r := range f.reps {
		rf := replicaFigure{Replica: r.i, LongPolls: each[i], RSSKiB: rssKiB(r.pid()),
			CPUPercent: float64(c1[i]-c0[i]) / el.Seconds()} // ticks/s at 100 Hz = % of a core
		h.RSSKiB += rf.RSSKiB
		h.AnonKiB += anonKiB(r.pid())
		h.CPUPercent += rf.CPUPercent
		h.Replicas = append(h.Replicas, rf)
	}
	if f.etcd != nil {
		h.EtcdRSSKiB, h.EtcdCPUPercent = rssKiB(f.etcd.Process.Pid), float64(e1-e0)/el.Seconds()
	} else {
		h.Replicas = nil
	}
	h.RefreshP99ms = pct(lat, 0.99)
	return h
}

// byReplica splits per-machine latencies (index i: machine i, < 0: none)
// by the replica each machine talks to.
func (f *fleet) byReplica(lat []float64, c0, c1 []int64, el time.Duration) []latFigure {
	if len(f.reps) < 2 {
		return nil
	}
	parts := make([][]float64, len(f.reps))
	for i, v := range lat {
		if v >= 0 {
			k := i % len(f.reps)
			parts[k] = append(parts[k], v)
		}
	}
	out := make([]latFigure, len(f.reps))
	for k, p := range parts {
		out[k] = latFigure{Replica: k, Answered: len(p), P50ms: pct(p, 0.5), P99ms: pct(p, 0.99), MaxMs: pct(p, 1)}
		if el > 0 {
			out[k].CPUPercent = float64(c1[k]-c0[k]) / el.Seconds()
		}
	}
	return out
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
	if f.agents != nil {
		if _, err := f.agentsCall("arm"); err != nil {
			fmt.Fprintf(os.Stderr, "fleet: arming the agents: %v\n", err)
		}
	}
	// The writers spread over the replicas' admin sockets: in cluster
	// mode most waiters hear of their write through etcd's watch.
	clients := make([]*http.Client, len(f.reps))
	for k, r := range f.reps {
		clients[k] = f.adminClient(r, max(1, (*fleetWriters+len(f.reps)-1)/len(f.reps)))
		defer clients[k].CloseIdleConnections()
	}
	var werrs atomic.Int64
	jobs := make(chan int)
	var wg sync.WaitGroup
	start := time.Now()
	c0, e0 := f.cpuAll()
	for w := range *fleetWriters {
		client := clients[w%len(clients)]
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
		if f.agents != nil {
			r, _ := f.agentsCall("status")
			return r.Answered
		}
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
	if f.agents != nil {
		r, _ := f.agentsCall("report")
		for i, a := range r.Answers {
			if i < n {
				f.answerAt[i].Store(a)
			}
		}
	}
	var lat []float64
	byMachine := make([]float64, n)
	var last int64
	for i := range n {
		a, w := f.answerAt[i].Load(), f.writeAt[i].Load()
		byMachine[i] = -1
		if a == 0 || w == 0 {
			continue
		}
		byMachine[i] = float64(a-w) / 1e6
		lat = append(lat, byMachine[i])
		last = max(last, a)
	}
	fo := fanoutFigure{Machines: n, WriteErrors: werrs.Load(), Answered: len(lat), WritesPerS: float64(n) / writesDone.Seconds()}
	if last > 0 {
		fo.TotalS = float64(last-start.UnixNano()) / 1e9
	}
	c1, e1 := f.cpuAll()
	el := time.Since(start)
	fo.PerReplica = f.byReplica(byMachine, c0, c1, el)
	if f.etcd != nil {
		fo.EtcdCPUPercent = float64(e1-e0) / el.Seconds()
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
func (f *fleet) storm(ctx context.Context, alg string, ms []fleetMachine, profile bool) stormFigure {
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
	var prof chan error
	if profile {
		prof = make(chan error, 1)
		go func() { prof <- f.profileStorm(alg, start) }()
	}
	time.Sleep(time.Until(start))
	c0, e0 := f.cpuAll()
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
	c1, e1 := f.cpuAll()
	s := stormFigure{Alg: alg, Requests: len(ms), WindowS: fleetWindow.Seconds(), Errors: errs.Load(), ConnectErrors: dialErrs.Load()}
	for _, r := range f.reps {
		s.RSSKiB += rssKiB(r.pid())
	}
	var el time.Duration
	if l := lastEnd.Load(); l > 0 {
		el = time.Duration(l - start.UnixNano())
	}
	s.PerReplica = f.byReplica(lat, c0, c1, el)
	ok := slices.DeleteFunc(lat, func(v float64) bool { return v < 0 })
	if el > 0 {
		s.TotalS = el.Seconds()
		s.TokensPerS = float64(len(ok)) / s.TotalS
		for k := range c0 {
			s.IssuerCPUPercent += float64(c1[k]-c0[k]) / s.TotalS
		}
		if f.etcd != nil {
			s.EtcdCPUPercent = float64(e1-e0) / s.TotalS
		}
	}
	if prof != nil {
		if err := <-prof; err != nil {
			fmt.Fprintf(os.Stderr, "fleet: storm profile: %v\n", err)
		}
	}
	s.P50ms, s.P99ms, s.MaxMs = pct(ok, 0.5), pct(ok, 0.99), pct(ok, 1)
	return s
}

// profileStorm takes a CPU profile of replica 0 from start over the storm
// window and a few seconds after (the storm outlasts its window), and
// writes it with its top functions to -fleet-profile.
func (f *fleet) profileStorm(alg string, start time.Time) error {
	if err := os.MkdirAll(*fleetProfile, 0o755); err != nil {
		return err
	}
	sock := f.pprofSock(f.reps[0])
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	time.Sleep(time.Until(start))
	secs := int(fleetWindow.Seconds()) + 5
	resp, err := hc.Get(fmt.Sprintf("http://pprof/debug/pprof/profile?seconds=%d", secs))
	if err != nil {
		return err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return err
	}
	name := filepath.Join(*fleetProfile, "issuer-storm-"+alg+".pprof")
	if err := os.WriteFile(name, b, 0o644); err != nil {
		return err
	}
	top, _ := exec.Command("go", "tool", "pprof", "-top", "-nodecount=50", name).CombinedOutput()
	os.WriteFile(strings.TrimSuffix(name, ".pprof")+".top.txt", top, 0o644)
	cum, _ := exec.Command("go", "tool", "pprof", "-top", "-cum", "-nodecount=60", name).CombinedOutput()
	os.WriteFile(strings.TrimSuffix(name, ".pprof")+".cum.txt", cum, 0o644)
	fmt.Fprintf(os.Stderr, "profile of replica 0 under the %s storm: %s\n", alg, name)
	return nil
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
	fmt.Fprintf(&b, "# wicket fleet — %s, %d CPUs, %s\n\n%s; net.core.somaxconn %d\n\n%s\n\n", rep.Date, rep.CPUs, rep.GoVersion, rep.Mode, rep.Somaxconn, rep.Options)
	b.WriteString("| machines in long poll | issuer long_polls | issuer RSS | of which anonymous | issuer CPU (% of a core) | token refreshes | refresh p99 ms | errors | simulator RSS |\n|---|---|---|---|---|---|---|---|---|\n")
	for _, h := range rep.Hold {
		fmt.Fprintf(&b, "| %d | %d | %.0f MiB | %.0f MiB | %.1f | %d | %.1f | %d | %.0f MiB |\n", h.Machines, h.LongPolls, float64(h.RSSKiB)/1024,
			float64(h.AnonKiB)/1024, h.CPUPercent, h.Refreshes, h.RefreshP99ms, h.WaiterErrors+h.RefreshErrors, float64(h.ClientRSSKiB)/1024)
	}
	if len(rep.Hold) > 0 && len(rep.Hold[0].Replicas) > 0 {
		b.WriteString("\n| machines in long poll | replica | long_polls | RSS | CPU % |\n|---|---|---|---|---|\n")
		for _, h := range rep.Hold {
			for _, r := range h.Replicas {
				fmt.Fprintf(&b, "| %d | %d | %d | %.0f MiB | %.1f |\n", h.Machines, r.Replica, r.LongPolls, float64(r.RSSKiB)/1024, r.CPUPercent)
			}
			fmt.Fprintf(&b, "| %d | etcd | | %.0f MiB | %.1f |\n", h.Machines, float64(h.EtcdRSSKiB)/1024, h.EtcdCPUPercent)
		}
	}
	b.WriteString("\n| fan-out: machines updated | answered | write→answer p50 ms | p99 ms | max ms | total s | admin writes/s | write errors |\n|---|---|---|---|---|---|---|---|\n")
	for _, o := range rep.Fanout {
		fmt.Fprintf(&b, "| %d | %d | %.0f | %.0f | %.0f | %.1f | %.0f | %d |\n", o.Machines, o.Answered, o.P50ms, o.P99ms, o.MaxMs, o.TotalS, o.WritesPerS, o.WriteErrors)
	}
	writeParts := func(title string, parts []latFigure, etcdCPU float64) {
		if len(parts) == 0 {
			return
		}
		fmt.Fprintf(&b, "\n| %s: replica | answered | p50 ms | p99 ms | max ms | CPU %% |\n|---|---|---|---|---|---|\n", title)
		for _, p := range parts {
			fmt.Fprintf(&b, "| %d | %d | %.0f | %.0f | %.0f | %.0f |\n", p.Replica, p.Answered, p.P50ms, p.P99ms, p.MaxMs, p.CPUPercent)
		}
		fmt.Fprintf(&b, "| etcd | | | | | %.0f |\n", etcdCPU)
	}
	for _, o := range rep.Fanout {
		writeParts(fmt.Sprintf("fan-out %d", o.Machines), o.PerReplica, o.EtcdCPUPercent)
	}
	b.WriteString("\n| refresh storm | binary | machines | window s | p50 ms | p99 ms | max ms | total s | tokens/s | issuer CPU % | errors (connect) | issuer RSS |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, s := range rep.Storms {
		fmt.Fprintf(&b, "| %s | %s | %d | %.0f | %.0f | %.0f | %.0f | %.1f | %.0f | %.0f | %d (%d) | %.0f MiB |\n", s.Alg, s.Binary, s.Requests, s.WindowS, s.P50ms, s.P99ms, s.MaxMs, s.TotalS, s.TokensPerS, s.IssuerCPUPercent, s.Errors, s.ConnectErrors, float64(s.RSSKiB)/1024)
	}
	for _, s := range rep.Storms {
		writeParts(fmt.Sprintf("storm %s (%s)", s.Alg, s.Binary), s.PerReplica, s.EtcdCPUPercent)
	}
	b.WriteString("\n| cold start | machines registered | exec → first authenticated answer | RSS then |\n|---|---|---|---|\n")
	for _, c := range rep.ColdStart {
		fmt.Fprintf(&b, "| %s | %d | %.0f ms | %.0f MiB |\n", c.What, c.Registered, c.ServeMs, float64(c.RSSKiB)/1024)
	}
	if len(rep.Reads) > 0 {
		b.WriteString("\n| machine reads until the fan-out's end: replica | from the mirror | from etcd |\n|---|---|---|\n")
		for _, r := range rep.Reads {
			fmt.Fprintf(&b, "| %d | %d | %d |\n", r.Replica, r.Mirror, r.Backend)
		}
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
