package issuer

// Cluster mode: issuer replicas sharing state in a real etcd (embedded,
// on loopback), each replica a real issuer on its own listener and admin
// socket.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/sockettest"
	"github.com/wicket-sh/wicket/internal/store"
	"github.com/wicket-sh/wicket/internal/store/bolt"
	"github.com/wicket-sh/wicket/internal/store/etcd"
	"github.com/wicket-sh/wicket/internal/store/etcd/etcdtest"
	"github.com/wicket-sh/wicket/internal/wait"
)

// propagation bounds how long a change on one replica may take to show on
// another (watch latency plus a key ring reload); it passes in
// milliseconds, the bound is for loaded CI machines.
const propagation = 5 * time.Second

type cluster struct {
	etcd    *etcdtest.Cluster
	prefix  string
	sealKey string
}

var clusterPrefixes atomic.Int64

func newCluster(t *testing.T, members int) *cluster {
	t.Helper()
	return &cluster{
		etcd:    etcdtest.Start(t, members),
		prefix:  fmt.Sprintf("/wicket-test-%d/", clusterPrefixes.Add(1)),
		sealKey: filepath.Join(shortDir(t), "seal.key"),
	}
}

// etcdState points c at the cluster; every replica shares the seal key.
func (cl *cluster) etcdState(c *config.Issuer) {
	c.State.Backend = "etcd"
	c.State.Endpoints = cl.etcd.Endpoints()
	c.State.Prefix = cl.prefix
	c.State.SealKeyFile = cl.sealKey
	c.State.RequestTimeout = config.Duration{Duration: time.Second}
}

// replica starts one more issuer on the cluster. The first one's Init
// creates the seal key and the first machine-token key.
func (cl *cluster) replica(t *testing.T, extra func(*config.Issuer), opt func(*Options)) *testIssuer {
	t.Helper()
	return startIssuerWith(t, shortDir(t), func(c *config.Issuer) {
		cl.etcdState(c)
		if extra != nil {
			extra(c)
		}
	}, opt)
}

func (ti *testIssuer) admin(t *testing.T, method, path, body string) sockettest.Result {
	t.Helper()
	return sockettest.Do(ti.adminSock, method, path, body, nil)
}

func (ti *testIssuer) mintToken(t *testing.T, machineID string) api.MintedToken {
	t.Helper()
	r := ti.admin(t, "POST", "/v1/machines/"+machineID+"/tokens", `{}`)
	if r.Status != 201 {
		t.Fatalf("mint: %+v", r)
	}
	var tok api.MintedToken
	if err := json.Unmarshal([]byte(r.Body), &tok); err != nil {
		t.Fatal(err)
	}
	return tok
}

// kids lists the kids in ti's JWKS for org dev.
func (ti *testIssuer) kids(t *testing.T) []string {
	t.Helper()
	r := ti.call(t, "GET", "/dev/.well-known/jwks", "", "")
	var set struct {
		Keys []struct {
			Kid string `json:"kid"`
		} `json:"keys"`
	}
	json.Unmarshal([]byte(r.body), &set)
	var out []string
	for _, k := range set.Keys {
		out = append(out, k.Kid)
	}
	return out
}

// longPoll starts a metadata long poll on ti and waits until it waits.
func (ti *testIssuer) longPoll(t *testing.T, tok, etag string) <-chan resp {
	t.Helper()
	before := ti.longPolls.Load()
	done := make(chan resp, 1)
	go func() {
		done <- ti.call(t, "GET", "/v1/machines/self?wait=true&timeout=30s&etag="+url.QueryEscape(etag), tok, "")
	}()
	wait.Eventually(t, propagation, func() bool { return ti.longPolls.Load() > before }, "long poll waiting")
	return done
}

func awaitPoll(t *testing.T, done <-chan resp, want string) {
	t.Helper()
	select {
	case r := <-done:
		if r.status != 200 || !strings.Contains(r.body, want) {
			t.Fatalf("long poll answered %d %s, want %s", r.status, r.body, want)
		}
	case <-time.After(propagation):
		t.Fatalf("long poll did not wake within %v", propagation)
	}
}

