package etcd

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"

	"github.com/wicket-sh/wicket/internal/store"
	"github.com/wicket-sh/wicket/internal/store/etcd/etcdtest"
	"github.com/wicket-sh/wicket/internal/wait"
)

// rangeCounter counts the Range requests (gets) a store's client sends
// for keys under one prefix, as etcd receives them.
type rangeCounter struct {
	mu     sync.Mutex
	prefix string
	n      int
}

func (c *rangeCounter) interceptor(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if r, ok := req.(*etcdserverpb.RangeRequest); ok && method == "/etcdserverpb.KV/Range" {
		c.mu.Lock()
		if strings.HasPrefix(string(r.Key), c.prefix) {
			c.n++
		}
		c.mu.Unlock()
	}
	return invoker(ctx, method, req, reply, cc, opts...)
}

func (c *rangeCounter) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// replicas opens a writer and a reader store on one prefix of c, the
// reader's gets of machine records counted.
func replicas(t *testing.T, c *etcdtest.Cluster) (writer, reader *Store, gets *rangeCounter) {
	t.Helper()
	writer = open(t, c, nil)
	gets = &rangeCounter{prefix: writer.prefix + dirMachines}
	reader = open(t, c, func(cfg *Config) {
		cfg.Prefix = writer.prefix
		cfg.dialOptions = []grpc.DialOption{grpc.WithChainUnaryInterceptor(gets.interceptor)}
	})
	return writer, reader, gets
}

// inMirror waits until s's mirror holds machine id and is current, so
// reads of it are the mirror's to answer.
func inMirror(t *testing.T, s *Store, id string) {
	t.Helper()
	wait.Eventually(t, waitTimeout, func() bool {
		_, _, ok := s.mirror.get(id)
		return ok && s.mirrorCurrent()
	}, "machine in the reader's current mirror")
}

// TestGetMachine_ServedFromMirror: while the watch keeps the mirror
// current, GetMachineRecent and a watch's first state cost etcd no get;
// GetMachine and writes still read etcd.
func TestGetMachine_ServedFromMirror(t *testing.T) {
	c := etcdtest.Start(t, 1)
	writer, reader, gets := replicas(t, c)
	ctx := t.Context()
	if err := writer.CreateMachine(ctx, newMachine("m1", "a")); err != nil {
		t.Fatal(err)
	}
	inMirror(t, reader, "m1")
	before, reads := gets.count(), reader.MachineReads()
	const n = 100
	for range n {
		m, err := reader.GetMachineRecent(ctx, "m1")
		if err != nil || m.Name != "a" {
			t.Fatalf("GetMachineRecent = %+v, %v", m, err)
		}
	}
	wctx, cancel := context.WithCancel(ctx)
	ch, err := reader.WatchMachine(wctx, "m1")
	if err != nil {
		t.Fatal(err)
	}
	if ev := recv(t, ch); ev.Machine == nil || ev.Machine.Name != "a" {
		t.Fatalf("first watch state = %+v", ev)
	}
	cancel()
	if got := gets.count() - before; got != 0 {
		t.Errorf("%d reads of a mirrored machine sent %d gets to etcd, want 0", n+1, got)
	}
	after := reader.MachineReads()
	if d := after.Mirror - reads.Mirror; d != n+1 {
		t.Errorf("MachineReads counted %d mirror reads, want %d", d, n+1)
	}
	if after.Backend != reads.Backend {
		t.Errorf("MachineReads counted %d etcd reads, want 0", after.Backend-reads.Backend)
	}

	// GetMachine is etcd's answer, and writes keep reading etcd: an update
	// is a read-modify-write of what etcd holds, not of the mirror.
	before = gets.count()
	if _, err := reader.GetMachine(ctx, "m1"); err != nil {
		t.Fatal(err)
	}
	if gets.count() != before+1 {
		t.Errorf("GetMachine sent %d gets, want 1", gets.count()-before)
	}
	before = gets.count()
	if _, err := reader.UpdateMachine(ctx, "m1", 1, setRegion("x")); err != nil {
		t.Fatal(err)
	}
	if gets.count() == before {
		t.Error("UpdateMachine did not read etcd")
	}
}

