package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// target is one HTTP request the load client repeats over a Unix socket.
type target struct {
	name    string
	socket  string
	request []byte // the full HTTP/1.1 request, keep-alive
	path    string // for h2load
	body    []byte // for h2load: POST when set
	pid     int    // the serving process, whose CPU time is sampled
}

func newTarget(name, socket, method, path string, body []byte, headers ...string) target {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: wicket\r\n", method, path)
	for _, h := range headers {
		b.WriteString(h + "\r\n")
	}
	if body != nil {
		fmt.Fprintf(&b, "Content-Length: %d\r\n", len(body))
	}
	b.WriteString("\r\n")
	b.Write(body)
	return target{name: name, socket: socket, request: b.Bytes(), path: path, body: body}
}

// loadResult is what one load run measured.
type loadResult struct {
	Name     string  `json:"name"`
	Client   string  `json:"client"`
	Conns    int     `json:"conns"`
	Seconds  float64 `json:"seconds"`
	Requests int64   `json:"requests"`
	Errors   int64   `json:"errors"`
	RPS      float64 `json:"rps"`
	P50us    float64 `json:"p50_us"`
	P90us    float64 `json:"p90_us"`
	P99us    float64 `json:"p99_us"`
	RSSKiB   int64   `json:"rss_kib,omitempty"`
	// CPUusPerReq is the serving process's user+system CPU time over
	// the measured period divided by the requests served in it.
	CPUusPerReq float64 `json:"cpu_us_per_req,omitempty"`
	// ClientCPUusPerReq is the same for the load client's process (this
	// one: the harness's client or go-spiffe's), not measured for h2load.
	ClientCPUusPerReq float64 `json:"client_cpu_us_per_req,omitempty"`

	serverCPU, clientCPU time.Duration // over the measured window (measure)
	hasPID               bool
}

// runLoad keeps conns keep-alive connections busy with t's request: a
// warm-up period first (not counted), then dur of measurement. It is a
// deliberately small client (prebuilt request bytes, minimal response
// parsing) so that the server, not the client, is what is measured.
func runLoad(ctx context.Context, t target, conns int, warmup, dur time.Duration) loadResult {
	var (
		measuring atomic.Bool
		stop      atomic.Bool
		reqs      atomic.Int64
		errs      atomic.Int64
		mu        sync.Mutex
		lat       []time.Duration
		wg        sync.WaitGroup
	)
	for i := 0; i < conns; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := make([]time.Duration, 0, 4096)
			var c net.Conn
			var br *bufio.Reader
			for !stop.Load() && ctx.Err() == nil {
				if c == nil {
					var err error
					c, err = net.Dial("unix", t.socket)
					if err != nil {
						if measuring.Load() {
							errs.Add(1)
						}
						time.Sleep(10 * time.Millisecond)
						continue
					}
					br = bufio.NewReaderSize(c, 16<<10)
				}
				c.SetDeadline(time.Now().Add(10 * time.Second))
				start := time.Now()
				err := roundTrip(c, br, t.request)
				d := time.Since(start)
				if !measuring.Load() {
					if err != nil {
						c.Close()
						c = nil
					}
					continue
				}
				if err != nil {
					errs.Add(1)
					c.Close()
					c = nil
					continue
				}
				reqs.Add(1)
				local = append(local, d)
			}
			if c != nil {
				c.Close()
			}
			mu.Lock()
			lat = append(lat, local...)
			mu.Unlock()
		}()
	}
	r := loadResult{Name: t.name, Client: "harness", Conns: conns}
	r.measure(ctx, t.pid, warmup, dur, &measuring, &stop, &wg)
	r.Requests, r.Errors = reqs.Load(), errs.Load()
	r.summarize(lat)
	return r
}

// measure is the timing every load loop shares: the warm-up (callers
// already running, not counted), then dur with measuring set and the
// server's (pid) and this process's CPU sampled around it; then it stops
// the callers and waits for them.
func (r *loadResult) measure(ctx context.Context, pid int, warmup, dur time.Duration, measuring, stop *atomic.Bool, wg *sync.WaitGroup) {
	sleepCtx(ctx, warmup)
	self := os.Getpid()
	cpu0, ccpu0 := procCPU(pid), procCPU(self)
	measuring.Store(true)
	start := time.Now()
	sleepCtx(ctx, dur)
	measuring.Store(false)
	elapsed := time.Since(start)
	cpu1, ccpu1 := procCPU(pid), procCPU(self)
	stop.Store(true)
	wg.Wait()
	r.Seconds = elapsed.Seconds()
	r.serverCPU, r.clientCPU, r.hasPID = cpu1-cpu0, ccpu1-ccpu0, pid > 0
}

// summarize turns the counts measure left and the callers' latencies
// into rates, CPU per request and quantiles.
func (r *loadResult) summarize(lat []time.Duration) {
	r.RPS = float64(r.Requests) / r.Seconds
	if r.Requests > 0 && r.hasPID {
		r.CPUusPerReq = r.serverCPU.Seconds() * 1e6 / float64(r.Requests)
		r.ClientCPUusPerReq = r.clientCPU.Seconds() * 1e6 / float64(r.Requests)
	}
	if len(lat) > 0 {
		slices.Sort(lat)
		q := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Nanoseconds()) / 1e3 }
		r.P50us, r.P90us, r.P99us = q(0.50), q(0.90), q(0.99)
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

var errStatus = errors.New("non-2xx status")

// roundTrip writes one request and reads one response (Content-Length
// framed, as both servers answer), returning an error for non-2xx.
func roundTrip(c net.Conn, br *bufio.Reader, req []byte) error {
	if _, err := c.Write(req); err != nil {
		return err
	}
	status, err := br.ReadSlice('\n')
	if err != nil {
		return err
	}
	ok := len(status) > 12 && status[9] == '2'
	n := -1
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return err
		}
		if len(line) <= 2 {
			break
		}
		if len(line) > 16 && (line[0] == 'C' || line[0] == 'c') && strings.EqualFold(string(line[:15]), "Content-Length:") {
			n, _ = strconv.Atoi(strings.TrimSpace(string(line[15:])))
		}
	}
	if n < 0 {
		return errors.New("response without Content-Length")
	}
	if _, err := br.Discard(n); err != nil {
		return err
	}
	if !ok {
		return errStatus
	}
	return nil
}

// rssKiB reads a process's resident set size.
func rssKiB(pid int) int64 { return procStatusKiB(pid, "VmRSS:") }

// anonKiB reads the anonymous part of the resident set: the heap, stacks
// and other private memory, without the binary's file-backed text pages
// (shared between processes and reclaimable).
func anonKiB(pid int) int64 { return procStatusKiB(pid, "RssAnon:") }

func procStatusKiB(pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				n, _ := strconv.ParseInt(f[0], 10, 64)
				return n
			}
		}
	}
	return 0
}

// holdIdle opens n connections to socket, completes one request on each
// and leaves them open and idle (keep-alive), to measure memory under many
// open connections. It returns how many it holds and a function closing them.
func holdIdle(socket string, n int) (int, func()) {
	var cs []net.Conn
	req := newTarget("", socket, "GET", "/v1/health", nil).request
	for i := 0; i < n; i++ {
		c, err := net.Dial("unix", socket)
		if err != nil {
			break
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if err := roundTrip(c, bufio.NewReader(c), req); err != nil {
			c.Close()
			break
		}
		cs = append(cs, c)
	}
	return len(cs), func() {
		for _, c := range cs {
			c.Close()
		}
	}
}