func TestCluster_TwoReplicasShareState(t *testing.T) {
	cl := newCluster(t, 1)
	a := cl.replica(t, nil, nil)
	b := cl.replica(t, nil, nil)
	m, tok := a.addMachine(t, devSpec)

	// A token minted by A is accepted by B: the root key is shared.
	r := b.call(t, "GET", "/v1/machines/self", tok, "")
	if r.status != 200 || !strings.Contains(r.body, m.MachineID) {
		t.Fatalf("B refused A's token: %d %s", r.status, r.body)
	}
	// B signs with the org key A created, which A publishes too.
	jwt := b.oidcToken(t, tok, `{"aud":"x"}`)
	if kid := kidOf(t, jwt); !contains(a.kids(t), kid) {
		t.Errorf("B signed with %s, not in A's JWKS %v", kid, a.kids(t))
	}
	if len(a.kids(t)) != 1 {
		t.Errorf("org has %v signing keys, want one shared key", a.kids(t))
	}

	// A metadata change through A wakes a long poll waiting on B.
	done := b.longPoll(t, tok, r.header.Get("ETag"))
	start := time.Now()
	if res := a.admin(t, "PATCH", "/v1/machines/"+m.MachineID, `{"set_tags":{"color":"blue"}}`); res.Status != 200 {
		t.Fatalf("update on A: %+v", res)
	}
	awaitPoll(t, done, `"color":"blue"`)
	t.Logf("long poll on B woke %v after the update on A", time.Since(start).Round(time.Millisecond))

	// A revocation on A is honoured by B.
	tok2 := a.mintToken(t, m.MachineID)
	if r := b.call(t, "GET", "/v1/machines/self", tok2.Token, ""); r.status != 200 {
		t.Fatalf("B refused a fresh token: %d", r.status)
	}
	if res := a.admin(t, "POST", "/v1/revocations", `{"token_id":"`+tok2.TokenID+`"}`); res.Status != 200 {
		t.Fatalf("revoke on A: %+v", res)
	}
	d := wait.Eventually(t, propagation, func() bool {
		return b.call(t, "GET", "/v1/machines/self", tok2.Token, "").status == 401
	}, "revocation on A refused by B")
	t.Logf("B refused the revoked token %v after the revocation on A", d.Round(time.Millisecond))
	if r := b.call(t, "GET", "/v1/machines/self", tok, ""); r.status != 200 {
		t.Errorf("unrevoked token refused on B: %d", r.status)
	}

	// A machine removed through B stops working on A as soon as A's
	// watch delivers the removal (A reads machines from its mirror).
	if res := b.admin(t, "DELETE", "/v1/machines/"+m.MachineID, ""); res.Status != 200 {
		t.Fatalf("remove on B: %+v", res)
	}
	d = wait.Eventually(t, propagation, func() bool {
		return a.call(t, "GET", "/v1/machines/self", tok, "").status == 401
	}, "machine removed on B refused by A")
	t.Logf("A refused the removed machine's token %v after the removal on B", d.Round(time.Millisecond))
}

// machineReads is ti's count of machine reads answered by the etcd
// store's mirror and by etcd.
func (ti *testIssuer) machineReads(t *testing.T) (mirror, backend uint64) {
	t.Helper()
	st := ti.Status().(map[string]any)["state"].(map[string]any)
	n, ok := st["machine_reads"].(map[string]uint64)
	if !ok {
		t.Fatalf("status state has no machine_reads: %v", st)
	}
	return n["mirror"], n["backend"]
}

