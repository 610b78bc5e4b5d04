package main

// `-peer spire`: wicket agent's SPIFFE Workload API against SPIRE's agent
// (v1.13.3, real binaries run by internal/spire) in the same run, through
// the same clients: go-spiffe v2's workloadapi (what a program uses) and,
// at 64 callers, the generated gRPC client alone (no SVID parsing, so
// less of the shared cores goes to the client and more of what is
// measured is the agents):
//
//   - cached FetchJWTSVID (audience "bench", primed on both) and cached
//     FetchX509SVID (one-shot: the stream is opened, its first message
//     taken and the stream closed, as workloadapi.FetchX509SVID does), at
//     64 concurrent callers, each with its own client and connection, and
//     at 1;
//   - req/s, p50/p99 latency and each agent process's CPU per fetch
//     (user+system from /proc/PID/stat over the measured window);
//   - rounds alternate wicket, SPIRE, wicket, SPIRE…, medians compared;
//   - and SPIRE's cached JWT-SVID against the guest API's cached OIDC
//     token (POST /v1/tokens/oidc through the harness's HTTP client).
//
// SPIRE is built by .ci/spire.sh (cached; ~15 minutes the first time)
// only when -peer spire is given and WICKET_SPIRE_BIN_DIR does not
// already name the binaries.

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/wicket-sh/wicket/internal/spire"
)

var (
	peerFlag     = flag.String("peer", "", `"spire": also measure wicket's SPIFFE Workload API against SPIRE's agent (builds SPIRE with .ci/spire.sh when missing)`)
	peerOnlyFlag = flag.Bool("peer-only", false, "with -peer: measure only the peer comparison, not the guest API figures")
	peerPinFlag  = flag.Bool("peer-pin", true, "with -peer: run both agents on CPU 0 and the load client on the other CPUs, so the client's work does not come out of the agents' (needs 2 CPUs)")
)

// The SPIRE side: its trust domain and the one workload entry, selecting
// this process by uid as wicket's default policy does.
// callName and callTitle name a kind of call in results.
var (
	callName  = map[string]string{"jwt": "FetchJWTSVID", "x509": "FetchX509SVID"}
	callTitle = map[string]string{"jwt": "FetchJWTSVID (cached)", "x509": "FetchX509SVID (cached, one-shot)"}
)

const (
	spireTD       = "spire.bench"
	spireWorkload = "spiffe://" + spireTD + "/workload/bench"
	benchAudience = "bench"
)

// peerComparison is one measure of wicket against SPIRE: the medians of
// the alternating rounds and their ratios.
type peerComparison struct {
	Name    string     `json:"name"`
	Callers int        `json:"callers"`
	Wicket  loadResult `json:"wicket"`
	SPIRE   loadResult `json:"spire"`
	// Throughput is wicket's req/s over SPIRE's; CPU is SPIRE's agent
	// CPU per fetch over wicket's (both: higher is better for wicket).
	Throughput float64      `json:"throughput_ratio"`
	CPU        float64      `json:"cpu_ratio"`
	Target     string       `json:"target"`
	Runs       []loadResult `json:"runs"`
}

// spireBins returns the SPIRE binaries, building them with .ci/spire.sh
// when WICKET_SPIRE_BIN_DIR does not name them.
func spireBins() (spire.Bins, error) {
	if b, err := spire.Binaries(""); err == nil {
		return b, nil
	}
	fmt.Fprintln(os.Stderr, "building SPIRE with .ci/spire.sh (cached; ~15 minutes the first time)…")
	var out bytes.Buffer
	c := exec.Command("bash", ".ci/spire.sh")
	c.Stdout, c.Stderr = &out, os.Stderr
	if err := c.Run(); err != nil {
		return spire.Bins{}, fmt.Errorf(".ci/spire.sh: %v\n%s", err, out.Bytes())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	return spire.Binaries(lines[len(lines)-1])
}

// wlTarget is one Workload API call repeated by the load client.
type wlTarget struct {
	name   string
	addr   string // unix:///…
	pid    int    // the agent process, whose CPU is sampled
	kind   string // "jwt" (cached FetchJWTSVID) or "x509" (one-shot FetchX509SVID)
	client string // "go-spiffe" or "grpc"
}

// dial makes one caller's client of t and returns its call.
func (t wlTarget) dial(ctx context.Context) (call func(context.Context) error, closeFn func(), err error) {
	if t.client == "grpc" {
		return t.dialGRPC(ctx)
	}
	c, err := workloadapi.New(ctx, workloadapi.WithAddr(t.addr))
	if err != nil {
		return nil, nil, err
	}
	closeFn = func() { c.Close() }
	if t.kind == "jwt" {
		return func(ctx context.Context) error {
			_, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: benchAudience})
			return err
		}, closeFn, nil
	}
	return func(ctx context.Context) error { _, err := c.FetchX509SVID(ctx); return err }, closeFn, nil
}

