package soak

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/wicket-sh/wicket/internal/sockettest"
	"github.com/wicket-sh/wicket/internal/wait"
)

// raiseNoFile lifts this process's open-file limit to at least need (the
// agent child inherits it), or skips the test if the hard limit is lower
// and cannot be raised.
func raiseNoFile(t *testing.T, need uint64) {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Max < need {
		lim.Max = need
	}
	lim.Cur = max(lim.Cur, need)
	// Setting it explicitly also makes os/exec pass it on to children
	// instead of restoring the soft limit the process started with.
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		sockettest.Unavailable(t, "RLIMIT_NOFILE cannot be raised to %d (%v); run as root or raise the hard limit", need, err)
	}
}

// TestBurst5000Connections is the "thousands of concurrent connections →
// cap holds, nothing crashes, memory bounded" load test of docs/soak.md
// (S-limits): 5,000 clients connect to the API socket at once and hold on;
// the agent never has more than max_conns open, closes the excess at once
// and counts it, serves the ones it kept, and answers afterwards.
func TestBurst5000Connections(t *testing.T) {
	skipShort(t)
	const (
		attempts = 5000
		maxConns = 512
	)
	raiseNoFile(t, attempts+2048)
	sys := startSystem(t, agentConfig{MaxConns: maxConns, ReadHeaderTimeout: "60s"}, "")
	a := sys.agent
	before := a.status(t).Sockets["api"]

	// Sample the admin status while the burst runs: the cap must hold at
	// every sample, not only at the end.
	var maxOpen atomic.Int64
	var samples atomic.Int64
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		c := newClient(a.admin, 1)
		defer c.close()
		for i := 0; i < 10000; i++ {
			select {
			case <-stopSampling:
				return
			case <-time.After(20 * time.Millisecond):
			}
			r := c.do("GET", "/v1/status", "", nil)
			if r.err != nil || r.status != 200 {
				continue
			}
			if open := openOf(r.body); open >= 0 {
				samples.Add(1)
				if open > maxOpen.Load() { // the only writer
					maxOpen.Store(open)
				}
			}
		}
	}()

	// Phase 1: every client connects at the same instant and holds its
	// connection without sending anything.
	var (
		wg                     sync.WaitGroup
		start                  = make(chan struct{})
		release                = make(chan struct{})
		done, dialed, dialErrs atomic.Int64
		served                 atomic.Int64
		closedEarly            atomic.Int64 // closed by the agent before any request: over the cap
		closedLate             atomic.Int64 // closed by the agent after the release
		unexpected             tally        // anything else
	)
	for i := 0; i < attempts; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			c, err := net.DialTimeout("unix", a.api, 10*time.Second)
			done.Add(1)
			if err != nil {
				// A full listen backlog refuses at connect time (EAGAIN):
				// an excess attempt the kernel turned away for us.
				dialErrs.Add(1)
				return
			}
			dialed.Add(1)
			defer c.Close()
			// A connection over the cap is closed by the agent at once: the
			// read ends (EOF or reset) before the release.
			c.SetReadDeadline(time.Now().Add(60 * time.Second))
			type readResult struct {
				b   byte
				err error
			}
			first := make(chan readResult, 1)
			go func() {
				var b [1]byte
				_, err := io.ReadFull(c, b[:])
				first <- readResult{b[0], err}
			}()
			var got readResult
			select {
			case got = <-first:
				if got.err == nil {
					unexpected.fail("agent sent bytes before any request")
					return
				}
				closedEarly.Add(1)
				return
			case <-release:
			}
			// Phase 2: kept connections make one request each.
			c.SetDeadline(time.Now().Add(30 * time.Second))
			if _, err := c.Write([]byte("GET /v1/health HTTP/1.1\r\nHost: wicket\r\nConnection: close\r\n\r\n")); err != nil {
				closedLate.Add(1)
				return
			}
			got = <-first
			if got.err != nil {
				closedLate.Add(1)
				return
			}
			resp, err := http.ReadResponse(bufio.NewReader(io.MultiReader(bytes.NewReader([]byte{got.b}), c)), nil)
			if err != nil {
				unexpected.fail(err.Error())
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				served.Add(1)
			} else {
				unexpected.fail(resp.Status)
			}
		}()
	}
	close(start)

	// Wait (bounded) until every attempt connected or failed and the agent
	// has dealt with every connection it was handed, then hold a moment
	// longer so the sampler sees the steady state.
	settled := wait.Until(60*time.Second, func() bool {
		if done.Load() < attempts {
			return false
		}
		st := a.status(t).Sockets["api"]
		return int64(st.Accepted-before.Accepted+st.Rejected-before.Rejected) >= dialed.Load()
	})
	if !settled {
		st := a.status(t).Sockets["api"]
		t.Errorf("burst did not settle: %d/%d attempts done, %d dialed, agent accepted %d rejected %d",
			done.Load(), attempts, dialed.Load(), st.Accepted-before.Accepted, st.Rejected-before.Rejected)
	}
	time.Sleep(300 * time.Millisecond)
	mid := a.status(t).Sockets["api"]
	rssHeld := checkRSS(t, a.proc, "holding the burst")
	close(release)
	waitDone := make(chan struct{})
	go func() { wg.Wait(); close(waitDone) }()
	select {
	case <-waitDone:
	case <-time.After(90 * time.Second):
		t.Fatal("burst clients still running after 90s")
	}
	close(stopSampling)
	<-sampled

	after := a.status(t).Sockets["api"]
	rejected := after.Rejected - before.Rejected
	t.Logf("attempts %d: dialed %d (connect refused %d), served %d, closed by the agent %d before any request and %d after, unexpected %d; agent accepted %d rejected %d; open max sampled %d over %d samples, open while held %d; RSS held %d KiB",
		attempts, dialed.Load(), dialErrs.Load(), served.Load(), closedEarly.Load(), closedLate.Load(), unexpected.failed.Load(),
		after.Accepted-before.Accepted, rejected, maxOpen.Load(), samples.Load(), mid.Open, rssHeld)

	if samples.Load() == 0 {
		t.Error("no status sample taken during the burst")
	}
	if m := maxOpen.Load(); m > maxConns {
		t.Errorf("cap broken: %d connections open at one sample, cap %d", m, maxConns)
	}
	if mid.Open > maxConns {
		t.Errorf("cap broken while held: %d open, cap %d", mid.Open, maxConns)
	}
	if rejected == 0 {
		t.Error("status counted no rejected connection")
	}
	if m := a.metric(t, `wicket_connections_rejected_total{socket="api"}`); m < float64(rejected) {
		t.Errorf("metric wicket_connections_rejected_total = %v, status says %d", m, rejected)
	}
	if served.Load() == 0 || served.Load() > maxConns {
		t.Errorf("served %d kept connections, want 1..%d", served.Load(), maxConns)
	}
	if acc := int64(after.Accepted - before.Accepted); served.Load() != acc {
		t.Errorf("agent accepted %d connections but served %d: every kept connection must be answered", acc, served.Load())
	}
	if unexpected.failed.Load() != 0 {
		t.Errorf("unexpected outcomes: %s", &unexpected)
	}
	if closedEarly.Load() == 0 {
		t.Error("no client saw its connection closed at once")
	}
	if got := dialErrs.Load() + closedEarly.Load() + closedLate.Load() + served.Load() + unexpected.failed.Load(); got != attempts {
		t.Errorf("outcomes add up to %d, want %d", got, attempts)
	}

	// Afterwards: alive, memory bounded, health answers, every slot freed.
	a.healthy(t)
	checkRSS(t, a.proc, "after the burst")
	if !wait.Until(10*time.Second, func() bool { return a.status(t).Sockets["api"].Open == 0 }) {
		t.Errorf("api connections still open after every client left: %d", a.status(t).Sockets["api"].Open)
	}
}

// openOf extracts sockets.api.open from a status body, or -1.
func openOf(body []byte) int64 {
	var s status
	if err := json.Unmarshal(body, &s); err != nil {
		return -1
	}
	api, ok := s.Sockets["api"]
	if !ok {
		return -1
	}
	return api.Open
}
