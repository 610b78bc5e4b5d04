package etcd

import (
	"context"
	"errors"
	"fmt"
	"github.com/wicket-sh/wicket/internal/sockettest"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wicket-sh/wicket/internal/store"
	"github.com/wicket-sh/wicket/internal/store/etcd/etcdtest"
	"github.com/wicket-sh/wicket/internal/store/storetest"
	"github.com/wicket-sh/wicket/internal/wait"
)

// waitTimeout bounds every wait for something the store does in the
// background; a pass never waits it out.
const waitTimeout = 10 * time.Second

var prefixes atomic.Int64

// open opens a store on a fresh prefix of c, closed when the test ends.
func open(t *testing.T, c *etcdtest.Cluster, tweak func(*Config)) *Store {
	t.Helper()
	cfg := Config{
		Endpoints:      c.Endpoints(),
		Prefix:         fmt.Sprintf("/test-%d/", prefixes.Add(1)),
		DialTimeout:    5 * time.Second,
		RequestTimeout: time.Second,
		CacheGrace:     time.Minute,
		Logger:         slog.New(slog.DiscardHandler),
	}
	if tweak != nil {
		tweak(&cfg)
	}
	s, err := Open(t.Context(), cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	c := etcdtest.Start(t, 1)
	storetest.Run(t, func(t *testing.T) store.Store {
		s, err := Open(t.Context(), Config{
			Endpoints: c.Endpoints(), Prefix: fmt.Sprintf("/conformance-%d/", prefixes.Add(1)),
			Logger: slog.New(slog.DiscardHandler),
		})
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		return s
	})
}

// TestConformanceShared: two stores on one prefix behave as two replicas
// of one state.
func TestConformanceShared(t *testing.T) {
	c := etcdtest.Start(t, 1)
	storetest.RunShared(t, func(t *testing.T) (store.Store, store.Store) {
		a := open(t, c, nil)
		return a, open(t, c, func(cfg *Config) { cfg.Prefix = a.prefix })
	})
}

func newMachine(id, name string) *store.Machine {
	return &store.Machine{ID: id, Org: "acme", App: "web", Name: name, Tags: map[string]string{}}
}

func recv[T any](t *testing.T, ch <-chan T) T {
	t.Helper()
	select {
	case v, ok := <-ch:
		if !ok {
			t.Fatal("watch channel closed")
		}
		return v
	case <-time.After(waitTimeout):
		t.Fatal("timed out waiting for a watch event")
	}
	var zero T
	return zero
}

// waitTag reads events until the machine carries tag k=v.
func waitTag(t *testing.T, ch <-chan store.Event, k, v string) store.Event {
	t.Helper()
	for {
		ev := recv(t, ch)
		if ev.Machine != nil && ev.Machine.Tags[k] == v {
			return ev
		}
	}
}

// TestTwoStores_SharedState: what one replica writes, another reads and
// is woken for; concurrent read-modify-writes from both lose nothing.
func TestTwoStores_SharedState(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a := open(t, c, nil)
	b := open(t, c, func(cfg *Config) { cfg.Prefix = a.prefix })
	ctx := t.Context()
	if err := a.CreateMachine(ctx, newMachine("m1", "a")); err != nil {
		t.Fatal(err)
	}
	if _, err := b.GetMachine(ctx, "m1"); err != nil {
		t.Fatalf("B reads A's machine: %v", err)
	}
	mch, err := b.WatchMachine(ctx, "m1")
	if err != nil {
		t.Fatal(err)
	}
	recv(t, mch)
	kch, err := b.WatchKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.UpdateMachine(ctx, "m1", 0, func(m *store.Machine) error { m.Tags["k"] = "v"; return nil }); err != nil {
		t.Fatal(err)
	}
	waitTag(t, mch, "k", "v")
	if err := a.Revoke(ctx, &store.Revocation{TokenID: "t1", RevokedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	recv(t, kch)

	const n = 15
	var wg sync.WaitGroup
	for i := range 2 * n {
		s := []*Store{a, b}[i%2]
		wg.Go(func() {
			_, err := s.UpdateMachine(ctx, "m1", 0, func(m *store.Machine) error {
				c, _ := strconv.Atoi(m.Tags["counter"])
				m.Tags["counter"] = strconv.Itoa(c + 1)
				return nil
			})
			if err != nil {
				t.Errorf("UpdateMachine: %v", err)
			}
		})
	}
	wg.Wait()
	got, err := b.GetMachine(ctx, "m1")
	if err != nil {
		t.Fatal(err)
	}
	if got.Tags["counter"] != strconv.Itoa(2*n) || got.Version != 2*n+2 {
		t.Errorf("counter = %s, version = %d; want %d and %d (lost update)", got.Tags["counter"], got.Version, 2*n, 2*n+2)
	}
}

// TestWatch_ResumesFromRevision: a watch restarted (as after a lost
// member) delivers the changes made while it was down.
func TestWatch_ResumesFromRevision(t *testing.T) {
	c := etcdtest.Start(t, 1)
	writer := open(t, c, nil)
	s := open(t, c, func(cfg *Config) { cfg.Prefix = writer.prefix })
	ctx := t.Context()
	if err := writer.CreateMachine(ctx, newMachine("m1", "a")); err != nil {
		t.Fatal(err)
	}
	ch, err := s.WatchMachine(ctx, "m1")
	if err != nil {
		t.Fatal(err)
	}
	recv(t, ch)

	release := holdWatch(t, s)
	for i := range 3 {
		if _, err := writer.UpdateMachine(ctx, "m1", 0, func(m *store.Machine) error { m.Tags["i"] = strconv.Itoa(i); return nil }); err != nil {
			t.Fatal(err)
		}
	}
	close(release)
	waitTag(t, ch, "i", "2")
}

// TestWatch_RelistsAfterCompaction: when the revision to resume from has
// been compacted away, the store re-reads and subscribers still end on
// the current state, deletions included.
func TestWatch_RelistsAfterCompaction(t *testing.T) {
	c := etcdtest.Start(t, 1)
	writer := open(t, c, nil)
	var logs sockettest.Buffer
	s := open(t, c, func(cfg *Config) {
		cfg.Prefix = writer.prefix
		cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})
	ctx := t.Context()
	for _, m := range []*store.Machine{newMachine("m1", "a"), newMachine("m2", "b")} {
		if err := writer.CreateMachine(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	ch1, err := s.WatchMachine(ctx, "m1")
	if err != nil {
		t.Fatal(err)
	}
	recv(t, ch1)
	ch2, err := s.WatchMachine(ctx, "m2")
	if err != nil {
		t.Fatal(err)
	}
	recv(t, ch2)
	kch, err := s.WatchKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}

	release := holdWatch(t, s)
	if _, err := writer.UpdateMachine(ctx, "m1", 0, func(m *store.Machine) error { m.Tags["k"] = "after"; return nil }); err != nil {
		t.Fatal(err)
	}
	if err := writer.DeleteMachine(ctx, "m2", nil); err != nil {
		t.Fatal(err)
	}
	if err := writer.PutKey(ctx, &store.SealedKey{ID: "k1", Kind: store.KindMacaroon, Sealed: []byte{1}}); err != nil {
		t.Fatal(err)
	}
	resp, err := writer.cli.Get(ctx, "compact-me")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := writer.cli.Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	close(release)

	waitTag(t, ch1, "k", "after")
	for {
		if ev := recv(t, ch2); ev.Machine == nil {
			break
		}
	}
	recv(t, kch)
	if _, err := s.GetMachine(ctx, "m2"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetMachine(m2) after relist err = %v, want ErrNotFound", err)
	}
	if m, _, ok := s.mirror.get("m1"); !ok || m.Tags["k"] != "after" {
		t.Errorf("mirror after relist = %+v, want the update", m)
	}
	// The warning is written once the resync has published, so the
	// subscribers above can hear of it first.
	if !wait.Until(5*time.Second, func() bool { return strings.Contains(logs.String(), "compaction") }) {
		t.Errorf("relist not logged:\n%s", logs.String())
	}
}

// TestUnavailable_CacheGraceThenRecovery: with etcd gone, reads come from
// the mirror until the grace runs out and writes fail with
// ErrUnavailable; once etcd is back the same store works again.
func TestUnavailable_CacheGraceThenRecovery(t *testing.T) {
	if testing.Short() {
		t.Skip("waits out a real cache grace against a stopped etcd: skipped in -short mode")
	}
	c := etcdtest.Start(t, 1)
	const grace = 3 * time.Second
	s := open(t, c, func(cfg *Config) { cfg.CacheGrace = grace; cfg.RequestTimeout = 500 * time.Millisecond })
	ctx := t.Context()
	if err := s.CreateMachine(ctx, newMachine("m1", "a")); err != nil {
		t.Fatal(err)
	}
	ch, err := s.WatchMachine(ctx, "m1")
	if err != nil {
		t.Fatal(err)
	}
	recv(t, ch)

	c.StopAll()
	stopped := time.Now()
	if m, err := s.GetMachine(ctx, "m1"); err != nil || m.Name != "a" {
		t.Fatalf("GetMachine from cache = %+v, %v", m, err)
	}
	if _, err := s.GetMachine(ctx, "missing"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetMachine(missing) from cache err = %v, want ErrNotFound", err)
	}
	if ms, err := s.ListMachines(ctx); err != nil || len(ms) != 1 {
		t.Errorf("ListMachines from cache = %d, %v", len(ms), err)
	}
	// Once the outage is known, cached reads do not wait for a timeout.
	start := time.Now()
	if _, err := s.GetMachine(ctx, "m1"); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("cached read took %v", d)
	}
	if _, err := s.UpdateMachine(ctx, "m1", 0, func(m *store.Machine) error { m.Region = "x"; return nil }); !errors.Is(err, ErrUnavailable) {
		t.Errorf("UpdateMachine err = %v, want ErrUnavailable", err)
	}
	if err := s.Revoke(ctx, &store.Revocation{TokenID: "t"}); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Revoke err = %v, want ErrUnavailable", err)
	}
	if !s.degraded() || s.Reachable() {
		t.Error("store not marked unreachable")
	}

	time.Sleep(time.Until(stopped.Add(grace + 500*time.Millisecond)))
	if _, err := s.GetMachine(ctx, "m1"); !errors.Is(err, ErrUnavailable) {
		t.Errorf("GetMachine past the grace err = %v, want ErrUnavailable", err)
	}

	restart := time.Now()
	c.Restart()
	t.Logf("members restarted in %v", time.Since(restart).Round(time.Millisecond))
	wait.Eventually(t, 2*waitTimeout, func() bool {
		_, err := s.UpdateMachine(ctx, "m1", 0, func(m *store.Machine) error { m.Tags["k"] = "back"; return nil })
		return err == nil
	})
	t.Logf("first write %v after restart", time.Since(restart).Round(time.Millisecond))
	waitTag(t, ch, "k", "back")
	t.Logf("watch resumed %v after restart", time.Since(restart).Round(time.Millisecond))
	wait.Eventually(t, 2*waitTimeout, s.Reachable)
	t.Logf("reachable %v after restart", time.Since(restart).Round(time.Millisecond))
}

func TestOpen_Unreachable(t *testing.T) {
	start := time.Now()
	_, err := Open(t.Context(), Config{Endpoints: []string{"http://127.0.0.1:1"}, DialTimeout: 300 * time.Millisecond})
	if err == nil {
		t.Fatal("Open of an unreachable cluster succeeded")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Open took %v with a 300ms dial timeout", d)
	}
}

func TestOpen_UnknownSchemaRefused(t *testing.T) {
	c := etcdtest.Start(t, 1)
	s := open(t, c, nil)
	if _, err := s.cli.Put(t.Context(), s.prefix+keySchema, "2"); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(t.Context(), Config{Endpoints: c.Endpoints(), Prefix: s.prefix})
	if err == nil {
		s2.Close()
		t.Fatal("Open of a newer schema succeeded")
	}
}

// TestLead_OneLeaderAtATime: of two replicas campaigning, one leads; the
// other takes over when it resigns, and not before.
func TestLead_OneLeaderAtATime(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a := open(t, c, func(cfg *Config) { cfg.ElectionTTL = 2 * time.Second })
	b := open(t, c, func(cfg *Config) { cfg.Prefix = a.prefix; cfg.ElectionTTL = 2 * time.Second })
	ctx := t.Context()
	lost, resign, err := a.Lead(ctx, "keys")
	if err != nil {
		t.Fatal(err)
	}
	type led struct {
		lost   context.Context
		resign func()
		err    error
	}
	bLed := make(chan led, 1)
	go func() {
		l, r, err := b.Lead(ctx, "keys")
		bLed <- led{l, r, err}
	}()
	select {
	case <-bLed:
		t.Fatal("second replica elected while the first leads")
	case <-time.After(500 * time.Millisecond):
	}
	resign()
	if lost.Err() == nil {
		t.Error("leader's context still live after resigning")
	}
	select {
	case l := <-bLed:
		if l.err != nil {
			t.Fatal(l.err)
		}
		l.resign()
	case <-time.After(waitTimeout):
		t.Fatal("second replica not elected after the first resigned")
	}
}

func TestKeyLayout_Escaped(t *testing.T) {
	s := &Store{prefix: "/p/"}
	tests := []struct{ got, want string }{
		{s.nameKey(&store.Machine{Org: "a/b", App: "c", Name: "d"}), "/p/names/a%2Fb/c/d"},
		{s.nameKey(&store.Machine{Org: "a", App: "b/c", Name: "d"}), "/p/names/a/b%2Fc/d"},
		{s.keyKey("oidc/acme", "k1"), "/p/keys/oidc%2Facme/k1"},
		{s.keysPrefix("oid"), "/p/keys/oid/"},
		{s.machineKey("../x"), "/p/machines/..%2Fx"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("key = %q, want %q", tt.got, tt.want)
		}
	}
}

// holdWatch stops s's watch until the returned channel is closed.
func holdWatch(t *testing.T, s *Store) chan struct{} {
	t.Helper()
	release, held := make(chan struct{}), make(chan struct{})
	var once sync.Once
	hook := func() {
		once.Do(func() { close(held) })
		<-release
	}
	s.beforeWatch.Store(&hook)
	s.kickWatch()
	select {
	case <-held:
	case <-time.After(waitTimeout):
		t.Fatal("watch did not restart")
	}
	return release
}

// TestMirror_OlderStateNeverWins guards the mirror's ordering rule: this
// process's writes and the watch report the same changes in either order,
// and a late, older state (even of a deleted machine) must not win.
func TestMirror_OlderStateNeverWins(t *testing.T) {
	var m mirror
	m.replace(map[string]mirrored{}, 1)
	v := func(region string) *store.Machine { return &store.Machine{ID: "m1", Region: region} }
	region := func() string {
		got, _, ok := m.get("m1")
		if !ok {
			return "<none>"
		}
		return got.Region
	}
	steps := []struct {
		name string
		do   func()
		want string
	}{
		{"own write at 5", func() { m.apply("m1", v("b"), 5) }, "b"},
		{"watch reports 3 late", func() { m.apply("m1", v("a"), 3); m.advance(3) }, "b"},
		{"watch reports 5", func() { m.apply("m1", v("b"), 5); m.advance(5) }, "b"},
		{"own delete at 7", func() { m.apply("m1", nil, 7) }, "<none>"},
		{"watch reports 6 late", func() { m.apply("m1", v("c"), 6); m.advance(6) }, "<none>"},
		{"watch reports the delete", func() { m.apply("m1", nil, 7); m.advance(7) }, "<none>"},
		{"recreated at 9", func() { m.apply("m1", v("d"), 9); m.advance(9) }, "d"},
	}
	for _, st := range steps {
		st.do()
		if got := region(); got != st.want {
			t.Errorf("after %s: region %s, want %s", st.name, got, st.want)
		}
	}
	if len(m.tombstones) != 0 {
		t.Errorf("tombstones left once the watch passed them: %v", m.tombstones)
	}
}
