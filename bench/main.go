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
//     time to ready.
//
// Reference and subject alternate (A/B/A/B) so drift on a shared machine
// hits both; every figure is printed with its ratio to the reference. It is
// a benchmark, not a test: nothing here asserts a time.
//
//	go run ./bench -duration 10s
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
}

func main() {
	var o options
	ref := flag.String("serve-reference", "", "internal: serve the reference server on this socket")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "measurement time per run")
	flag.DurationVar(&o.warmup, "warmup", time.Second, "warm-up time per run (not measured)")
	flag.IntVar(&o.conns, "conns", 64, "concurrent keep-alive connections")
	flag.IntVar(&o.rounds, "rounds", 2, "A/B rounds per comparison")
	flag.BoolVar(&o.scale, "scale", false, "also measure the connection and audience scale curves")
	flag.StringVar(&o.out, "out", "bench/results", "directory for latest.json and latest.md")
	flag.Parse()
	if *ref != "" {
		if err := serveReference(*ref); err != nil {
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
	Date       string       `json:"date"`
	CPUs       int          `json:"cpus"`
	GoVersion  string       `json:"go"`
	Options    string       `json:"options"`
	Throughput []comparison `json:"throughput"`
	Minting    []comparison `json:"minting"`
	Memory     []memFigure  `json:"memory"`
	DevReady   []devFigure  `json:"dev_ready"`
	ConnScale  []loadResult `json:"conn_scale,omitempty"`
	AudScale   []audFigure  `json:"audience_scale,omitempty"`
	Notes      []string     `json:"notes"`
}

type comparison struct {
	Name      string       `json:"name"`
	Reference loadResult   `json:"reference"`
	Subject   loadResult   `json:"subject"`
	Ratio     float64      `json:"ratio"`
	Target    string       `json:"target"`
	Runs      []loadResult `json:"runs"`
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
	if out, err := exec.Command("go", "build", "-o", bin, "./cmd/wicket").CombinedOutput(); err != nil {
		return fmt.Errorf("build: %v\n%s", err, out)
	}
	rep := &Report{Date: time.Now().UTC().Format(time.RFC3339), CPUs: runtime.NumCPU(), GoVersion: runtime.Version(),
		Options: fmt.Sprintf("duration=%s warmup=%s conns=%d rounds=%d", o.duration, o.warmup, o.conns, o.rounds)}

	sys, err := startSystem(ctx, bin, work)
	if err != nil {
		return err
	}
	defer sys.stop()
	refSock := filepath.Join(work, "ref.sock")
	refProc, err := startReference(refSock)
	if err != nil {
		return err
	}
	defer refProc.Process.Kill()

	rep.Memory = append(rep.Memory, memOf("agent idle", sys.agent.Process.Pid, "< 20 MiB"))

	reference := newTarget("reference", refSock, "GET", "/", nil)
	metadata := newTarget("agent GET /v1/metadata", sys.api, "GET", "/v1/metadata", nil)
	token := newTarget("agent POST /v1/tokens/oidc (cached)", sys.api, "POST", "/v1/tokens/oidc", []byte(`{"aud":"bench"}`))
	// Prime the token cache so every measured request is a cache hit.
	if r := runLoad(ctx, token, 1, 0, 200*time.Millisecond); r.Errors > 0 || r.Requests == 0 {
		return fmt.Errorf("priming token cache: %+v", r)
	}
	for _, subj := range []target{metadata, token} {
		c := compare(ctx, reference, subj, o)
		c.Target = "ratio >= 0.85, p99 <= 2000us"
		rep.Throughput = append(rep.Throughput, c)
		fmt.Fprintf(os.Stderr, "%s: %.0f req/s vs reference %.0f → %.2f\n", subj.name, c.Subject.RPS, c.Reference.RPS, c.Ratio)
	}
	// The same comparison against a bare server given the token request's
	// shape (POST with a body, ~830-byte reply): what remains is the
	// agent's own cost.
	refPost := newTarget("reference POST (token-shaped)", refSock, "POST", "/", []byte(`{"aud":"bench"}`))
	shaped := compare(ctx, refPost, token, o)
	shaped.Name = "agent POST /v1/tokens/oidc (cached) vs token-shaped reference"
	shaped.Target = "informational"
	rep.Throughput = append(rep.Throughput, shaped)
	fmt.Fprintf(os.Stderr, "%s: %.0f vs %.0f → %.2f\n", shaped.Name, shaped.Subject.RPS, shaped.Reference.RPS, shaped.Ratio)
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
		"Cross-check with h2load: h2load --h1 -B unix:SOCKET -c 64 -D 10 http://wicket/v1/metadata")
	return writeReport(rep, o.out)
}

// compare alternates reference and subject rounds and returns medians.
func compare(ctx context.Context, ref, subj target, o options) comparison {
	var refs, subs []loadResult
	for i := 0; i < o.rounds; i++ {
		refs = append(refs, runLoad(ctx, ref, o.conns, o.warmup, o.duration))
		subs = append(subs, runLoad(ctx, subj, o.conns, o.warmup, o.duration))
	}
	c := comparison{Name: subj.name, Reference: median(refs), Subject: median(subs), Runs: append(refs, subs...)}
	if c.Reference.RPS > 0 {
		c.Ratio = c.Subject.RPS / c.Reference.RPS
	}
	return c
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
	b.WriteString("| guest API | req/s | p50 µs | p90 µs | p99 µs | errors | reference req/s | reference p99 µs | ratio | target |\n|---|---|---|---|---|---|---|---|---|---|\n")
	for _, c := range rep.Throughput {
		fmt.Fprintf(&b, "| %s | %.0f | %.0f | %.0f | %.0f | %d | %.0f | %.0f | **%.2f** | %s |\n", c.Name, c.Subject.RPS, c.Subject.P50us,
			c.Subject.P90us, c.Subject.P99us, c.Subject.Errors, c.Reference.RPS, c.Reference.P99us, c.Ratio, c.Target)
	}
	b.WriteString("\n| minting | tokens/s | bare signing tokens/s | ratio | target |\n|---|---|---|---|---|\n")
	for _, c := range rep.Minting {
		fmt.Fprintf(&b, "| %s | %.0f | %.0f | **%.2f** | %s |\n", c.Name, c.Subject.RPS, c.Reference.RPS, c.Ratio, c.Target)
	}
	b.WriteString("\n| memory | RSS | of which anonymous | target (RSS) |\n|---|---|---|---|\n")
	for _, m := range rep.Memory {
		fmt.Fprintf(&b, "| %s | %.1f MiB | %.1f MiB | %s |\n", m.Name, float64(m.RSSKiB)/1024, float64(m.AnonKiB)/1024, m.Target)
	}
	b.WriteString("\n| wicket dev | time to ready |\n|---|---|\n")
	for _, d := range rep.DevReady {
		fmt.Fprintf(&b, "| %s | %.0f ms |\n", d.Name, d.Ms)
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
