package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// h2loadPath finds h2load (Debian nghttp2-client), installing it with
// apt-get when it is missing and this process is root. It returns "" and
// a note saying why when it cannot: the comparisons that need it are
// skipped, not failed.
func h2loadPath() (string, string) {
	if p, err := exec.LookPath("h2load"); err == nil {
		return p, ""
	}
	if os.Geteuid() != 0 {
		return "", "h2load not found and not root: the h2load comparisons were skipped (apt-get install nghttp2-client)"
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		return "", "h2load not found and no apt-get: the h2load comparisons were skipped"
	}
	fmt.Fprintln(os.Stderr, "installing nghttp2-client for h2load…")
	install := func() error {
		c := exec.Command("apt-get", "install", "-y", "--no-install-recommends", "nghttp2-client")
		c.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		out, err := c.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, lastLine(out))
		}
		return nil
	}
	if err := install(); err != nil {
		// A fresh container has no package lists yet.
		if out, uerr := exec.Command("apt-get", "update").CombinedOutput(); uerr != nil {
			return "", fmt.Sprintf("h2load: apt-get update failed (%v: %s): the h2load comparisons were skipped", uerr, lastLine(out))
		}
		if err := install(); err != nil {
			return "", fmt.Sprintf("h2load: apt-get install nghttp2-client failed (%v): the h2load comparisons were skipped", err)
		}
	}
	p, err := exec.LookPath("h2load")
	if err != nil {
		return "", "h2load still not found after installing nghttp2-client: the h2load comparisons were skipped"
	}
	return p, ""
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}

var h2Requests = regexp.MustCompile(`requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout`)

// runH2load drives t with h2load over HTTP/1.1 keep-alive on the Unix
// socket: a warm-up run first (not counted), then one run of dur whose
// per-request log gives the latency quantiles. The serving process's CPU
// time is sampled around the measured run (t.pid).
func runH2load(ctx context.Context, bin string, t target, conns int, warmup, dur time.Duration) loadResult {
	r := loadResult{Name: t.name, Conns: conns, Client: "h2load"}
	dir, err := os.MkdirTemp("", "wbh")
	if err != nil {
		r.Errors = 1
		return r
	}
	defer os.RemoveAll(dir)
	args := []string{"--h1", "-B", "unix:" + t.socket, "-c", strconv.Itoa(conns), "-t", "1"}
	if len(t.body) > 0 {
		body := filepath.Join(dir, "body")
		if err := os.WriteFile(body, t.body, 0o600); err != nil {
			r.Errors = 1
			return r
		}
		args = append(args, "-d", body)
	}
	url := "http://wicket" + t.path
	if warmup > 0 {
		exec.CommandContext(ctx, bin, append(args, "-D", secs(warmup), url)...).Run()
	}
	logf := filepath.Join(dir, "log")
	c := exec.CommandContext(ctx, bin, append(args, "-D", secs(dur), "--log-file", logf, url)...)
	cpu0 := procCPU(t.pid)
	out, err := c.CombinedOutput()
	cpu1 := procCPU(t.pid)
	m := h2Requests.FindStringSubmatch(string(out))
	if err != nil || m == nil {
		fmt.Fprintf(os.Stderr, "h2load %s: %v %s\n", t.name, err, lastLine(out))
		r.Errors = 1
		return r
	}
	done, _ := strconv.ParseInt(m[3], 10, 64)
	ok, _ := strconv.ParseInt(m[4], 10, 64)
	r.Requests, r.Errors = ok, done-ok
	for _, i := range []int{5, 6, 7} {
		n, _ := strconv.ParseInt(m[i], 10, 64)
		r.Errors += n
	}
	// h2load's own -D is the measured time; the process also spends a
	// little on connecting, which is within the CPU sample too.
	r.Seconds = dur.Seconds()
	r.RPS = float64(r.Requests) / r.Seconds
	if r.Requests > 0 && t.pid > 0 {
		r.CPUusPerReq = (cpu1 - cpu0).Seconds() * 1e6 / float64(r.Requests)
	}
	lat, non2xx := readH2Log(logf)
	r.Errors += non2xx
	if len(lat) > 0 {
		slices.Sort(lat)
		q := func(p float64) float64 { return lat[int(p*float64(len(lat)-1))] }
		r.P50us, r.P90us, r.P99us = q(0.50), q(0.90), q(0.99)
	}
	return r
}

// readH2Log reads h2load's per-request log: start, status, microseconds.
func readH2Log(path string) (lat []float64, non2xx int64) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		f := strings.Split(s.Text(), "\t")
		if len(f) < 3 {
			continue
		}
		if !strings.HasPrefix(f[1], "2") {
			non2xx++
			continue
		}
		us, err := strconv.ParseFloat(f[2], 64)
		if err == nil {
			lat = append(lat, us)
		}
	}
	return lat, non2xx
}

func secs(d time.Duration) string { return strconv.FormatFloat(d.Seconds(), 'f', -1, 64) }

// procCPU is a process's user+system CPU time so far, from
// /proc/PID/stat (fields 14 and 15, in clock ticks of 1/100 s on Linux).
func procCPU(pid int) time.Duration {
	if pid <= 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name (field 2) may hold spaces: count from its ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	const clkTck = 100 // USER_HZ, fixed at 100 in the Linux ABI
	return time.Duration(ut+st) * time.Second / clkTck
}