// TestCluster_MachineReadsFromMirror: in cluster mode the per-request
// machine read (token check, long poll) comes from the watch-fed mirror,
// not from etcd; a machine added on another replica works at once; a
// removal or revocation there is refused here once the watch delivers it.
func TestCluster_MachineReadsFromMirror(t *testing.T) {
	cl := newCluster(t, 1)
	a := cl.replica(t, nil, nil)
	b := cl.replica(t, nil, nil)

	// Added on A, used on B at once: a mirror miss reads etcd.
	m, tok := a.addMachine(t, devSpec)
	r := b.call(t, "GET", "/v1/machines/self", tok, "")
	if r.status != 200 || !strings.Contains(r.body, m.MachineID) {
		t.Fatalf("B refused a machine just added on A: %d %s", r.status, r.body)
	}

	// Once B's watch has it, B's reads cost etcd nothing.
	wait.Eventually(t, propagation, func() bool {
		mirror, _ := b.machineReads(t)
		b.call(t, "GET", "/v1/machines/self", tok, "")
		after, _ := b.machineReads(t)
		return after > mirror
	}, "B serving the machine from its mirror")
	mirror0, backend0 := b.machineReads(t)
	const n = 50
	for range n {
		if r := b.call(t, "GET", "/v1/machines/self", tok, ""); r.status != 200 {
			t.Fatalf("B: %d %s", r.status, r.body)
		}
	}
	jwt := b.oidcToken(t, tok, `{"aud":"x"}`)
	if jwt == "" {
		t.Fatal("no OIDC token from B")
	}
	done := b.longPoll(t, tok, r.header.Get("ETag"))
	if res := a.admin(t, "PATCH", "/v1/machines/"+m.MachineID, `{"set_tags":{"color":"blue"}}`); res.Status != 200 {
		t.Fatalf("update on A: %+v", res)
	}
	awaitPoll(t, done, `"color":"blue"`)
	mirror1, backend1 := b.machineReads(t)
	if backend1 != backend0 {
		t.Errorf("%d requests on B sent %d machine reads to etcd, want 0", n+2, backend1-backend0)
	}
	// Each metadata request reads once, the long poll twice (its token
	// check and its watch's first state), the OIDC request once.
	if got, want := mirror1-mirror0, uint64(n+1+2); got != want {
		t.Errorf("B answered %d machine reads from its mirror, want %d", got, want)
	}
	t.Logf("B: %d machine reads from the mirror, %d from etcd since start", mirror1, backend1)

	// A revocation and a removal on A are refused by B within the watch
	// delay (the revocation through B's key ring, the removal through
	// its mirror).
	tok2 := a.mintToken(t, m.MachineID)
	if r := b.call(t, "GET", "/v1/machines/self", tok2.Token, ""); r.status != 200 {
		t.Fatalf("B refused a fresh token: %d", r.status)
	}
	if res := a.admin(t, "POST", "/v1/revocations", `{"token_id":"`+tok2.TokenID+`"}`); res.Status != 200 {
		t.Fatalf("revoke on A: %+v", res)
	}
	d := wait.Eventually(t, propagation, func() bool {
		return b.call(t, "GET", "/v1/machines/self", tok2.Token, "").status == 401
	}, "revocation on A refused by B")
	t.Logf("B refused the revoked token %v after the revocation on A", d.Round(time.Millisecond))
	if res := a.admin(t, "DELETE", "/v1/machines/"+m.MachineID, ""); res.Status != 200 {
		t.Fatalf("remove on A: %+v", res)
	}
	d = wait.Eventually(t, propagation, func() bool {
		return b.call(t, "GET", "/v1/machines/self", tok, "").status == 401
	}, "machine removed on A refused by B")
	t.Logf("B refused the removed machine's token %v after the removal on A", d.Round(time.Millisecond))
}

