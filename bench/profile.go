package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// benchPprofEnv names the Unix socket on which a `-tags wicketbench` build
// serves net/http/pprof (cmd/wicket/benchpprof.go).
const benchPprofEnv = "WICKET_BENCH_PPROF_SOCKET"

// profileAgent takes a CPU profile of the agent process while h2load
// drives each target, and writes it with its top functions to o.profile.
func profileAgent(ctx context.Context, sys *system, ts []target, o options) error {
	for i, t := range ts {
		name := filepath.Join(o.profile, fmt.Sprintf("agent-%d-%s.pprof", i, slug(t.path)))
		err := cpuProfile(ctx, sys, name, func(d time.Duration) { runH2load(ctx, o.h2load, t, o.conns, 0, d) }, o)
		if err != nil {
			return err
		}
	}
	return nil
}

// cpuProfile runs load for o.duration plus two seconds and takes a CPU
// profile of the agent for o.duration from its second second on, into
// name with its top functions beside it (name.top.txt).
func cpuProfile(ctx context.Context, sys *system, name string, load func(time.Duration), o options) error {
	if err := os.MkdirAll(o.profile, 0o755); err != nil {
		return err
	}
	if err := waitSocket(sys.pprof, 5*time.Second); err != nil {
		return err
	}
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sys.pprof)
	}}}
	done := make(chan struct{})
	go func() { load(o.duration + 2*time.Second); close(done) }()
	time.Sleep(time.Second)
	resp, err := hc.Get(fmt.Sprintf("http://pprof/debug/pprof/profile?seconds=%d", max(1, int(o.duration.Seconds()))))
	if err != nil {
		<-done
		return fmt.Errorf("profile: %w", err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	<-done
	if err != nil {
		return err
	}
	if err := os.WriteFile(name, b, 0o644); err != nil {
		return err
	}
	top, _ := exec.Command("go", "tool", "pprof", "-top", "-nodecount=40", name).CombinedOutput()
	os.WriteFile(strings.TrimSuffix(name, ".pprof")+".top.txt", top, 0o644)
	fmt.Fprintf(os.Stderr, "profile of the agent: %s\n", name)
	return nil
}

func slug(p string) string { return strings.Trim(strings.ReplaceAll(p, "/", "-"), "-") }

var benchLine = regexp.MustCompile(`^(Benchmark(?:GuestAPI|FastLane|Lane)_\w+)(?:-\d+)?\s+\d+\s+([\d.]+) ns/op\s+([\d.]+) B/op\s+([\d.]+) allocs/op`)

// measureAllocs runs the Go benchmarks of the guest API's handlers
// (internal/agent/bench_test.go: net/http's handler and the fast lane's)
// and of the fast lane's parsing and replies (internal/fastlane) for
// their allocations per request.
func measureAllocs() ([]allocFigure, error) {
	out, err := exec.Command("go", "test", "./internal/agent/", "./internal/fastlane/", "-run", "^$",
		"-bench", "^Benchmark(GuestAPI|FastLane|Lane)_", "-benchmem", "-benchtime", "200000x", "-count", "1").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("guest API benchmarks: %v\n%s", err, out)
	}
	var figs []allocFigure
	for _, line := range strings.Split(string(out), "\n") {
		m := benchLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		f := allocFigure{Name: m[1]}
		f.NsPerOp, _ = strconv.ParseFloat(m[2], 64)
		f.BytesPerOp, _ = strconv.ParseFloat(m[3], 64)
		f.AllocsPerOp, _ = strconv.ParseFloat(m[4], 64)
		figs = append(figs, f)
	}
	if len(figs) == 0 {
		return nil, fmt.Errorf("guest API benchmarks: no result in\n%s", out)
	}
	return figs, nil
}
