package soak

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wicket-sh/wicket/internal/wait"
)

// TestSoak_MixedLoad is the sustained-load test: every kind of guest API
// traffic at once — keep-alive metadata and cached tokens, a new
// connection per request, long polls woken by metadata changes made
// through the issuer, a stream of new audiences evicting old ones from the
// token cache — with a config reload every second, for 5s by default or
// the -soak duration. Nothing fails, every reload applies, connections and
// long polls are all released at the end, and the agent's RSS stays under
// the bound at every sample.
func TestSoak_MixedLoad(t *testing.T) {
	skipShort(t)
	d := sustained(t, 5*time.Second)
	const maxAudiences = 200
	sys := startSystem(t, agentConfig{MaxAudiences: maxAudiences}, issuerES256)
	a, is := sys.agent, sys.issuer
	c := newClient(a.api, 8)
	defer c.close()
	cachedAuds := make([]string, 50)
	for i := range cachedAuds {
		cachedAuds[i] = fmt.Sprintf("soak-mixed-%02d", i)
		if r := c.token(cachedAuds[i]); r.status != 200 {
			t.Fatalf("warm %s: %s", cachedAuds[i], r)
		}
	}
	t.Logf("sustained load for %s", d)

	var keep, churn, polls, fresh tally
	var newAud atomic.Int64
	var woken atomic.Int64
	stop := background(t, d, 8, 1<<30, func(ctx context.Context, w, i int) {
		switch w {
		case 0, 1, 2, 3:
			switch i % 5 {
			case 0:
				keep.add(c.do("GET", "/v1/metadata", "", nil), 200)
			case 1:
				keep.add(c.do("GET", "/v1/metadata/tags", "", nil), 200)
			case 2:
				keep.add(c.do("GET", "/v1/metadata/region", "", nil), 200)
			case 3:
				keep.add(c.token(cachedAuds[(w*7+i)%len(cachedAuds)]), 200)
			default:
				keep.add(c.do("GET", "/v1/health", "", nil), 200)
			}
		case 4, 5:
			nc := newClient(a.api, 1)
			churn.add(nc.do("GET", "/v1/metadata/region", "", nil), 200)
			nc.close()
		case 6:
			cur := c.do("GET", "/v1/metadata", "", nil)
			if !polls.add(cur, 200) {
				return
			}
			etag := cur.header.Get("Etag")
			r := c.do("GET", "/v1/metadata?wait=true&timeout=1s&etag="+etag, "", nil)
			if polls.add(r, 200) && r.header.Get("Etag") != etag {
				woken.Add(1)
			}
		case 7:
			// New audiences at a modest pace: each one is an issuer call,
			// and past max_audiences each evicts the oldest.
			fresh.add(c.token(fmt.Sprintf("soak-fresh-%d", newAud.Add(1))), 200)
			time.Sleep(20 * time.Millisecond)
		}
	})

	// Meanwhile: metadata changes through the issuer, config reloads (by
	// SIGHUP and admin command in turn, policy and limits changed each
	// time), and samples of the agent's memory and connections.
	adminC := newClient(a.admin, 1)
	defer adminC.close()
	var maxRSS, firstRSS, lastRSS int64
	var maxOpen int64
	reloads := 0
	start := time.Now()
	nextChange := start
	for n := 0; n < 1<<20 && time.Since(start) < d; n++ {
		time.Sleep(500 * time.Millisecond)
		if time.Now().After(nextChange) {
			is.cli(t, "machine", "update", "dev/dev-app/soak-1", "--tag", fmt.Sprintf("round=%d", n))
			nextChange = time.Now().Add(2 * time.Second)
		}
		if n%2 == 1 {
			reloads++
			cfg := reloadVariant(reloads)
			cfg.MaxAudiences = maxAudiences
			a.writeConfig(t, cfg, is)
			a.reload(t, adminC, reloads%2 == 1, uint64(1+reloads))
		}
		rss := a.rssKiB(t)
		if firstRSS == 0 {
			firstRSS = rss
		}
		lastRSS, maxRSS = rss, max(maxRSS, rss)
		maxOpen = max(maxOpen, a.status(t).Sockets["api"].Open)
		if !a.alive() {
			break
		}
	}
	stop()
	a.checkAlive(t)

	t.Logf("keep-alive: %s", &keep)
	t.Logf("new connection per request: %s", &churn)
	t.Logf("long polls: %s, %d woken by a change", &polls, woken.Load())
	t.Logf("new audiences: %s", &fresh)
	t.Logf("RSS first %d KiB, last %d KiB, max %d KiB; max open connections %d", firstRSS, lastRSS, maxRSS, maxOpen)
	for name, s := range map[string]*tally{"keep-alive": &keep, "new connection": &churn, "long poll": &polls, "new audience": &fresh} {
		if s.failed.Load() != 0 {
			t.Errorf("%s requests failed: %s", name, s)
		}
		if s.ok.Load() == 0 {
			t.Errorf("no %s request completed", name)
		}
	}
	if woken.Load() == 0 {
		t.Error("no long poll saw a metadata change made through the issuer")
	}
	if maxRSS > rssBoundKiB {
		t.Errorf("agent RSS reached %d KiB, bound %d KiB", maxRSS, rssBoundKiB)
	}
	st := a.status(t)
	t.Logf("%d reloads, generation %d", reloads, st.ConfigGeneration)
	if st.ConfigGeneration != uint64(1+reloads) || st.Counters["reloads_failed"] != 0 {
		t.Errorf("config_generation %d after %d reloads (%d failed)", st.ConfigGeneration, reloads, st.Counters["reloads_failed"])
	}
	if st.Upstream.CachedAudiences > maxAudiences {
		t.Errorf("token cache holds %d audiences, cap %d", st.Upstream.CachedAudiences, maxAudiences)
	}
	c.close()
	if !wait.Until(10*time.Second, func() bool {
		s := a.status(t)
		return s.Sockets["api"].Open == 0 && s.Upstream.Metadata.Waiters == 0
	}) {
		s := a.status(t)
		t.Errorf("not released after the load: %d connections open, %d long polls waiting", s.Sockets["api"].Open, s.Upstream.Metadata.Waiters)
	}
	a.healthy(t)
	checkRSS(t, a.proc, "after the sustained load")
}