// TestCluster_ConcurrentUpdatesNoLostUpdate: admin updates of one machine
// through both replicas at once all land.
func TestCluster_ConcurrentUpdatesNoLostUpdate(t *testing.T) {
	const n = 20
	cl := newCluster(t, 1)
	// Every update comes from our one uid, n at a time per replica: more
	// than the admin socket's default per-uid share (max_conns/4).
	// And 40 compare-and-swap retries at once are slow on a loaded
	// machine (the race detector, CI): this test is not about outages, so
	// a request gets more than the cluster's 1 s.
	oneUID := func(c *config.Issuer) {
		c.Admin.MaxConnsPerUID = c.Admin.MaxConns
		c.State.RequestTimeout = config.Duration{Duration: 10 * time.Second}
	}
	a := cl.replica(t, oneUID, nil)
	b := cl.replica(t, oneUID, nil)
	m, _ := a.addMachine(t, devSpec)
	var wg sync.WaitGroup
	for i := range n {
		for name, ti := range map[string]*testIssuer{"a": a, "b": b} {
			wg.Go(func() {
				body := fmt.Sprintf(`{"set_tags":{"%s%d":"x"}}`, name, i)
				if res := sockettest.Do(ti.adminSock, "PATCH", "/v1/machines/"+m.MachineID, body, nil); res.Status != 200 {
					t.Errorf("update via %s: %+v", name, res)
				}
			})
		}
	}
	wg.Wait()
	var got api.MachineView
	json.Unmarshal([]byte(b.admin(t, "GET", "/v1/machines/"+m.MachineID, "").Body), &got)
	for i := range n {
		for _, name := range []string{"a", "b"} {
			if got.Tags[fmt.Sprint(name, i)] != "x" {
				t.Errorf("update %s%d lost", name, i)
			}
		}
	}
	if got.Version != 2*n+1 {
		t.Errorf("version = %d, want %d", got.Version, 2*n+1)
	}
}

// TestCluster_ScheduledRotationElectedOnce: with rotate_every due on every
// replica, exactly one (the elected one) rotates, and every replica's JWKS
// publishes the new key.
func TestCluster_ScheduledRotationElectedOnce(t *testing.T) {
	cl := newCluster(t, 1)
	short := func(c *config.Issuer) {
		// The smallest schedule validation allows: rotate_every ≥
		// prepublish + grace, grace ≥ max_ttl ≥ token_ttl ≥ 1m.
		c.OIDC.TokenTTL = config.Duration{Duration: time.Minute}
		c.OIDC.MaxTTL = config.Duration{Duration: time.Minute}
		c.OIDC.Grace = config.Duration{Duration: time.Minute}
		c.OIDC.Prepublish = config.Duration{Duration: 2 * time.Second}
		c.OIDC.JWKSMaxAge = config.Duration{Duration: time.Second}
		c.OIDC.RotateEvery = config.Duration{Duration: time.Minute + 2*time.Second}
	}
	const every = 50 * time.Millisecond
	fast := func(o *Options) { o.maintainEvery = every }
	replicas := []*testIssuer{cl.replica(t, short, fast), cl.replica(t, short, fast), cl.replica(t, short, fast)}
	_, tok := replicas[0].addMachine(t, devSpec)
	for _, ti := range replicas {
		wait.Eventually(t, propagation, func() bool { return len(ti.kids(t)) == 1 }, "org key on every replica")
	}
	first := replicas[0].kids(t)[0]

	// Rotation falls due on every replica at once.
	for _, ti := range replicas {
		ti.clock.Advance(2 * time.Minute)
	}
	for i, ti := range replicas {
		d := wait.Eventually(t, propagation, func() bool { return len(ti.kids(t)) == 2 }, "rotated key in every JWKS")
		t.Logf("replica %d publishes the new key %v after rotation fell due", i, d.Round(time.Millisecond))
	}
	// Several more maintenance rounds on every replica: still one rotation.
	time.Sleep(20 * every)
	keys, err := replicas[1].Store().ListKeys(t.Context(), oidcKind("dev"))
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 2 {
		t.Fatalf("org has %d keys after one scheduled rotation, want 2 (one rotation, on one replica)", len(keys))
	}
	var rotations, leaders int
	for _, ti := range replicas {
		rotations += strings.Count(ti.logs.String(), "rotated org signing key")
		leaders += strings.Count(ti.logs.String(), "elected to run key maintenance")
	}
	if rotations != 1 || leaders != 1 {
		t.Fatalf("%d rotations by %d elected replicas, want 1 and 1", rotations, leaders)
	}

	// Once it activates, every replica signs with the new key.
	for _, ti := range replicas {
		ti.clock.Advance(3 * time.Second)
	}
	for _, ti := range replicas {
		if kid := kidOf(t, ti.oidcToken(t, tok, `{"aud":"x"}`)); kid == first {
			t.Errorf("a replica still signs with the retired key %s", kid)
		}
	}

	// The leader stops: it resigns, and another replica takes over.
	var leader *testIssuer
	var rest []*testIssuer
	for _, ti := range replicas {
		if strings.Contains(ti.logs.String(), "elected to run key maintenance") {
			leader = ti
		} else {
			rest = append(rest, ti)
		}
	}
	leader.stop()
	d := wait.Eventually(t, propagation, func() bool {
		return strings.Contains(rest[0].logs.String()+rest[1].logs.String(), "elected to run key maintenance")
	}, "another replica elected")
	t.Logf("new key maintenance leader %v after the old one stopped", d.Round(time.Millisecond))
}

