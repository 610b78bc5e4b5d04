package bolt

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.etcd.io/bbolt"

	"github.com/wicket-sh/wicket/internal/store"
	"github.com/wicket-sh/wicket/internal/store/storetest"
)

func openTemp(t *testing.T) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := Open(path, nil)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s, path
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s, _ := openTemp(t)
		return s
	})
}

func TestReopen_DataPersists(t *testing.T) {
	s, path := openTemp(t)
	ctx := t.Context()
	m := &store.Machine{ID: "m1", Org: "acme", App: "web", Name: "a", Tags: map[string]string{"k": "v"}, SourceAddrs: []string{"10.0.0.2/32"}}
	if err := s.CreateMachine(ctx, m); err != nil {
		t.Fatal(err)
	}
	m, err := s.UpdateMachine(ctx, "m1", 1, func(m *store.Machine) error { m.Region = "ams"; return nil })
	if err != nil {
		t.Fatal(err)
	}
	k := &store.SealedKey{ID: "k1", Kind: store.KindOIDC, Alg: "RS256", State: "active", CreatedAt: time.Now().UTC(), Sealed: []byte{1, 2, 3}}
	if err := s.PutKey(ctx, k); err != nil {
		t.Fatal(err)
	}
	r := &store.Revocation{TokenID: "t1", Reason: "leaked", RevokedAt: time.Now().UTC()}
	if err := s.Revoke(ctx, r); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s, err = Open(path, nil)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	got, err := s.GetMachine(ctx, "m1")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(m, got); diff != "" {
		t.Errorf("machine after reopen (-want +got):\n%s", diff)
	}
	keys, err := s.ListKeys(ctx, store.KindOIDC)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]*store.SealedKey{k}, keys); diff != "" {
		t.Errorf("keys after reopen (-want +got):\n%s", diff)
	}
	revs, err := s.ListRevocations(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]*store.Revocation{r}, revs); diff != "" {
		t.Errorf("revocations after reopen (-want +got):\n%s", diff)
	}
	// The name index survived too.
	err = s.CreateMachine(ctx, &store.Machine{ID: "m2", Org: "acme", App: "web", Name: "a"})
	if !errors.Is(err, store.ErrExists) {
		t.Errorf("CreateMachine with a persisted name err = %v, want ErrExists", err)
	}
	// The revision counter continues rather than restarting, so watch
	// revisions never go back across a restart.
	ch, err := s.WatchMachine(ctx, "m1")
	if err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-ch:
		if ev.Revision < 4 {
			t.Errorf("revision after reopen = %d, want >= 4", ev.Revision)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no initial watch event")
	}
}

func TestOpen_SecondOpenFailsClearly(t *testing.T) {
	_, path := openTemp(t)
	const timeout = 200 * time.Millisecond
	start := time.Now()
	s2, err := Open(path, &Options{LockTimeout: timeout})
	elapsed := time.Since(start)
	if err == nil {
		s2.Close()
		t.Fatal("second Open of a held state file succeeded")
	}
	if !errors.Is(err, ErrLocked) {
		t.Errorf("err = %v, want ErrLocked", err)
	}
	if elapsed > timeout+2*time.Second {
		t.Errorf("second Open took %v, want about %v", elapsed, timeout)
	}
	t.Logf("second open: %v (after %v)", err, elapsed.Round(time.Millisecond))
}

func TestOpen_FileMode0600(t *testing.T) {
	_, path := openTemp(t)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("state file mode = %#o, want 0600", perm)
	}
}

func TestOpen_MissingDirFails(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing", "state.db")
	if _, err := Open(path, nil); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Open in a missing directory err = %v, want ErrNotExist", err)
	}
}

func TestOpen_UnknownSchemaRefused(t *testing.T) {
	s, path := openTemp(t)
	if err := s.db.Update(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(metaSchema, encodeUint(schemaVersion+1))
	}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if s, err := Open(path, nil); err == nil {
		s.Close()
		t.Fatal("Open of a newer schema succeeded")
	}
}

func TestCompositeKey_NoCollisions(t *testing.T) {
	seen := map[string][]string{}
	for _, parts := range [][]string{
		{"a/b", "c", "d"}, {"a", "b/c", "d"}, {"a", "b", "c/d"},
		{"ab", "", "c"}, {"a", "b", "c"}, {"", "ab", "c"}, {"a\x00b", "c", ""},
	} {
		k := string(compositeKey(parts...))
		if prev, ok := seen[k]; ok {
			t.Errorf("compositeKey(%q) == compositeKey(%q)", parts, prev)
		}
		seen[k] = parts
	}
}

// The machine cache never serves a state older than the last write, and a
// watcher re-reading on an event sees the state the event carries.
func TestMachineCache_NeverStale(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "state.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	m := &store.Machine{ID: "m1", Name: "n", Org: "o", App: "a", Tags: map[string]string{"v": "0"}}
	if err := s.CreateMachine(ctx, m); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetMachine(ctx, "m1"); err != nil { // fill the cache
		t.Fatal(err)
	}
	events, err := s.WatchMachine(ctx, "m1")
	if err != nil {
		t.Fatal(err)
	}
	<-events // initial state
	for i := 1; i <= 50; i++ {
		v := strconv.Itoa(i)
		if _, err := s.UpdateMachine(ctx, "m1", 0, func(m *store.Machine) error { m.Tags["v"] = v; return nil }); err != nil {
			t.Fatal(err)
		}
		got, err := s.GetMachine(ctx, "m1")
		if err != nil || got.Tags["v"] != v {
			t.Fatalf("after update %d: get = %v, %v", i, got.Tags, err)
		}
		ev := <-events
		again, _ := s.GetMachine(ctx, "m1")
		if again.Version < ev.Machine.Version {
			t.Fatalf("re-read on event: version %d older than event's %d", again.Version, ev.Machine.Version)
		}
	}
	// Callers get copies: mutating one does not change the cache.
	got, _ := s.GetMachine(ctx, "m1")
	got.Tags["v"] = "mutated"
	if again, _ := s.GetMachine(ctx, "m1"); again.Tags["v"] == "mutated" {
		t.Fatal("cache shares memory with callers")
	}
	if err := s.DeleteMachine(ctx, "m1", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetMachine(ctx, "m1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("after delete: %v", err)
	}
}
