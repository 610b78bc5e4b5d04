package soak

import (
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wicket-sh/wicket/internal/wait"
)

// TestLongPollFanOut1000 is the long-poll side of "thousands of concurrent
// connections": 1,000 callers, each on its own connection, wait on the
// metadata with the current ETag; one change made through the issuer wakes
// every one of them with the new metadata, and afterwards no waiter and no
// connection is left behind and memory stayed bounded.
func TestLongPollFanOut1000(t *testing.T) {
	skipShort(t)
	const n = 1000
	raiseNoFile(t, 2*n+1024)
	sys := startSystem(t, agentConfig{MaxConns: 2 * n}, "")
	a := sys.agent
	c := newClient(a.api, 1)
	etag := c.do("GET", "/v1/metadata", "", nil).header.Get("Etag")
	c.close()
	if etag == "" {
		t.Fatal("metadata has no ETag")
	}

	var wg sync.WaitGroup
	var woken atomic.Int64
	var failures tally
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := newClient(a.api, 1)
			defer c.close()
			r := c.do("GET", "/v1/metadata?wait=true&timeout=100s&etag="+etag, "", nil)
			if !failures.add(r, 200) {
				return
			}
			if r.header.Get("Etag") == etag || !strings.Contains(string(r.body), `"fanout":"woken"`) {
				failures.fail("returned without the change: " + r.String())
				return
			}
			woken.Add(1)
		}()
	}
	if !wait.Until(60*time.Second, func() bool { return a.status(t).Upstream.Metadata.Waiters >= n }) {
		t.Fatalf("only %d of %d long polls waiting", a.status(t).Upstream.Metadata.Waiters, n)
	}
	rssWaiting := checkRSS(t, a.proc, "with 1,000 long polls waiting")
	sys.issuer.cli(t, "machine", "update", "dev/dev-app/soak-1", "--tag", "fanout=woken")
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(90 * time.Second):
		t.Fatalf("long polls still waiting 90s after the change: %d woken", woken.Load())
	}
	t.Logf("%d woken; %s; RSS while waiting %d KiB", woken.Load(), &failures, rssWaiting)
	if woken.Load() != n || failures.failed.Load() != 0 {
		t.Errorf("%d of %d long polls woken by the change: %s", woken.Load(), n, &failures)
	}
	if !wait.Until(10*time.Second, func() bool {
		s := a.status(t)
		return s.Sockets["api"].Open == 0 && s.Upstream.Metadata.Waiters == 0
	}) {
		s := a.status(t)
		t.Errorf("left behind: %d connections, %d waiters", s.Sockets["api"].Open, s.Upstream.Metadata.Waiters)
	}
	a.healthy(t)
	checkRSS(t, a.proc, "after the fan-out")
}