// dialGRPC is the generated client alone: the security header and the
// call, no parsing of what comes back beyond protobuf.
func (t wlTarget) dialGRPC(ctx context.Context) (func(context.Context) error, func(), error) {
	conn, err := grpc.NewClient(t.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, err
	}
	wc := workload.NewSpiffeWorkloadAPIClient(conn)
	md := metadata.Pairs("workload.spiffe.io", "true")
	closeFn := func() { conn.Close() }
	if t.kind == "jwt" {
		req := &workload.JWTSVIDRequest{Audience: []string{benchAudience}}
		return func(ctx context.Context) error {
			rep, err := wc.FetchJWTSVID(metadata.NewOutgoingContext(ctx, md), req)
			if err == nil && len(rep.Svids) == 0 {
				err = errors.New("no svid")
			}
			return err
		}, closeFn, nil
	}
	return func(ctx context.Context) error {
		sctx, cancel := context.WithCancel(metadata.NewOutgoingContext(ctx, md))
		defer cancel()
		st, err := wc.FetchX509SVID(sctx, &workload.X509SVIDRequest{})
		if err != nil {
			return err
		}
		rep, err := st.Recv()
		if err == nil && len(rep.Svids) == 0 {
			err = errors.New("no svid")
		}
		return err
	}, closeFn, nil
}

// runWorkload keeps callers clients of t (one connection each)
// calling t back to back: warm-up first (not counted: connections made,
// caches primed), then dur measured, the agent's CPU sampled around it.
func runWorkload(ctx context.Context, t wlTarget, callers int, warmup, dur time.Duration) loadResult {
	var (
		measuring, stop atomic.Bool
		reqs, errs      atomic.Int64
		mu              sync.Mutex
		lat             []time.Duration
		wg              sync.WaitGroup
		firstErr        atomic.Value
	)
	// One bound for the whole run rather than a deadline per call: a
	// per-call deadline travels as grpc-timeout and costs each server a
	// timer per call, which a workload's long-lived client does not pay.
	ctx, cancel := context.WithTimeout(ctx, warmup+dur+30*time.Second)
	defer cancel()
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			call, closeFn, err := t.dial(ctx)
			if err != nil {
				errs.Add(1)
				firstErr.CompareAndSwap(nil, err)
				return
			}
			defer closeFn()
			local := make([]time.Duration, 0, 4096)
			for !stop.Load() && ctx.Err() == nil {
				start := time.Now()
				err := call(ctx)
				d := time.Since(start)
				if !measuring.Load() {
					continue
				}
				if err != nil {
					errs.Add(1)
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				reqs.Add(1)
				local = append(local, d)
			}
			mu.Lock()
			lat = append(lat, local...)
			mu.Unlock()
		}()
	}
	r := loadResult{Name: t.name, Client: t.client, Conns: callers}
	r.measure(ctx, t.pid, warmup, dur, &measuring, &stop, &wg)
	r.Requests, r.Errors = reqs.Load(), errs.Load()
	r.summarize(lat)
	if e, ok := firstErr.Load().(error); ok {
		fmt.Fprintf(os.Stderr, "%s: %d errors, the first: %v\n", t.name, r.Errors, e)
	}
	return r
}

