package etcd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	"github.com/wicket-sh/wicket/internal/sockettest"
	"github.com/wicket-sh/wicket/internal/store"
	"github.com/wicket-sh/wicket/internal/store/etcd/etcdtest"
	"github.com/wicket-sh/wicket/internal/wait"
)

// testPage is the relist page size in these tests: 10 machines take four
// pages (3, 3, 3, 1).
const testPage = 3

// tenMachines writes machines m00 … m09 through w and returns their ids.
func tenMachines(t *testing.T, w *Store) []string {
	t.Helper()
	var ids []string
	for i := range 10 {
		id := fmt.Sprintf("m%02d", i)
		m := newMachine(id, "n"+id)
		m.Region, m.Tags["i"] = "r1", id
		if err := w.CreateMachine(t.Context(), m); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}

// mirrorMatchesEtcd checks that s's mirror holds exactly the machines
// etcd holds under its prefix, each identical to etcd's record.
func mirrorMatchesEtcd(t *testing.T, s *Store) {
	t.Helper()
	want, err := s.ListMachines(t.Context()) // etcd's answer while it answers
	if err != nil {
		t.Fatal(err)
	}
	if got := len(s.mirror.list()); got != len(want) {
		t.Errorf("mirror holds %d machines, etcd %d", got, len(want))
	}
	for _, w := range want {
		if m, _, ok := s.mirror.get(w.ID); !ok || !reflect.DeepEqual(m, w) {
			t.Errorf("mirror's %s = %+v, want etcd's %+v", w.ID, m, w)
		}
	}
}

// TestRelist_PagesLoadWhole: Open reads a registry larger than a page in
// pages, and the mirror then answers for every machine, identical to
// what was written.
func TestRelist_PagesLoadWhole(t *testing.T) {
	c := etcdtest.Start(t, 1)
	writer := open(t, c, nil)
	ids := tenMachines(t, writer)
	gets := &rangeCounter{prefix: writer.prefix + dirMachines}
	reader := open(t, c, func(cfg *Config) {
		cfg.Prefix, cfg.relistPage = writer.prefix, testPage
		cfg.dialOptions = []grpc.DialOption{grpc.WithChainUnaryInterceptor(gets.interceptor)}
	})
	if got := gets.count(); got != 4 {
		t.Errorf("Open read 10 machines in %d gets, want 4 pages of at most %d", got, testPage)
	}
	wait.Eventually(t, waitTimeout, reader.mirrorCurrent, "reader's mirror current")
	reads := reader.MachineReads()
	for _, id := range ids {
		got, err := reader.GetMachineRecent(t.Context(), id)
		if err != nil {
			t.Fatalf("GetMachineRecent(%s): %v", id, err)
		}
		want, err := writer.GetMachine(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s from the mirror = %+v, want %+v", id, got, want)
		}
	}
	after := reader.MachineReads()
	if d := after.Mirror - reads.Mirror; d != uint64(len(ids)) || after.Backend != reads.Backend {
		t.Errorf("%d reads answered %d from the mirror, %d from etcd; want all from the mirror",
			len(ids), d, after.Backend-reads.Backend)
	}
	mirrorMatchesEtcd(t, reader)
}

// TestRelist_OneRevisionAcrossPages: changes committed between two pages
// (a machine created and one updated in pages not read yet, one deleted)
// are not half-seen: the mirror is the registry as of the first page's
// revision, and the watch then brings the changes.
func TestRelist_OneRevisionAcrossPages(t *testing.T) {
	c := etcdtest.Start(t, 1)
	writer := open(t, c, nil)
	tenMachines(t, writer)
	var armed atomic.Bool
	var firstRev atomic.Int64
	reader := open(t, c, func(cfg *Config) {
		cfg.Prefix, cfg.relistPage = writer.prefix, testPage
		cfg.betweenPages = func(rev int64) {
			if !armed.CompareAndSwap(true, false) {
				return
			}
			// Page one was m00–m02; these are in pages to come.
			firstRev.Store(rev)
			ctx := t.Context()
			if err := writer.CreateMachine(ctx, newMachine("m05a", "late")); err != nil {
				t.Error(err)
			}
			if _, err := writer.UpdateMachine(ctx, "m09", 0, setRegion("r2")); err != nil {
				t.Error(err)
			}
			if err := writer.DeleteMachine(ctx, "m08", nil); err != nil {
				t.Error(err)
			}
		}
	})
	// Relist with the watch held, so the mirror is the listing's alone.
	held := holdWatch(t, reader)
	release := sync.OnceFunc(func() { close(held) })
	defer release() // a failure below must not leave Close waiting on the watch
	armed.Store(true)
	if err := reader.relist(t.Context()); err != nil {
		t.Fatal(err)
	}
	if firstRev.Load() == 0 {
		t.Fatal("relist read 10 machines without a page break")
	}
	if got := reader.mirror.revision(); got != firstRev.Load() {
		t.Errorf("mirror at revision %d, want the first page's %d", got, firstRev.Load())
	}
	if _, _, ok := reader.mirror.get("m05a"); ok {
		t.Error("machine created after the first page is in the listing")
	}
	if _, _, ok := reader.mirror.get("m08"); !ok {
		t.Error("machine deleted after the first page is missing from the listing")
	}
	if m, _, _ := reader.mirror.get("m09"); m == nil || m.Region != "r1" {
		t.Errorf("m09 in the listing = %+v, want region r1 as of the first page", m)
	}

	release()
	wait.Eventually(t, waitTimeout, func() bool {
		_, _, created := reader.mirror.get("m05a")
		_, _, deleted := reader.mirror.get("m08")
		m, _, _ := reader.mirror.get("m09")
		return created && !deleted && m != nil && m.Region == "r2"
	}, "the watch bringing the changes made during the listing")
	mirrorMatchesEtcd(t, reader)
	if _, err := reader.GetMachineRecent(t.Context(), "m08"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetMachineRecent(m08) = %v, want ErrNotFound", err)
	}
}

// compactNow commits a write outside the machines and compacts etcd up
// to it, so every earlier revision is gone.
func compactNow(t *testing.T, w *Store) int64 {
	t.Helper()
	resp, err := w.cli.Put(t.Context(), w.prefix+"compact-me", "x")
	if err != nil {
		t.Fatal(err)
	}
	rev := resp.Header.Revision
	if _, err := w.cli.Compact(t.Context(), rev, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	return rev
}

// TestRelist_CompactedMidwayStartsOver: when the listing's revision is
// compacted away between two pages, Open starts the listing over at the
// current revision and still loads every machine.
func TestRelist_CompactedMidwayStartsOver(t *testing.T) {
	c := etcdtest.Start(t, 1)
	writer := open(t, c, nil)
	tenMachines(t, writer)
	var calls atomic.Int32
	var logs sockettest.Buffer
	reader := open(t, c, func(cfg *Config) {
		cfg.Prefix, cfg.relistPage = writer.prefix, testPage
		cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
		cfg.betweenPages = func(int64) {
			if calls.Add(1) != 1 {
				return
			}
			// Only the second listing, at a later revision, has it.
			if err := writer.CreateMachine(t.Context(), newMachine("m05a", "late")); err != nil {
				t.Error(err)
			}
			compactNow(t, writer)
		}
	})
	// Listing one: one page, then compacted; listing two: four pages.
	if got := calls.Load(); got != 4 {
		t.Errorf("%d page breaks, want 4 (1 before the compaction, 3 in the listing after)", got)
	}
	if !strings.Contains(logs.String(), "compacted while listing") {
		t.Errorf("restart not logged:\n%s", logs.String())
	}
	if _, _, ok := reader.mirror.get("m05a"); !ok {
		t.Error("mirror lacks the machine created before the restart")
	}
	mirrorMatchesEtcd(t, reader)
}

// TestRelist_CompactedTwiceFails: the listing starts over only once; a
// second compaction midway fails Open with the compaction error.
func TestRelist_CompactedTwiceFails(t *testing.T) {
	c := etcdtest.Start(t, 1)
	writer := open(t, c, nil)
	tenMachines(t, writer)
	var calls atomic.Int32
	s, err := Open(t.Context(), Config{
		Endpoints: c.Endpoints(), Prefix: writer.prefix,
		Logger:     slog.New(slog.DiscardHandler),
		relistPage: testPage,
		betweenPages: func(int64) {
			calls.Add(1)
			compactNow(t, writer)
		},
	})
	if err == nil {
		s.Close()
		t.Fatal("Open succeeded with every listing compacted midway")
	}
	if !errors.Is(err, rpctypes.ErrCompacted) {
		t.Errorf("Open = %v, want ErrCompacted", err)
	}
	if got := calls.Load(); got != 2 {
		t.Errorf("%d listings, want 2 (one restart)", got)
	}
}

// TestRelist_EachPageHasTheRequestTimeout: at Open, every page of the
// listing is bounded by the request timeout of its own, not the whole
// listing by the dial timeout (which a large registry outgrows).
func TestRelist_EachPageHasTheRequestTimeout(t *testing.T) {
	c := etcdtest.Start(t, 1)
	writer := open(t, c, nil)
	tenMachines(t, writer)
	// Far apart, so a page's deadline tells which one bounds it.
	const dial, request = time.Hour, 2 * time.Hour
	var mu sync.Mutex
	var left []time.Duration // each page's time to its deadline, as sent
	record := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if r, ok := req.(*etcdserverpb.RangeRequest); ok && strings.HasPrefix(string(r.Key), writer.prefix+dirMachines) {
			d := time.Duration(-1) // no deadline
			if dl, ok := ctx.Deadline(); ok {
				d = time.Until(dl)
			}
			mu.Lock()
			left = append(left, d)
			mu.Unlock()
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	s := open(t, c, func(cfg *Config) {
		cfg.Prefix, cfg.relistPage = writer.prefix, testPage
		cfg.DialTimeout, cfg.RequestTimeout = dial, request
		cfg.dialOptions = []grpc.DialOption{grpc.WithChainUnaryInterceptor(record)}
	})
	mu.Lock()
	defer mu.Unlock()
	if len(left) != 4 {
		t.Fatalf("Open read 10 machines in %d gets, want 4 pages", len(left))
	}
	for i, d := range left {
		if d <= dial || d > request {
			t.Errorf("page %d sent with %v to its deadline, want the request timeout %v (dial timeout %v)", i+1, d.Round(time.Second), request, dial)
		}
	}
	if len(s.mirror.list()) != 10 {
		t.Errorf("mirror holds %d machines, want 10", len(s.mirror.list()))
	}
}