// TestCluster_EtcdFailures: losing one of three members changes nothing;
// losing all keeps verification and signing working from memory while
// writes fail with 503; bringing etcd back needs no issuer restart.
func TestCluster_EtcdFailures(t *testing.T) {
	if testing.Short() {
		t.Skip("stops and restarts etcd members under three replicas: skipped in -short mode")
	}
	cl := newCluster(t, 3)
	a := cl.replica(t, nil, nil)
	b := cl.replica(t, nil, nil)
	m, tok := a.addMachine(t, devSpec)
	serves := func(what string) {
		t.Helper()
		for name, ti := range map[string]*testIssuer{"A": a, "B": b} {
			if r := ti.call(t, "GET", "/v1/machines/self", tok, ""); r.status != 200 {
				t.Errorf("%s: %s metadata: %d %s", what, name, r.status, r.body)
			}
			if r := ti.call(t, "POST", "/v1/tokens/oidc", tok, `{"aud":"x"}`); r.status != 200 {
				t.Errorf("%s: %s OIDC token: %d %s", what, name, r.status, r.body)
			}
		}
	}
	serves("all members up")

	cl.etcd.Stop(0)
	serves("one member down")
	if res := a.admin(t, "PATCH", "/v1/machines/"+m.MachineID, `{"set_tags":{"step":"one-down"}}`); res.Status != 200 {
		t.Fatalf("update with one member down: %+v", res)
	}
	wait.Eventually(t, propagation, func() bool {
		return strings.Contains(b.call(t, "GET", "/v1/machines/self", tok, "").body, "one-down")
	}, "update visible on B")

	cl.etcd.StopAll()
	serves("all members down")
	start := time.Now()
	res := a.admin(t, "PATCH", "/v1/machines/"+m.MachineID, `{"set_tags":{"step":"all-down"}}`)
	if res.Status != 503 || !strings.Contains(res.Body, "state store unavailable") || strings.Contains(res.Body, "127.0.0.1") {
		t.Errorf("update with etcd down: %+v, want a generic 503", res)
	}
	t.Logf("write refused after %v", time.Since(start).Round(time.Millisecond))
	if !strings.Contains(a.logs.String(), "state store unavailable") {
		t.Error("the failed write's cause is not logged")
	}
	if res := b.admin(t, "POST", "/v1/revocations", `{"token_id":"`+strings.Repeat("ab", 16)+`"}`); res.Status != 503 {
		t.Errorf("revoke with etcd down: %+v, want 503", res)
	}
	if st := a.Status().(map[string]any)["state"].(map[string]any); st["reachable"] != false {
		t.Errorf("status state = %v, want unreachable", st)
	}
	serves("all members down, after failed writes")

	cl.etcd.Restart()
	restarted := time.Now()
	wait.Eventually(t, 3*propagation, func() bool {
		return a.admin(t, "PATCH", "/v1/machines/"+m.MachineID, `{"set_tags":{"step":"recovered"}}`).Status == 200
	}, "write after etcd restart")
	t.Logf("writes work %v after the members restarted", time.Since(restarted).Round(time.Millisecond))
	// B reads etcd again once its probe sees it back (within a second).
	var r resp
	wait.Eventually(t, propagation, func() bool {
		r = b.call(t, "GET", "/v1/machines/self", tok, "")
		return strings.Contains(r.body, "recovered")
	}, "B reads the update after recovery")
	// B's watch is back too: a long poll there wakes on a change on A.
	done := b.longPoll(t, tok, r.header.Get("ETag"))
	if res := a.admin(t, "PATCH", "/v1/machines/"+m.MachineID, `{"set_tags":{"step":"watched"}}`); res.Status != 200 {
		t.Fatalf("update after recovery: %+v", res)
	}
	awaitPoll(t, done, "watched")
	serves("after recovery")
}

