package soak

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/wicket-sh/wicket/internal/wait"
)

// unavailableBody is the exact reply for a token the agent cannot get:
// generic message, stable code, nothing about why.
const unavailableBody = `{"error":"token unavailable","code":"upstream_unavailable"}` + "\n"

// TestIssuerKilledAndRestarted is the fault "issuer down → cached tokens
// still served, clear 503 after": under load, the issuer first hangs
// (SIGSTOP, then SIGCONT) and is then killed with SIGKILL; cached metadata
// and cached tokens keep being served throughout, an audience never asked
// for gets the exact 503 (after the request timeout while the issuer
// hangs, at once while it is dead); the issuer restarts on the same
// address and state, and the same agent process recovers by itself: new
// audiences work again and a metadata long poll wakes on a change made
// after the restart.
func TestIssuerKilledAndRestarted(t *testing.T) {
	skipShort(t)
	const requestTimeout = time.Second
	sys := startSystem(t, agentConfig{RequestTimeout: requestTimeout.String()}, "")
	a, is := sys.agent, sys.issuer
	agentPID := a.cmd.Process.Pid
	c := newClient(a.api, 16)
	defer c.close()

	cached := map[string]string{}
	for _, aud := range []string{"soak-cached-a", "soak-cached-b", "soak-cached-c"} {
		r := c.token(aud)
		if r.status != 200 {
			t.Fatalf("warm %s: %s", aud, r)
		}
		cached[aud] = string(r.body)
	}
	meta := c.do("GET", "/v1/metadata", "", nil)
	if meta.status != 200 {
		t.Fatalf("metadata: %s", meta)
	}

	// Load on what the agent holds: it must never fail, before, during or
	// after the outage. Tokens must be the very ones cached.
	var load tally
	var phase atomic.Int32 // 0 issuer up, 1 hung or dead, 2 restarted, 3 metadata changed
	var duringDown atomic.Int64
	auds := []string{"soak-cached-a", "soak-cached-b", "soak-cached-c"}
	stopLoad := background(t, 3*time.Minute, 6, 10000000, func(ctx context.Context, w, i int) {
		var r reply
		switch i % 3 {
		case 0:
			r = c.do("GET", "/v1/metadata", "", nil)
			if load.add(r, 200) && phase.Load() < 3 && string(r.body) != string(meta.body) {
				load.fail("metadata changed during the outage")
			}
		case 1:
			load.add(c.do("GET", "/v1/metadata/region", "", nil), 200)
		default:
			aud := auds[(w+i)%len(auds)]
			r = c.token(aud)
			if load.add(r, 200) && string(r.body) != cached[aud] {
				load.fail("a cached audience got a different token")
			}
		}
		if phase.Load() == 1 {
			duringDown.Add(1)
		}
	})
	time.Sleep(200 * time.Millisecond)

	// First the issuer hangs (SIGSTOP): it still accepts connections but
	// never answers. New audiences get the same 503 once the agent's
	// request_timeout passes; cached ones keep flowing meanwhile.
	is.freeze(t)
	t.Cleanup(func() { is.cmd.Process.Signal(syscall.SIGCONT) })
	phase.Store(1)
	var hung sync.WaitGroup
	for i := 0; i < 3; i++ {
		hung.Add(1)
		go func() {
			defer hung.Done()
			start := time.Now()
			r := c.token(fmt.Sprintf("soak-new-while-hung-%d", i))
			if r.err != nil || r.status != 503 || string(r.body) != unavailableBody {
				t.Errorf("new audience with the issuer hung: %s, want 503 %q", r, unavailableBody)
			}
			if el := time.Since(start); el < requestTimeout-100*time.Millisecond {
				t.Errorf("503 after %s, before the %s request timeout: the issuer was not waited for", el, requestTimeout)
			}
		}()
	}
	hung.Wait()
	is.cmd.Process.Signal(syscall.SIGCONT)
	phase.Store(0)
	var back reply
	if !wait.Until(30*time.Second, func() bool {
		back = c.token("soak-new-after-hang")
		return back.status == 200
	}) {
		t.Fatalf("new audience once the issuer runs again: %s", back)
	}
	cachedN := len(cached) + 1 // soak-new-after-hang is cached too now

	is.kill9(t)
	phase.Store(1)
	if !wait.Until(20*time.Second, func() bool { return a.status(t).Upstream.Metadata.Failing }) {
		t.Error("agent status never reported the metadata watch failing")
	}
	// New audiences: the exact generic 503, every time, for the whole outage.
	down := time.Now()
	for i := 0; i < 20; i++ {
		r := c.token("soak-new-during-outage-" + string(rune('a'+i)))
		if r.err != nil || r.status != 503 || string(r.body) != unavailableBody {
			t.Errorf("new audience with the issuer down: %s, want 503 %q", r, unavailableBody)
		}
		if ct := r.header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("503 Content-Type %q", ct)
		}
		time.Sleep(50 * time.Millisecond)
	}
	st := a.status(t)
	if st.Upstream.CachedAudiences != cachedN {
		t.Errorf("cached audiences during the outage: %d, want %d", st.Upstream.CachedAudiences, cachedN)
	}
	t.Logf("issuer dead for %s; %d load requests served while it hung or was dead", time.Since(down).Round(time.Millisecond), duringDown.Load())

	// Restart on the same state and address; the agent is not touched.
	is.start(t)
	phase.Store(2)
	var rec reply
	if !wait.Until(30*time.Second, func() bool {
		rec = c.token("soak-new-after-restart")
		return rec.status == 200
	}) {
		t.Fatalf("new audience after the issuer restart: %s\nagent:\n%s\nissuer:\n%s", rec, a.logs, is.logs)
	}
	if ct := rec.header.Get("Content-Type"); ct != "application/jwt" || strings.Count(string(rec.body), ".") != 2 {
		t.Errorf("token after restart: %q %.60q", ct, rec.body)
	}

	// The metadata long poll works again: a change made through the
	// restarted issuer wakes a waiting caller.
	etag := c.do("GET", "/v1/metadata", "", nil).header.Get("Etag")
	polled := make(chan reply, 1)
	go func() {
		polled <- c.do("GET", "/v1/metadata?wait=true&etag="+etag+"&timeout=45s", "", nil)
	}()
	if !wait.Until(10*time.Second, func() bool { return a.status(t).Upstream.Metadata.Waiters >= 1 }) {
		t.Error("long poll never waited")
	}
	phase.Store(3)
	is.cli(t, "machine", "update", "dev/dev-app/soak-1", "--tag", "color=blue")
	select {
	case r := <-polled:
		if r.err != nil || r.status != 200 || r.header.Get("Etag") == etag || !strings.Contains(string(r.body), `"color":"blue"`) {
			t.Errorf("long poll after restart: %s etag %q (was %q)", r, r.header.Get("Etag"), etag)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("long poll never returned")
	}
	if a.status(t).Upstream.Metadata.Failing {
		t.Error("agent still reports the metadata watch failing")
	}

	time.Sleep(200 * time.Millisecond)
	stopLoad()
	t.Logf("load: %s", &load)
	if load.failed.Load() != 0 {
		t.Errorf("cached metadata and tokens failed: %s", &load)
	}
	if duringDown.Load() == 0 {
		t.Error("no load request ran during the outage")
	}
	if a.cmd.Process.Pid != agentPID {
		t.Fatal("agent was restarted")
	}
	a.healthy(t)
	checkRSS(t, a.proc, "after the issuer outage")
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatalf("socket: %v", err)
	}
	if fi.Mode()&fs.ModeSocket == 0 {
		t.Fatalf("%s is %v, not a socket", path, fi.Mode())
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

// TestAgentKill9AndRestart is the fault "kill -9 and restart → stale
// socket handled" (S-stale): the agent is killed with SIGKILL under load,
// three times; its socket files stay behind, dead; the agent started again
// with the same config replaces them, and the same clients reconnect and
// get 200.
func TestAgentKill9AndRestart(t *testing.T) {
	skipShort(t)
	sys := startSystem(t, agentConfig{}, "")
	a := sys.agent

	// Clients that keep going through every kill and restart: what each
	// saw last, and when it last got a 200.
	const nWorkers = 4
	var lastOK [nWorkers]atomic.Int64 // unix nanos
	var okN, errN atomic.Int64
	c := newClient(a.api, nWorkers)
	defer c.close()
	stopLoad := background(t, 3*time.Minute, nWorkers, 10000000, func(ctx context.Context, w, i int) {
		r := c.do("GET", "/v1/metadata", "", nil)
		if r.err == nil && r.status == 200 {
			okN.Add(1)
			lastOK[w].Store(time.Now().UnixNano())
			return
		}
		errN.Add(1)
		time.Sleep(10 * time.Millisecond) // the agent is down: do not spin
	})

	for round := 1; round <= 3; round++ {
		time.Sleep(200 * time.Millisecond)
		apiIno, admIno := inode(t, a.api), inode(t, a.admin)
		a.kill9(t)
		// The dead agent's sockets stay, and refuse connections.
		if inode(t, a.api) != apiIno || inode(t, a.admin) != admIno {
			t.Fatal("socket files changed after SIGKILL")
		}
		if dialable("unix", a.api) {
			t.Fatal("dead agent's socket still accepts connections")
		}
		// Hard links keep the dead sockets' inodes allocated, so the new
		// ones cannot reuse their numbers: a different inode then proves
		// the agent replaced the file.
		for _, p := range []string{a.api, a.admin} {
			if err := os.Link(p, p+".dead"); err != nil {
				t.Fatal(err)
			}
		}
		killed := time.Now()

		a.start(t)
		newAPI := inode(t, a.api)
		if newAPI == apiIno || inode(t, a.admin) == admIno {
			t.Errorf("round %d: stale socket not replaced (inode %d)", round, newAPI)
		}
		os.Remove(a.api + ".dead")
		os.Remove(a.admin + ".dead")
		if fi, _ := os.Lstat(a.api); fi.Mode().Perm() != 0o660 {
			t.Errorf("round %d: new API socket mode %v, want 0660", round, fi.Mode().Perm())
		}
		// Every client is served again, without being recreated.
		restarted := time.Now()
		if !wait.Until(15*time.Second, func() bool {
			for w := range lastOK {
				if lastOK[w].Load() < restarted.UnixNano() {
					return false
				}
			}
			return true
		}) {
			t.Fatalf("round %d: not every client got a 200 after the restart", round)
		}
		if g := a.status(t).ConfigGeneration; g != 1 {
			t.Errorf("round %d: restarted agent at generation %d", round, g)
		}
		t.Logf("round %d: down %s, every client served again", round, restarted.Sub(killed).Round(time.Millisecond))
	}
	stopLoad()
	t.Logf("load: %d ok, %d failed while the agent was down", okN.Load(), errN.Load())
	if errN.Load() == 0 {
		t.Error("no request failed while the agent was dead: was it really killed?")
	}
	// Steady again: a run of requests on the same client, all 200.
	for i := 0; i < 100; i++ {
		if r := c.do("GET", "/v1/metadata", "", nil); r.err != nil || r.status != 200 {
			t.Fatalf("after the restarts, request %d: %s", i, r)
		}
	}
	a.healthy(t)
	checkRSS(t, a.proc, "after the restarts")
}
