// Command bench measures wicket against the physical limit of the machine
// it runs on, in one run:
//
//   - reference: a bare net/http server on a Unix socket answering a fixed
//     ~300-byte JSON body, in its own process;
//   - the agent's GET /v1/metadata and cached POST /v1/tokens/oidc, served by
//     a real `wicket agent` process talking to a real `wicket issuer`;
//   - issuer token minting (the /v1/tokens/oidc handler: token verification,
//     registry lookup, claims, signing) against a bare go-jose signing loop of
//     the same algorithm;
//   - agent memory idle and with many open connections, and `wicket dev`
//     time to ready;
//   - with -peer spire, the agent's SPIFFE Workload API against SPIRE's
//     agent through go-spiffe (bench/spire.go).
//
// Reference and subject alternate (A/B/A/B) so drift on a shared machine
// hits both; every figure is printed with its ratio to the reference. It is
// a benchmark, not a test: nothing here asserts a time.
//
//	go run ./bench -duration 10s
//	go run ./bench -peer spire -peer-only
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"
)

type options struct {
	duration, warmup time.Duration
	conns, rounds    int
	scale            bool
	out              string
	profile          string // directory for CPU profiles of the agent under h2load
	h2load           string // path of h2load, "" when unavailable
	peer             string // "spire": the Workload API against SPIRE's agent (bench/spire.go)
	peerOnly         bool   // only the peer comparison
}