// TestMigrate_BoltToEtcd: state moved from a single-node issuer to etcd
// keeps machines (versions included), keys (old tokens verify, old JWTs'
// kid still published) and revocations.
func TestMigrate_BoltToEtcd(t *testing.T) {
	dir := shortDir(t)
	single := startIssuer(t, dir, nil)
	m, tok := single.addMachine(t, devSpec)
	if res := single.admin(t, "PATCH", "/v1/machines/"+m.MachineID, `{"set_tags":{"k":"v"}}`); res.Status != 200 {
		t.Fatal(res)
	}
	jwt := single.oidcToken(t, tok, `{"aud":"x"}`)
	revoked := single.mintToken(t, m.MachineID)
	if res := single.admin(t, "POST", "/v1/revocations", `{"token_id":"`+revoked.TokenID+`"}`); res.Status != 200 {
		t.Fatal(res)
	}
	wantMachine := single.admin(t, "GET", "/v1/machines/"+m.MachineID, "").Body
	single.stop()

	cl := newCluster(t, 1)
	cl.sealKey = filepath.Join(dir, "state", "seal.key")
	ctx := t.Context()
	migrate := func() *MigrateResult {
		t.Helper()
		src, err := bolt.Open(filepath.Join(dir, "state", "state.db"), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		c := config.DefaultIssuer()
		cl.etcdState(c)
		dst, err := etcd.Open(ctx, EtcdConfig(c.State, nil))
		if err != nil {
			t.Fatal(err)
		}
		defer dst.Close()
		res, err := Migrate(ctx, dst, src)
		if err != nil {
			t.Fatalf("Migrate: %v", err)
		}
		return res
	}
	if res := migrate(); *res != (MigrateResult{Machines: 1, Keys: 2, Revocations: 1}) {
		t.Errorf("first migration = %+v", *res)
	}
	if res := migrate(); *res != (MigrateResult{Keys: 2, Revocations: 1, Unchanged: 1}) {
		t.Errorf("second migration = %+v, want the machine left as it is", *res)
	}

	rep := cl.replica(t, nil, nil)
	if got := rep.admin(t, "GET", "/v1/machines/"+m.MachineID, "").Body; got != wantMachine {
		t.Errorf("machine after migration:\n%s\nwant\n%s", got, wantMachine)
	}
	if r := rep.call(t, "GET", "/v1/machines/self", tok, ""); r.status != 200 {
		t.Errorf("token minted before the migration: %d", r.status)
	}
	if r := rep.call(t, "GET", "/v1/machines/self", revoked.Token, ""); r.status != 401 {
		t.Errorf("token revoked before the migration: %d", r.status)
	}
	if kid := kidOf(t, jwt); !contains(rep.kids(t), kid) {
		t.Errorf("JWT signed before the migration: kid %s not in JWKS %v", kid, rep.kids(t))
	}
	if strings.Contains(rep.logs.String(), "created org signing key") {
		t.Error("the migrated org got a new first key")
	}
	keys, err := rep.Store().ListKeys(ctx, store.KindMacaroon)
	if err != nil || len(keys) != 1 {
		t.Errorf("macaroon keys after migration = %d, %v; want the one migrated", len(keys), err)
	}
}

// TestInit_EtcdSecondReplicaWithOtherSealKey: a replica given its own seal
// key instead of the cluster's fails init clearly and leaves no key behind.
func TestInit_EtcdSecondReplicaWithOtherSealKey(t *testing.T) {
	cl := newCluster(t, 1)
	cl.replica(t, nil, nil)
	c := config.DefaultIssuer()
	cl.etcdState(c)
	c.State.SealKeyFile = filepath.Join(shortDir(t), "other-seal.key")
	_, err := Init(context.Background(), c)
	if err == nil || !strings.Contains(err.Error(), "copy its seal key") {
		t.Fatalf("Init with another seal key err = %v", err)
	}
	if _, err := os.Stat(c.State.SealKeyFile); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Init left the useless seal key behind: %v", err)
	}
}