func setRegion(r string) func(*store.Machine) error {
	return func(m *store.Machine) error { m.Region = r; return nil }
}

// TestGetMachine_CreatedElsewhereAtOnce: a machine created through
// another replica is found at once, whether or not the watch has brought
// it yet; a mirror miss reads through to etcd.
func TestGetMachine_CreatedElsewhereAtOnce(t *testing.T) {
	c := etcdtest.Start(t, 1)
	writer, reader, gets := replicas(t, c)
	ctx := t.Context()
	if err := writer.CreateMachine(ctx, newMachine("m0", "z")); err != nil {
		t.Fatal(err)
	}
	inMirror(t, reader, "m0")
	for i := range 20 {
		id := "m" + string(rune('a'+i))
		if err := writer.CreateMachine(ctx, newMachine(id, id)); err != nil {
			t.Fatal(err)
		}
		if m, err := reader.GetMachineRecent(ctx, id); err != nil || m.ID != id {
			t.Fatalf("GetMachineRecent(%s) on the other replica right after its create = %+v, %v", id, m, err)
		}
	}

	// The case the loop above may not hit: the mirror is current but
	// the watch has not brought the new machine yet (taken out of the
	// mirror here, as if its event were still on the wire).
	if err := writer.CreateMachine(ctx, newMachine("late", "late")); err != nil {
		t.Fatal(err)
	}
	inMirror(t, reader, "late")
	reader.mirror.mu.Lock()
	delete(reader.mirror.machines, "late")
	reader.mirror.mu.Unlock()
	if !reader.mirrorCurrent() {
		t.Fatal("mirror not current")
	}
	before := gets.count()
	if m, err := reader.GetMachineRecent(ctx, "late"); err != nil || m.ID != "late" {
		t.Fatalf("GetMachineRecent on a mirror miss = %+v, %v, want a read through to etcd", m, err)
	}
	if gets.count() != before+1 {
		t.Errorf("mirror miss sent %d gets, want 1", gets.count()-before)
	}
	ch, err := reader.WatchMachine(ctx, "late")
	if err != nil {
		t.Fatalf("WatchMachine on a mirror miss: %v", err)
	}
	if ev := recv(t, ch); ev.Machine == nil || ev.Machine.ID != "late" {
		t.Fatalf("first watch state on a mirror miss = %+v", ev)
	}
	if _, err := reader.GetMachineRecent(ctx, "never"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetMachineRecent(never) = %v, want ErrNotFound", err)
	}
}

// TestGetMachine_DeletedElsewhereWithinWatchDelay: a machine removed
// through another replica is not found here as soon as the watch
// delivers the removal; the test reports that delay.
func TestGetMachine_DeletedElsewhereWithinWatchDelay(t *testing.T) {
	c := etcdtest.Start(t, 1)
	writer, reader, _ := replicas(t, c)
	ctx := t.Context()
	for range 5 {
		if err := writer.CreateMachine(ctx, newMachine("m1", "a")); err != nil {
			t.Fatal(err)
		}
		inMirror(t, reader, "m1")
		if err := writer.DeleteMachine(ctx, "m1", nil); err != nil {
			t.Fatal(err)
		}
		d := wait.Eventually(t, waitTimeout, func() bool {
			_, err := reader.GetMachineRecent(ctx, "m1")
			return errors.Is(err, store.ErrNotFound)
		}, "removal seen by the other replica")
		t.Logf("removal refused by the other replica %v after the delete returned", d)
	}
}

