package soak

import (
	"context"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wicket-sh/wicket/internal/wait"
)

// trickle is one slow client: it sends head at once, then drip one byte at
// a time, and records what the agent sent back and when it hung up.
type trickle struct {
	kind    string
	reply   []byte
	elapsed time.Duration
	sent    int
	err     error
}

func runTrickle(socket, kind, head string, drip []byte, every time.Duration, limit time.Duration) trickle {
	res := trickle{kind: kind}
	c, err := net.DialTimeout("unix", socket, 5*time.Second)
	if err != nil {
		res.err = err
		return res
	}
	defer c.Close()
	start := time.Now()
	c.SetDeadline(start.Add(limit))
	if _, err := io.WriteString(c, head); err != nil {
		res.err = err
		return res
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < len(drip); i++ {
			select {
			case <-stop:
				return
			case <-time.After(every):
			}
			if _, err := c.Write(drip[i : i+1]); err != nil {
				return // the agent hung up
			}
			res.sent++
		}
	}()
	res.reply, res.err = io.ReadAll(c)
	res.elapsed = time.Since(start)
	close(stop)
	wg.Wait()
	if ne, ok := res.err.(net.Error); ok && ne.Timeout() {
		res.err = fmt.Errorf("still connected after %s", limit)
	} else if res.err != nil && len(res.reply) > 0 {
		res.err = nil // reset after the reply: the agent closed with input unread
	} else if res.err != nil && strings.Contains(res.err.Error(), "connection reset") {
		res.err = nil // hung up without a reply
	}
	return res
}

// TestSlowloris_HeadersAndBodies guards S-limits' read-header and body
// timeouts: clients that trickle their headers or their body one byte at a
// time are cut off at read_header_timeout / body_timeout (1s here) however
// long they keep trickling, while normal clients on the same socket keep
// getting 200s without a single error.
func TestSlowloris_HeadersAndBodies(t *testing.T) {
	skipShort(t)
	const timeout = time.Second
	sys := startSystem(t, agentConfig{ReadHeaderTimeout: timeout.String(), BodyTimeout: timeout.String()}, "")
	a := sys.agent
	warm := newClient(a.api, 1)
	if r := warm.token("soak-slowloris"); r.status != 200 {
		t.Fatalf("warm token: %s", r)
	}
	warm.close()

	// Normal clients, before, during and after the slow ones.
	var normal tally
	normalC := newClient(a.api, 8)
	defer normalC.close()
	stopNormal := background(t, 60*time.Second, 6, 200000, func(ctx context.Context, w, i int) {
		switch i % 3 {
		case 0:
			normal.add(normalC.do("GET", "/v1/metadata", "", nil), 200)
		case 1:
			normal.add(normalC.token("soak-slowloris"), 200)
		default:
			normal.add(normalC.do("GET", "/v1/metadata/region", "", nil), 200)
		}
	})

	const perKind = 20
	drip := []byte(strings.Repeat("a", 150)) // 15s of dripping at most
	every := 100 * time.Millisecond
	limit := 15 * time.Second
	kinds := []struct {
		name, head string
		// Statuses the reply may have; 0: hung up without one. net/http
		// answers a header cut short either way.
		want []int
	}{
		{"silent", "", []int{0}}, // connects and never sends a byte
		{"header", "GET /v1/health HTTP/1.1\r\nHost: wicket\r\nX-Slow: ", []int{0, 400}},
		{"header-line", "GET /v1/metadata HTTP/1.1\r\n", []int{0, 400}},
		{"body", "POST /v1/tokens/oidc HTTP/1.1\r\nHost: wicket\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n{\"aud\":\"", []int{408}},
		{"chunked-body", "POST /v1/tokens/oidc HTTP/1.1\r\nHost: wicket\r\nTransfer-Encoding: chunked\r\n\r\n100\r\n", []int{408}},
	}
	time.Sleep(200 * time.Millisecond) // normal load is under way
	okBefore := normal.ok.Load()
	results := make(chan trickle, perKind*len(kinds))
	var wg sync.WaitGroup
	for _, k := range kinds {
		for i := 0; i < perKind; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				d := drip
				if k.head == "" {
					d = nil
				}
				results <- runTrickle(a.api, k.name, k.head, d, every, limit)
			}()
		}
	}
	wg.Wait()
	close(results)
	okDuring := normal.ok.Load() - okBefore
	time.Sleep(200 * time.Millisecond)
	stopNormal()

	want := map[string][]int{}
	for _, k := range kinds {
		want[k.name] = k.want
	}
	var longest time.Duration
	n := 0
	for r := range results {
		n++
		longest = max(longest, r.elapsed)
		if r.err != nil {
			t.Errorf("%s trickler: %v after %s (sent %d bytes)", r.kind, r.err, r.elapsed, r.sent)
			continue
		}
		// Cut at the timeout: not before it (the timeout is what cut it),
		// and long before the client would have stopped on its own.
		if r.elapsed < timeout-100*time.Millisecond || r.elapsed > 10*timeout {
			t.Errorf("%s trickler cut after %s (sent %d bytes), want about %s", r.kind, r.elapsed, r.sent, timeout)
		}
		if r.kind != "silent" && r.sent >= len(drip) {
			t.Errorf("%s trickler was never cut: sent all %d bytes", r.kind, r.sent)
		}
		status := 0
		if len(r.reply) > 0 {
			rs, _, err := parseReplies(r.reply, "POST")
			if err != nil || len(rs) != 1 {
				t.Errorf("%s trickler: reply %q: %v", r.kind, r.reply, err)
				continue
			}
			status = rs[0].StatusCode
		}
		if !slices.Contains(want[r.kind], status) {
			t.Errorf("%s trickler: status %d, want %d (reply %q)", r.kind, status, want[r.kind], r.reply)
		}
		if status == 408 && !strings.HasSuffix(string(r.reply), "\r\n\r\n{\"error\":\"request timeout\",\"code\":\"request_timeout\"}\n") {
			t.Errorf("%s trickler: 408 body %q", r.kind, r.reply)
		}
	}
	if n != perKind*len(kinds) {
		t.Errorf("%d trickler results, want %d", n, perKind*len(kinds))
	}
	t.Logf("%d tricklers, longest connection %s; normal clients: %s (%d during the slow ones)", n, longest, &normal, okDuring)

	if normal.failed.Load() != 0 {
		t.Errorf("normal clients failed: %s", &normal)
	}
	if okDuring == 0 {
		t.Error("no normal request completed while the slow clients were connected")
	}
	normalC.close()
	a.healthy(t)
	if !wait.Until(10*time.Second, func() bool { return a.status(t).Sockets["api"].Open == 0 }) {
		t.Errorf("connections still open after every client left: %d", a.status(t).Sockets["api"].Open)
	}
	checkRSS(t, a.proc, "after slowloris")
}
