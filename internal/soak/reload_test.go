package soak

import (
	"context"
	"encoding/json"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/wicket-sh/wicket/internal/wait"
)

// reloadVariant is the i-th config of TestReloadUnderLoad: every reload
// changes the policy, the rate limit and the cache cap, and root keeps
// access to everything the load uses.
func reloadVariant(i int) agentConfig {
	return agentConfig{
		TokenRate:    float64(100000 + i),
		TokenBurst:   100000 + i,
		MaxAudiences: 1000 + i,
		Extra: fmt.Sprintf(`[[policy]]
name = "operators-%d"
uids = [0]
allow = ["*"]

[[policy]]
name = "app-%d"
uids = [%d]
allow = ["GET /v1/health", "GET /v1/metadata*"]
`, i, i, 1000+i%50),
	}
}

// reload makes the agent re-read its config, by SIGHUP or by the admin
// command, and checks that it is now at generation want.
func (a *agent) reload(t *testing.T, adminC *client, bySignal bool, want uint64) {
	t.Helper()
	if bySignal {
		a.cmd.Process.Signal(syscall.SIGHUP)
		// Signals are not queued: wait for this one to be applied before
		// the next, so every reload counts.
		if !wait.Until(10*time.Second, func() bool { return a.status(t).ConfigGeneration >= want }) {
			t.Fatalf("SIGHUP reload to generation %d not applied: at %d\n%s", want, a.status(t).ConfigGeneration, a.logs)
		}
		return
	}
	r := adminC.do("POST", "/v1/reload", "", nil)
	var res struct {
		Status          string   `json:"status"`
		Generation      uint64   `json:"generation"`
		RestartRequired []string `json:"restart_required"`
	}
	if r.err != nil || r.status != 200 || json.Unmarshal(r.body, &res) != nil {
		t.Fatalf("admin reload to generation %d: %s\n%s", want, r, a.logs)
	}
	if res.Status != "ok" || res.Generation != want || len(res.RestartRequired) != 0 {
		t.Errorf("admin reload: %s, want generation %d and nothing needing a restart", r.body, want)
	}
}

// TestReloadUnderLoad is the fault "reload under load → zero failed
// requests" (S-reload): metadata, token, long-poll and new-connection load
// runs while the config is reloaded 20 times, alternately by SIGHUP and by
// the admin command, each time with a changed policy and limits. No request
// fails and config_generation ends at 1 + the number of reloads; two more
// reloads of a broken config (one of each kind) fail without touching the
// running config or the load. -soak stretches it to more reloads over the
// given time.
func TestReloadUnderLoad(t *testing.T) {
	skipShort(t)
	reloads := 20
	spacing := 100 * time.Millisecond
	if *soakFor > 0 {
		d := sustained(t, 10*time.Second)
		reloads = max(20, min(100000, int(d/time.Second)))
		spacing = d / time.Duration(reloads)
	}
	sys := startSystem(t, reloadVariant(0), "")
	a := sys.agent
	c := newClient(a.api, 16)
	defer c.close()
	auds := []string{"soak-reload-a", "soak-reload-b", "soak-reload-c", "soak-reload-d"}
	for _, aud := range auds {
		if r := c.token(aud); r.status != 200 {
			t.Fatalf("warm %s: %s", aud, r)
		}
	}
	etag := c.do("GET", "/v1/metadata", "", nil).header.Get("Etag")
	if etag == "" {
		t.Fatal("metadata has no ETag")
	}

	var load, polls, fresh tally
	budget := time.Duration(reloads)*(spacing+2*time.Second) + 30*time.Second
	stopLoad := background(t, budget, 8, 10000000, func(ctx context.Context, w, i int) {
		switch w {
		case 0: // a long poll that times out unchanged, over and over
			r := c.do("GET", "/v1/metadata?wait=true&etag="+etag+"&timeout=1s", "", nil)
			if polls.add(r, 200) && r.header.Get("Etag") != etag {
				polls.fail("long poll returned another ETag: " + r.header.Get("Etag"))
			}
		case 1: // a new connection per request
			nc := newClient(a.api, 1)
			fresh.add(nc.do("GET", "/v1/metadata/region", "", nil), 200)
			nc.close()
		default:
			switch i % 4 {
			case 0:
				load.add(c.do("GET", "/v1/metadata", "", nil), 200)
			case 1:
				load.add(c.do("GET", "/v1/metadata/tags/env", "", nil), 200)
			case 2:
				load.add(c.token(auds[(w+i)%len(auds)]), 200)
			default:
				load.add(c.do("GET", "/v1/health", "", nil), 200)
			}
		}
	})

	adminC := newClient(a.admin, 1)
	defer adminC.close()
	start := time.Now()
	for i := 1; i <= reloads; i++ {
		time.Sleep(spacing)
		a.writeConfig(t, reloadVariant(i), sys.issuer)
		a.reload(t, adminC, i%2 == 1, uint64(1+i))
	}
	elapsed := time.Since(start)

	// A broken config, by both routes: refused, the running config kept,
	// the client told only that it failed, the load unaffected.
	broken := reloadVariant(reloads + 1)
	broken.TokenRate = -1
	a.writeConfig(t, broken, sys.issuer)
	if r := adminC.do("POST", "/v1/reload", "", nil); r.status != 500 || string(r.body) != "{\"error\":\"reload failed\",\"code\":\"reload_failed\"}\n" {
		t.Errorf("admin reload of a broken config: %s", r)
	}
	a.cmd.Process.Signal(syscall.SIGHUP)
	if !wait.Until(10*time.Second, func() bool { return a.status(t).Counters["reloads_failed"] >= 2 }) {
		t.Errorf("SIGHUP with a broken config not counted as a failed reload")
	}
	time.Sleep(300 * time.Millisecond) // load on the last config too
	stopLoad()

	st := a.status(t)
	t.Logf("%d reloads in %s; load: %s; long polls: %s; new connections: %s", reloads, elapsed.Round(time.Millisecond), &load, &polls, &fresh)
	if st.ConfigGeneration != uint64(1+reloads) {
		t.Errorf("config_generation = %d, want %d", st.ConfigGeneration, 1+reloads)
	}
	if st.Counters["reloads_ok"] != uint64(reloads) || st.Counters["reloads_failed"] != 2 {
		t.Errorf("reloads ok %d failed %d, want %d and 2", st.Counters["reloads_ok"], st.Counters["reloads_failed"], reloads)
	}
	if m := a.metric(t, "wicket_config_generation"); m != float64(1+reloads) {
		t.Errorf("metric wicket_config_generation = %v, want %d", m, 1+reloads)
	}
	for name, s := range map[string]*tally{"load": &load, "long polls": &polls, "new connections": &fresh} {
		if s.failed.Load() != 0 {
			t.Errorf("%s: failed requests during reloads: %s", name, s)
		}
		if s.ok.Load() == 0 {
			t.Errorf("%s: no request completed", name)
		}
	}
	if st.Counters["rate_limited"] != 0 || st.Counters["api_denied"] != 0 {
		t.Errorf("load was refused: rate_limited %d api_denied %d", st.Counters["rate_limited"], st.Counters["api_denied"])
	}
	a.healthy(t)
	checkRSS(t, a.proc, "after the reloads")
}