// TestGetMachine_StalledWatchReadsEtcd: when the watch is not running,
// the mirror may be missing any change, so reads go to etcd: a removal
// through another replica is seen at once even though this replica's
// watch never delivers it.
func TestGetMachine_StalledWatchReadsEtcd(t *testing.T) {
	c := etcdtest.Start(t, 1)
	writer, reader, gets := replicas(t, c)
	ctx := t.Context()
	if err := writer.CreateMachine(ctx, newMachine("m1", "a")); err != nil {
		t.Fatal(err)
	}
	inMirror(t, reader, "m1")
	release := holdWatch(t, reader)
	defer close(release)
	wait.Eventually(t, waitTimeout, func() bool { return !reader.watching.Load() }, "watch stopped")
	if err := writer.DeleteMachine(ctx, "m1", nil); err != nil {
		t.Fatal(err)
	}
	before := gets.count()
	if _, err := reader.GetMachineRecent(ctx, "m1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetMachineRecent with the watch stopped = %v, want ErrNotFound from etcd", err)
	}
	if gets.count() != before+1 {
		t.Errorf("read with the watch stopped sent %d gets, want 1", gets.count()-before)
	}
}

// TestMirror_WatchAnswerAloneProvesNothing: an event alone does not
// prove the mirror complete (more may be queued behind it); a full read
// does (as do a progress report and the probe's read, in apply and
// probeLoop).
func TestMirror_WatchAnswerAloneProvesNothing(t *testing.T) {
	var m mirror
	if m.provenAge() <= currentFor {
		t.Fatal("a mirror never read is current")
	}
	m.touch()
	if m.provenAge() <= currentFor {
		t.Error("a watch answer alone made the mirror current")
	}
	m.replace(map[string]mirrored{}, 1)
	if m.provenAge() > currentFor {
		t.Error("a full read did not make the mirror current")
	}
}

// TestMirror_ProbeKeepsItCurrentWhenIdle: with nothing written after
// Open (so etcd sends the watch no progress report), the probe still
// proves the mirror complete, so reads stay on the mirror past currentFor
// after the full read at Open.
func TestMirror_ProbeKeepsItCurrentWhenIdle(t *testing.T) {
	c := etcdtest.Start(t, 1)
	s := open(t, c, nil)
	opened, synced := s.mirror.current.Load(), s.mirror.syncedAt()
	wait.Eventually(t, waitTimeout, func() bool { return s.mirror.current.Load() > opened },
		"a probe proving the mirror current")
	// The cache grace counts from the same proof: a quiet cluster's
	// mirror does not age into the grace while etcd answers.
	if s.mirror.syncedAt() <= synced {
		t.Error("the probe's proof did not renew the mirror's sync time")
	}
	if !s.mirrorCurrent() {
		t.Error("mirror not current after the probe proved it")
	}
}

// TestUnavailable_QuietClusterKeepsItsGrace: the cache grace counts from
// when etcd last vouched for the mirror, not from the last write: a
// cluster nobody wrote to for longer than the grace still serves reads
// from the mirror when etcd then goes away.
func TestUnavailable_QuietClusterKeepsItsGrace(t *testing.T) {
	if testing.Short() {
		t.Skip("stays idle for longer than a real cache grace: skipped in -short mode")
	}
	c := etcdtest.Start(t, 1)
	const grace = 2 * time.Second
	writer := open(t, c, nil)
	ctx := t.Context()
	if err := writer.CreateMachine(ctx, newMachine("m1", "a")); err != nil {
		t.Fatal(err)
	}
	written := time.Now()
	// Opened after the last write: its watch waits for a revision etcd
	// has not made yet, so etcd sends it no progress report.
	s := open(t, c, func(cfg *Config) {
		cfg.Prefix, cfg.CacheGrace, cfg.RequestTimeout = writer.prefix, grace, 500*time.Millisecond
	})
	// Quiet for longer than the grace (and the probe's period).
	time.Sleep(time.Until(written.Add(grace + 2*probeEvery)))
	c.StopAll()
	if m, err := s.GetMachine(ctx, "m1"); err != nil || m.Name != "a" {
		t.Errorf("GetMachine with etcd gone, %v after the last write = %+v, %v, want it from the mirror", time.Since(written).Round(time.Millisecond), m, err)
	}
}