// comparePeer alternates wicket and SPIRE rounds (wicket first) and
// returns the medians with their ratios.
func comparePeer(name string, callers int, o options, wicket, peer func() loadResult) peerComparison {
	var ws, ss []loadResult
	for range o.rounds {
		ws = append(ws, wicket())
		ss = append(ss, peer())
	}
	c := peerComparison{Name: name, Callers: callers, Wicket: median(ws), SPIRE: median(ss), Runs: append(ws, ss...)}
	if c.SPIRE.RPS > 0 {
		c.Throughput = c.Wicket.RPS / c.SPIRE.RPS
	}
	if c.Wicket.CPUusPerReq > 0 {
		c.CPU = c.SPIRE.CPUusPerReq / c.Wicket.CPUusPerReq
	}
	fmt.Fprintf(os.Stderr, "%s [%d callers]: wicket %.0f req/s vs SPIRE %.0f → %.2f×; CPU/fetch %.1f vs %.1f µs → SPIRE/wicket %.2f; p50 %.0f vs %.0f µs\n",
		c.Name, callers, c.Wicket.RPS, c.SPIRE.RPS, c.Throughput, c.Wicket.CPUusPerReq, c.SPIRE.CPUusPerReq, c.CPU, c.Wicket.P50us, c.SPIRE.P50us)
	return c
}

// startSPIRE runs SPIRE's server and agent in dir with the bench's entry
// (X.509- and JWT-SVID lives as wicket's defaults, which are SPIRE's
// too: 1 h and 5 min).
func startSPIRE(ctx context.Context, dir string, bins spire.Bins) (*spire.Deployment, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	return spire.Start(ctx, dir, spire.Options{
		// SPIRE's default log level, as wicket's agent runs at its own.
		Server:  spire.ServerOptions{Bins: bins, TrustDomain: spireTD, X509SVIDTTL: time.Hour, JWTSVIDTTL: 5 * time.Minute},
		Entries: []spire.Entry{{SPIFFEID: spireWorkload, Selectors: []string{"unix:uid:" + strconv.Itoa(os.Getuid())}}},
	})
}

// measureSPIRE runs the -peer spire comparisons against sys (whose agent
// serves the Workload API on sys.spiffe) and a SPIRE deployment in work.
func measureSPIRE(ctx context.Context, sys *system, work string, o options) ([]peerComparison, []string, error) {
	bins, err := spireBins()
	if err != nil {
		return nil, nil, err
	}
	d, err := startSPIRE(ctx, filepath.Join(work, "spire"), bins)
	if err != nil {
		return nil, nil, err
	}
	defer d.Close()
	wpid := sys.agent.Process.Pid
	pinned := false
	if *peerPinFlag && goruntime.NumCPU() >= 2 {
		agents := []int{wpid, d.Agent.PID(), d.Server.PID()}
		restore, err := pinApart(agents)
		if err != nil {
			return nil, nil, fmt.Errorf("-peer-pin: %w", err)
		}
		defer restore()
		pinned = true
	}
	wicket := func(kind, client string) wlTarget {
		return wlTarget{name: "wicket " + callName[kind], addr: "unix://" + sys.spiffe, pid: wpid, kind: kind, client: client}
	}
	peer := func(kind, client string) wlTarget {
		return wlTarget{name: "SPIRE " + callName[kind], addr: d.Agent.Addr(), pid: d.Agent.PID(), kind: kind, client: client}
	}
	// Prime both caches, and check each side answers before measuring.
	for _, kind := range []string{"jwt", "x509"} {
		for _, t := range []wlTarget{wicket(kind, "go-spiffe"), peer(kind, "go-spiffe")} {
			if r := runWorkload(ctx, t, 1, 0, 300*time.Millisecond); r.Requests == 0 || r.Errors > 0 {
				return nil, nil, fmt.Errorf("priming %s: %d served, %d errors", t.name, r.Requests, r.Errors)
			}
		}
	}
	var out []peerComparison
	for _, m := range []struct {
		callers int
		client  string
	}{{o.conns, "go-spiffe"}, {o.conns, "grpc"}, {1, "go-spiffe"}} {
		for _, kind := range []string{"jwt", "x509"} {
			w, s := wicket(kind, m.client), peer(kind, m.client)
			c := comparePeer(callTitle[kind]+", client "+m.client, m.callers, o,
				func() loadResult { return runWorkload(ctx, w, m.callers, o.warmup, o.duration) },
				func() loadResult { return runWorkload(ctx, s, m.callers, o.warmup, o.duration) })
			c.Target = "informational (1 caller: latency)"
			if m.callers > 1 {
				c.Target = "throughput ≥ 5×, CPU/fetch ≤ 1/5 (SPIRE/wicket ≥ 5)"
			}
			out = append(out, c)
		}
	}
	// The guest API's cached OIDC token (HTTP, the harness's client)
	// against SPIRE's cached JWT-SVID (gRPC, go-spiffe).
	token := newTarget("guest API POST /v1/tokens/oidc (cached)", sys.api, "POST", "/v1/tokens/oidc", []byte(`{"aud":"bench"}`))
	token.pid = wpid
	s := peer("jwt", "go-spiffe")
	c := comparePeer("guest API cached OIDC token (HTTP) vs SPIRE cached JWT-SVID", o.conns, o,
		func() loadResult { return runLoad(ctx, token, o.conns, o.warmup, o.duration) },
		func() loadResult { return runWorkload(ctx, s, o.conns, o.warmup, o.duration) })
	c.Target = "informational"
	out = append(out, c)
	if o.profile != "" {
		if err := profileWorkload(ctx, sys, []wlTarget{wicket("jwt", "go-spiffe"), wicket("x509", "go-spiffe")}, o); err != nil {
			return nil, nil, err
		}
	}
	placement := "the load client shares the cores with both agents (-peer-pin=false)"
	if pinned {
		placement = "both agents (and SPIRE's server) run on CPU 0, the load client on the other CPUs (-peer-pin): each agent has one core to itself while it is measured, and the client's work does not come out of it"
	}
	notes := []string{
		"Placement: " + placement + ".",
		fmt.Sprintf("SPIRE %s (spire-server + spire-agent, join_token and unix workload attestors, sqlite3 datastore, memory key manager, log level INFO, its default) against wicket's agent ([spiffe] enabled, default policy, log level info, its default); both through go-spiffe v2.9.0's workloadapi client and, at %d callers, through the generated gRPC client alone (no SVID parsing); one client and connection per caller.", spire.Version, o.conns),
		"Workload API CPU/fetch: user+system time of each agent process (/proc/PID/stat) over the measured period / fetches served; the load client shares the cores with both agents, so where the client costs more than the agent (go-spiffe against wicket) throughput measures the client too: the grpc rows and the CPU ratios are the agents'.",
	}
	return out, notes, nil
}