func main() {
	var o options
	ref := flag.String("serve-reference", "", "internal: serve the reference server on this socket")
	rawRef := flag.String("serve-raw-reference", "", "internal: serve the raw-loop reference on this socket")
	etcdSpec := flag.String("serve-etcd", "", "internal: run the fleet's etcd member (dir,client,peer)")
	agentsChild := flag.Bool("fleet-agents-child", false, "internal: run simulated agents for the fleet simulator, told what to do on stdin")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "measurement time per run")
	flag.DurationVar(&o.warmup, "warmup", time.Second, "warm-up time per run (not measured)")
	flag.IntVar(&o.conns, "conns", 64, "concurrent keep-alive connections")
	flag.IntVar(&o.rounds, "rounds", 2, "A/B rounds per comparison")
	flag.BoolVar(&o.scale, "scale", false, "also measure the connection and audience scale curves")
	flag.StringVar(&o.out, "out", "bench/results", "directory for latest.json and latest.md")
	flag.StringVar(&o.profile, "profile", "", "build the agent with the bench-only pprof socket and write CPU profiles of it under h2load to this directory")
	flag.Parse()
	if *agentsChild {
		if err := runAgentsChild(); err != nil {
			fmt.Fprintln(os.Stderr, "agents:", err)
			os.Exit(1)
		}
		return
	}
	if *etcdSpec != "" {
		if err := serveEtcd(*etcdSpec); err != nil {
			fmt.Fprintln(os.Stderr, "etcd:", err)
			os.Exit(1)
		}
		return
	}
	o.peer, o.peerOnly = *peerFlag, *peerOnlyFlag
	if o.peer != "" && o.peer != "spire" {
		fmt.Fprintf(os.Stderr, "bench: -peer %q: the only peer is spire\n", o.peer)
		os.Exit(2)
	}
	if o.peerOnly && o.peer == "" {
		fmt.Fprintln(os.Stderr, "bench: -peer-only needs -peer spire")
		os.Exit(2)
	}
	for sock, serve := range map[string]func(string) error{*ref: serveReference, *rawRef: serveRawReference} {
		if sock == "" {
			continue
		}
		if err := serve(sock); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	run := run
	if *fleetOn { // the fleet simulator, bench/fleet.go
		run = func(o options) error { return runFleet(o.out) }
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// Report is everything one run measured.
type Report struct {
	Date       string        `json:"date"`
	CPUs       int           `json:"cpus"`
	GoVersion  string        `json:"go"`
	Options    string        `json:"options"`
	Throughput []comparison  `json:"throughput"`
	Allocs     []allocFigure `json:"allocs"`
	Minting    []comparison  `json:"minting"`
	Memory     []memFigure   `json:"memory"`
	DevReady   []devFigure   `json:"dev_ready"`
	ConnScale  []loadResult  `json:"conn_scale,omitempty"`
	// SPIRE is -peer spire's: the Workload API against SPIRE's agent.
	SPIRE    []peerComparison `json:"spire,omitempty"`
	AudScale []audFigure      `json:"audience_scale,omitempty"`
	Notes    []string         `json:"notes"`
}

type comparison struct {
	Name      string     `json:"name"`
	Reference loadResult `json:"reference"`
	Subject   loadResult `json:"subject"`
	Ratio     float64    `json:"ratio"`
	// CPURatio is the subject's server CPU per request over the
	// reference's; P50Ratio the same for the median latency.
	CPURatio float64      `json:"cpu_ratio,omitempty"`
	P50Ratio float64      `json:"p50_ratio,omitempty"`
	Target   string       `json:"target"`
	Runs     []loadResult `json:"runs"`
}

// allocFigure is one Go benchmark of the guest API handler.
type allocFigure struct {
	Name        string  `json:"name"`
	NsPerOp     float64 `json:"ns_per_op"`
	BytesPerOp  float64 `json:"bytes_per_op"`
	AllocsPerOp float64 `json:"allocs_per_op"`
}

type memFigure struct {
	Name    string `json:"name"`
	RSSKiB  int64  `json:"rss_kib"`
	AnonKiB int64  `json:"anon_kib"`
	Target  string `json:"target"`
}

func memOf(name string, pid int, target string) memFigure {
	return memFigure{Name: name, RSSKiB: rssKiB(pid), AnonKiB: anonKiB(pid), Target: target}
}

type devFigure struct {
	Name string  `json:"name"`
	Ms   float64 `json:"ms"`
}

type audFigure struct {
	Audiences int     `json:"audiences"`
	RSSKiB    int64   `json:"rss_kib"`
	RPS       float64 `json:"rps"`
	P99us     float64 `json:"p99_us"`
}

func run(o options) error {
	ctx := context.Background()
	work, err := os.MkdirTemp("", "wb")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	bin := filepath.Join(work, "wicket")
	fmt.Fprintln(os.Stderr, "building wicket…")
	buildArgs := []string{"build", "-o", bin}
	if o.profile != "" {
		// The bench-only pprof socket (cmd/wicket/benchpprof.go): never
		// in a release build, never on the guest API.
		buildArgs = append(buildArgs, "-tags", "wicketbench")
	}
	if out, err := exec.Command("go", append(buildArgs, "./cmd/wicket")...).CombinedOutput(); err != nil {
		return fmt.Errorf("build: %v\n%s", err, out)
	}
	var h2note string
	o.h2load, h2note = h2loadPath()
	rep := &Report{Date: time.Now().UTC().Format(time.RFC3339), CPUs: runtime.NumCPU(), GoVersion: runtime.Version(),
		Options: fmt.Sprintf("duration=%s warmup=%s conns=%d rounds=%d", o.duration, o.warmup, o.conns, o.rounds)}

	if o.peer != "" {
		rep.Options += " peer=" + o.peer
		if o.peerOnly {
			rep.Options += " (peer only)"
		}
	}
	sys, err := startSystem(ctx, bin, work, o.profile != "", o.peer == "spire")
	if err != nil {
		return err
	}
	defer sys.stop()
	if o.peer == "spire" {
		var notes []string
		rep.SPIRE, notes, err = measureSPIRE(ctx, sys, work, o)
		if err != nil {
			return err
		}
		rep.Notes = append(rep.Notes, notes...)
		if o.peerOnly {
			return writeReport(rep, o.out)
		}
	}
	refSock := filepath.Join(work, "ref.sock")
	refProc, err := startReference("-serve-reference", refSock)
	if err != nil {
		return err
	}
	defer refProc.Process.Kill()
	rawSock := filepath.Join(work, "raw.sock")
	rawProc, err := startReference("-serve-raw-reference", rawSock)
	if err != nil {
		return err
	}
	defer rawProc.Process.Kill()

	rep.Memory = append(rep.Memory, memOf("agent idle", sys.agent.Process.Pid, "< 20 MiB"))

	reference := newTarget("reference", refSock, "GET", "/", nil)
	reference.pid = refProc.Process.Pid
	metadata := newTarget("agent GET /v1/metadata", sys.api, "GET", "/v1/metadata", nil)
	metadata.pid = sys.agent.Process.Pid
	token := newTarget("agent POST /v1/tokens/oidc (cached)", sys.api, "POST", "/v1/tokens/oidc", []byte(`{"aud":"bench"}`))
	token.pid = sys.agent.Process.Pid
	// Prime the token cache so every measured request is a cache hit.
	if r := runLoad(ctx, token, 1, 0, 200*time.Millisecond); r.Errors > 0 || r.Requests == 0 {
		return fmt.Errorf("priming token cache: %+v", r)
	}
	clients := []string{"harness"}
	if o.h2load != "" {
		clients = append(clients, "h2load")
	} else {
		rep.Notes = append(rep.Notes, h2note)
	}
	for _, cl := range clients {
		for _, subj := range []target{metadata, token} {
			c := compare(ctx, cl, reference, subj, o.conns, o)
			c.Target = "ratio >= 0.90, CPU/req <= 1.2x"
			rep.Throughput = append(rep.Throughput, c)
		}
	}
	// One connection: latency, not throughput (the server is idle
	// between requests), against the reference's.
	one := clients[len(clients)-1]
	for _, subj := range []target{metadata, token} {
		c := compare(ctx, one, reference, subj, 1, o)
		c.Target = "p50 within 10% of the reference"
		rep.Throughput = append(rep.Throughput, c)
	}
	// The same comparison against a bare server given the token request's
	// shape (POST with a body, ~830-byte reply): what remains is the
	// agent's own cost.
	refPost := newTarget("reference POST (token-shaped)", refSock, "POST", "/", []byte(`{"aud":"bench"}`))
	refPost.pid = refProc.Process.Pid
	shaped := compare(ctx, one, refPost, token, o.conns, o)
	shaped.Name = "agent POST /v1/tokens/oidc (cached) vs token-shaped reference"
	shaped.Target = "informational"
	rep.Throughput = append(rep.Throughput, shaped)
	// And against the floor under net/http (serveRawReference): how far
	// the agent is from the socket's own cost.
	for _, pair := range []struct {
		ref  target
		subj target
	}{
		{newTarget("raw-loop reference", rawSock, "GET", "/", nil), metadata},
		{newTarget("raw-loop reference POST (token-shaped)", rawSock, "POST", "/", []byte(`{"aud":"bench"}`)), token},
	} {
		pair.ref.pid = rawProc.Process.Pid
		c := compare(ctx, one, pair.ref, pair.subj, o.conns, o)
		c.Name = pair.subj.name + " vs a raw-loop reference"
		c.Target = "informational"
		rep.Throughput = append(rep.Throughput, c)
	}
	if o.profile != "" && o.h2load != "" {
		if err := profileAgent(ctx, sys, []target{metadata, token}, o); err != nil {
			return err
		}
	}
	rep.Memory = append(rep.Memory, memOf("agent after load", sys.agent.Process.Pid, ""))
	n, closeIdle := holdIdle(sys.api, 1000)
	time.Sleep(500 * time.Millisecond)
	rep.Memory = append(rep.Memory, memOf(fmt.Sprintf("agent with %d open connections", n), sys.agent.Process.Pid, "< 64 MiB"))
	closeIdle()

	mint, err := measureMinting(ctx, o)
	if err != nil {
		return err
	}
	rep.Minting = mint
	rep.Allocs, err = measureAllocs()
	if err != nil {
		return err
	}

	if o.scale {
		rep.ConnScale = connScale(ctx, metadata, sys, o)
		rep.AudScale, err = audienceScale(ctx, sys, o)
		if err != nil {
			return err
		}
	}
	sys.stop()

	rep.DevReady, err = measureDev(bin, work)
	if err != nil {
		return err
	}
	rep.Notes = append(rep.Notes,
		"Load client, reference server and wicket share the machine's cores; both sides of each ratio pay the same client cost.",
		"CPU/req: user+system time of the serving process (/proc/PID/stat) over the measured period / requests served.",
		"h2load runs as: h2load --h1 -B unix:SOCKET -c N -t 1 -D SECONDS [-d BODY] http://wicket/PATH")
	return writeReport(rep, o.out)
}

// load runs t with client ("harness" or "h2load") at conns connections.
func load(ctx context.Context, client string, t target, conns int, o options) loadResult {
	if client == "h2load" {
		return runH2load(ctx, o.h2load, t, conns, o.warmup, o.duration)
	}
	return runLoad(ctx, t, conns, o.warmup, o.duration)
}

// compare alternates reference and subject rounds and returns medians.
func compare(ctx context.Context, client string, ref, subj target, conns int, o options) comparison {
	var refs, subs []loadResult
	for i := 0; i < o.rounds; i++ {
		refs = append(refs, load(ctx, client, ref, conns, o))
		subs = append(subs, load(ctx, client, subj, conns, o))
	}
	c := comparison{Name: fmt.Sprintf("%s [%s, %d conns]", subj.name, client, conns), Reference: median(refs), Subject: median(subs), Runs: append(refs, subs...)}
	c.ratios()
	fmt.Fprintf(os.Stderr, "%s: %.0f req/s vs reference %.0f → %.2f, CPU/req %.1f vs %.1f µs → %.2f, p50 %.0f vs %.0f µs\n", c.Name,
		c.Subject.RPS, c.Reference.RPS, c.Ratio, c.Subject.CPUusPerReq, c.Reference.CPUusPerReq, c.CPURatio, c.Subject.P50us, c.Reference.P50us)
	return c
}

func (c *comparison) ratios() {
	if c.Reference.RPS > 0 {
		c.Ratio = c.Subject.RPS / c.Reference.RPS
	}
	if c.Reference.CPUusPerReq > 0 {
		c.CPURatio = c.Subject.CPUusPerReq / c.Reference.CPUusPerReq
	}
	if c.Reference.P50us > 0 {
		c.P50Ratio = c.Subject.P50us / c.Reference.P50us
	}
}

func median(rs []loadResult) loadResult {
	s := append([]loadResult(nil), rs...)
	sort.Slice(s, func(i, j int) bool { return s[i].RPS < s[j].RPS })
	return s[len(s)/2]
}

func writeReport(rep *Report, dir string) error {
	md := renderMarkdown(rep)
	fmt.Print(md)
	if dir == "" {
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b, _ := json.MarshalIndent(rep, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, "latest.json"), b, 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "latest.md"), []byte(md), 0o644)
}

func renderMarkdown(rep *Report) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# wicket bench — %s, %d CPUs, %s\n\n%s\n\n", rep.Date, rep.CPUs, rep.GoVersion, rep.Options)
	table := func(cs []comparison) {
		b.WriteString("| guest API | req/s | p50 µs | p99 µs | errors | CPU µs/req | reference req/s | reference p50 µs | reference CPU µs/req | req/s ratio | CPU ratio | p50 ratio | target |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
		for _, c := range cs {
			fmt.Fprintf(&b, "| %s | %.0f | %.0f | %.0f | %d | %.1f | %.0f | %.0f | %.1f | **%.2f** | **%.2f** | %.2f | %s |\n", c.Name, c.Subject.RPS, c.Subject.P50us,
				c.Subject.P99us, c.Subject.Errors, c.Subject.CPUusPerReq, c.Reference.RPS, c.Reference.P50us, c.Reference.CPUusPerReq, c.Ratio, c.CPURatio, c.P50Ratio, c.Target)
		}
	}
	if len(rep.Throughput) > 0 { // none with -peer-only
		table(rep.Throughput)
		b.WriteString("\n| guest API handler (Go benchmark) | ns/op | B/op | allocs/op |\n|---|---|---|---|\n")
		for _, a := range rep.Allocs {
			fmt.Fprintf(&b, "| %s | %.0f | %.0f | %.0f |\n", a.Name, a.NsPerOp, a.BytesPerOp, a.AllocsPerOp)
		}
		b.WriteString("\n| minting | tokens/s | bare signing tokens/s | ratio | CPU µs/token | bare CPU µs/token | bare/minting CPU | target |\n|---|---|---|---|---|---|---|---|\n")
		for _, c := range rep.Minting {
			inv := 0.0
			if c.CPURatio > 0 {
				inv = 1 / c.CPURatio
			}
			fmt.Fprintf(&b, "| %s | %.0f | %.0f | **%.2f** | %.1f | %.1f | **%.2f** | %s |\n", c.Name, c.Subject.RPS, c.Reference.RPS, c.Ratio,
				c.Subject.CPUusPerReq, c.Reference.CPUusPerReq, inv, c.Target)
		}
		b.WriteString("\n| memory | RSS | of which anonymous | target (RSS) |\n|---|---|---|---|\n")
		for _, m := range rep.Memory {
			fmt.Fprintf(&b, "| %s | %.1f MiB | %.1f MiB | %s |\n", m.Name, float64(m.RSSKiB)/1024, float64(m.AnonKiB)/1024, m.Target)
		}
		b.WriteString("\n| wicket dev | time to ready |\n|---|---|\n")
		for _, d := range rep.DevReady {
			fmt.Fprintf(&b, "| %s | %.0f ms |\n", d.Name, d.Ms)
		}
	}
	if len(rep.SPIRE) > 0 {
		b.WriteString("\n| Workload API vs SPIRE | callers | wicket req/s | p50 µs | p99 µs | errors | agent CPU µs/fetch | client CPU µs/fetch | SPIRE req/s | p50 µs | p99 µs | errors | agent CPU µs/fetch | client CPU µs/fetch | wicket/SPIRE req/s | SPIRE/wicket agent CPU | target |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
		for _, c := range rep.SPIRE {
			fmt.Fprintf(&b, "| %s | %d | %.0f | %.0f | %.0f | %d | %.1f | %.1f | %.0f | %.0f | %.0f | %d | %.1f | %.1f | **%.2f** | **%.2f** | %s |\n", c.Name, c.Callers,
				c.Wicket.RPS, c.Wicket.P50us, c.Wicket.P99us, c.Wicket.Errors, c.Wicket.CPUusPerReq, c.Wicket.ClientCPUusPerReq,
				c.SPIRE.RPS, c.SPIRE.P50us, c.SPIRE.P99us, c.SPIRE.Errors, c.SPIRE.CPUusPerReq, c.SPIRE.ClientCPUusPerReq, c.Throughput, c.CPU, c.Target)
		}
	}
	if len(rep.ConnScale) > 0 {
		b.WriteString("\n| connections | metadata req/s | p99 µs | errors | agent RSS |\n|---|---|---|---|---|\n")
		for _, r := range rep.ConnScale {
			fmt.Fprintf(&b, "| %d | %.0f | %.0f | %d | %.1f MiB |\n", r.Conns, r.RPS, r.P99us, r.Errors, float64(r.RSSKiB)/1024)
		}
	}
	if len(rep.AudScale) > 0 {
		b.WriteString("\n| audiences cached | token req/s | p99 µs | agent RSS |\n|---|---|---|---|\n")
		for _, a := range rep.AudScale {
			fmt.Fprintf(&b, "| %d | %.0f | %.0f | %.1f MiB |\n", a.Audiences, a.RPS, a.P99us, float64(a.RSSKiB)/1024)
		}
	}
	b.WriteString("\n")
	for _, n := range rep.Notes {
		b.WriteString("- " + n + "\n")
	}
	return b.String()
}

func runtimeNumCPU() int { return runtime.GOMAXPROCS(0) }