// profileWorkload takes a CPU profile of the agent under each Workload
// API target at o.conns callers (the -profile mode).
func profileWorkload(ctx context.Context, sys *system, ts []wlTarget, o options) error {
	for _, t := range ts {
		name := filepath.Join(o.profile, "agent-spiffe-"+slug(strings.ToLower(strings.TrimPrefix(t.name, "wicket ")))+".pprof")
		err := cpuProfile(ctx, sys, name, func(d time.Duration) { runWorkload(ctx, t, o.conns, 0, d) }, o)
		if err != nil {
			return err
		}
	}
	return nil
}

// pinApart runs every thread of the agents' processes on CPU 0 and this
// process (the load client) on the other CPUs; restore puts all of them
// back on every CPU. Threads made later inherit their creator's set.
func pinApart(agents []int) (restore func(), err error) {
	n := goruntime.NumCPU()
	var zero, rest, all unix.CPUSet
	zero.Set(0)
	for c := range n {
		all.Set(c)
		if c > 0 {
			rest.Set(c)
		}
	}
	set := func(pid int, cpus *unix.CPUSet) error {
		tids, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		if err != nil {
			return err
		}
		for _, t := range tids {
			tid, err := strconv.Atoi(t.Name())
			if err != nil {
				continue
			}
			if err := unix.SchedSetaffinity(tid, cpus); err != nil && !errors.Is(err, unix.ESRCH) {
				return fmt.Errorf("pid %d thread %d: %w", pid, tid, err)
			}
		}
		return nil
	}
	restore = func() {
		for _, pid := range append(agents, os.Getpid()) {
			set(pid, &all)
		}
	}
	for _, pid := range agents {
		if err := set(pid, &zero); err != nil {
			restore()
			return nil, err
		}
	}
	if err := set(os.Getpid(), &rest); err != nil {
		restore()
		return nil, err
	}
	return restore, nil
}
