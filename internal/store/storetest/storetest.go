// Package storetest is the conformance suite every store.Store backend must
// pass, so the issuer can switch backends without noticing.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/wicket-sh/wicket/internal/store"
)

// waitTimeout bounds every wait for a watch event; generous for a loaded
// CI machine, since a pass never waits it out.
const waitTimeout = 10 * time.Second

// Run runs the suite. open must return a new, empty store for each call;
// Run closes it when the subtest ends. The cases of the optional
// capabilities (store.Elector, store.Importer, store.Health,
// store.NameIndex) run for those the store implements; a shared store
// must also pass RunShared.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	fresh := func(t *testing.T) store.Store {
		t.Helper()
		s := open(t)
		t.Cleanup(func() {
			if err := s.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
		return s
	}
	tests := []struct {
		name string
		fn   func(t *testing.T, s store.Store)
	}{
		{"CreateGet", testCreateGet},
		{"CreateRequiresID", testCreateRequiresID},
		{"CreateExists", testCreateExists},
		{"GetNotFound", testGetNotFound},
		{"ListSorted", testListSorted},
		{"Update", testUpdate},
		{"UpdateExpectVersion", testUpdateExpectVersion},
		{"UpdateFnError", testUpdateFnError},
		{"UpdateNotFound", testUpdateNotFound},
		{"UpdateImmutableFields", testUpdateImmutableFields},
		{"UpdateRename", testUpdateRename},
		{"Delete", testDelete},
		{"MachineCloneSafety", testMachineCloneSafety},
		{"ConcurrentUpdatesNoLostUpdate", testConcurrentUpdates},
		{"ConflictRetry", testConflictRetry},
		{"Keys", testKeys},
		{"KeyCloneSafety", testKeyCloneSafety},
		{"Revocations", testRevocations},
		{"CanceledContext", testCanceledContext},
		{"WatchMachine", testWatchMachine},
		{"WatchMachineNotFound", testWatchMachineNotFound},
		{"WatchMachineCoalesces", testWatchMachineCoalesces},
		{"WatchMachineDuringWrites", testWatchMachineDuringWrites},
		{"WatchMachineOwnCopies", testWatchMachineOwnCopies},
		{"WatchKeys", testWatchKeys},
	}
	tests = append(tests, capabilityTests...)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.fn(t, fresh(t)) })
	}
	t.Run("CloseEndsWatches", func(t *testing.T) { testCloseEndsWatches(t, open(t)) })
}

func newMachine(id, org, app, name string) *store.Machine {
	return &store.Machine{
		ID: id, Org: org, App: app, Name: name,
		Region: "ams", Image: "registry.example/app:1", ImageDigest: "sha256:abc",
		PrivateIP:   "fdaa::2",
		Tags:        map[string]string{"role": "web"},
		SourceAddrs: []string{"10.0.0.2/32", "fdaa::2/128"},
	}
}

func mustCreate(t *testing.T, s store.Store, m *store.Machine) *store.Machine {
	t.Helper()
	if err := s.CreateMachine(t.Context(), m); err != nil {
		t.Fatalf("CreateMachine(%s): %v", m.ID, err)
	}
	return m.Clone()
}

func mustGet(t *testing.T, s store.Store, id string) *store.Machine {
	t.Helper()
	m, err := s.GetMachine(t.Context(), id)
	if err != nil {
		t.Fatalf("GetMachine(%s): %v", id, err)
	}
	return m
}

func setTag(k, v string) func(*store.Machine) error {
	return func(m *store.Machine) error {
		if m.Tags == nil {
			m.Tags = map[string]string{}
		}
		m.Tags[k] = v
		return nil
	}
}

func testCreateGet(t *testing.T, s store.Store) {
	before := time.Now()
	m := newMachine("m1", "acme", "web", "a")
	if err := s.CreateMachine(t.Context(), m); err != nil {
		t.Fatalf("CreateMachine: %v", err)
	}
	if m.Version != 1 {
		t.Errorf("Version = %d, want 1", m.Version)
	}
	if m.CreatedAt.Before(before.Add(-time.Second)) || !m.UpdatedAt.Equal(m.CreatedAt) {
		t.Errorf("CreatedAt = %v, UpdatedAt = %v; want now and equal", m.CreatedAt, m.UpdatedAt)
	}
	if diff := cmp.Diff(m, mustGet(t, s, "m1")); diff != "" {
		t.Errorf("GetMachine mismatch (-created +got):\n%s", diff)
	}
}

func testCreateRequiresID(t *testing.T, s store.Store) {
	if err := s.CreateMachine(t.Context(), newMachine("", "acme", "web", "a")); err == nil {
		t.Fatal("CreateMachine with empty ID succeeded")
	}
	if got, _ := s.ListMachines(t.Context()); len(got) != 0 {
		t.Errorf("ListMachines = %d machines after refused create, want 0", len(got))
	}
}

func testCreateExists(t *testing.T, s store.Store) {
	mustCreate(t, s, newMachine("m1", "acme", "web", "a"))
	tests := []struct {
		name    string
		m       *store.Machine
		wantErr error
	}{
		{"same id", newMachine("m1", "acme", "web", "other"), store.ErrExists},
		{"same id other org", newMachine("m1", "globex", "api", "z"), store.ErrExists},
		{"same org app name", newMachine("m2", "acme", "web", "a"), store.ErrExists},
		{"same name other app", newMachine("m3", "acme", "api", "a"), nil},
		{"same name other org", newMachine("m4", "globex", "web", "a"), nil},
		// A naive "org/app/name" index would make these collide.
		{"separator in org", newMachine("m5", "acme/web", "", "a"), nil},
		{"separator in app", newMachine("m6", "acme", "web/a", ""), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.CreateMachine(t.Context(), tt.m)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("CreateMachine err = %v, want %v", err, tt.wantErr)
			}
		})
	}
	if got := mustGet(t, s, "m1"); got.Name != "a" || got.Version != 1 {
		t.Errorf("original machine changed by a refused create: %+v", got)
	}
}

func testGetNotFound(t *testing.T, s store.Store) {
	for _, id := range []string{"missing", ""} {
		if _, err := s.GetMachine(t.Context(), id); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("GetMachine(%q) err = %v, want ErrNotFound", id, err)
		}
	}
}

func testListSorted(t *testing.T, s store.Store) {
	if got, err := s.ListMachines(t.Context()); err != nil || len(got) != 0 {
		t.Fatalf("ListMachines on empty store = %v, %v; want none", got, err)
	}
	// Created out of order, with IDs sorting against the names.
	for _, m := range []*store.Machine{
		newMachine("1", "globex", "api", "a"),
		newMachine("2", "acme", "web", "b"),
		newMachine("3", "acme", "api", "z"),
		newMachine("4", "acme", "web", "a"),
	} {
		mustCreate(t, s, m)
	}
	got, err := s.ListMachines(t.Context())
	if err != nil {
		t.Fatalf("ListMachines: %v", err)
	}
	var ids []string
	for _, m := range got {
		ids = append(ids, m.ID)
	}
	if diff := cmp.Diff([]string{"3", "4", "2", "1"}, ids); diff != "" {
		t.Errorf("ListMachines order (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(mustGet(t, s, "2"), got[2]); diff != "" {
		t.Errorf("listed machine differs from GetMachine (-get +list):\n%s", diff)
	}
}

func testUpdate(t *testing.T, s store.Store) {
	orig := mustCreate(t, s, newMachine("m1", "acme", "web", "a"))
	got, err := s.UpdateMachine(t.Context(), "m1", 0, func(m *store.Machine) error {
		if m.Version != 1 || m.Tags["role"] != "web" {
			t.Errorf("fn got %+v, want the current machine", m)
		}
		m.Region = "fra"
		m.Tags["role"] = "worker"
		m.SourceAddrs = append(m.SourceAddrs, "10.0.0.3/32")
		return nil
	})
	if err != nil {
		t.Fatalf("UpdateMachine: %v", err)
	}
	want := orig.Clone()
	want.Region = "fra"
	want.Tags["role"] = "worker"
	want.SourceAddrs = append(want.SourceAddrs, "10.0.0.3/32")
	want.Version = 2
	want.UpdatedAt = got.UpdatedAt
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("UpdateMachine result (-want +got):\n%s", diff)
	}
	if got.UpdatedAt.Before(orig.UpdatedAt) {
		t.Errorf("UpdatedAt went back: %v < %v", got.UpdatedAt, orig.UpdatedAt)
	}
	if diff := cmp.Diff(got, mustGet(t, s, "m1")); diff != "" {
		t.Errorf("GetMachine after update (-returned +stored):\n%s", diff)
	}
}

func testUpdateExpectVersion(t *testing.T, s store.Store) {
	mustCreate(t, s, newMachine("m1", "acme", "web", "a"))
	called := false
	_, err := s.UpdateMachine(t.Context(), "m1", 7, func(*store.Machine) error { called = true; return nil })
	if !errors.Is(err, store.ErrConflict) {
		t.Fatalf("UpdateMachine(expect 7) err = %v, want ErrConflict", err)
	}
	if called {
		t.Error("fn was called despite a version conflict")
	}
	got, err := s.UpdateMachine(t.Context(), "m1", 1, setTag("k", "v"))
	if err != nil || got.Version != 2 {
		t.Fatalf("UpdateMachine(expect 1) = %+v, %v; want version 2", got, err)
	}
	// The version it just matched is now stale.
	if _, err := s.UpdateMachine(t.Context(), "m1", 1, setTag("k", "w")); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("UpdateMachine(stale expect 1) err = %v, want ErrConflict", err)
	}
	if got := mustGet(t, s, "m1"); got.Version != 2 || got.Tags["k"] != "v" {
		t.Errorf("machine after conflict = version %d tag %q, want 2 and %q", got.Version, got.Tags["k"], "v")
	}
}

func testUpdateFnError(t *testing.T, s store.Store) {
	before := mustCreate(t, s, newMachine("m1", "acme", "web", "a"))
	errBoom := errors.New("boom")
	_, err := s.UpdateMachine(t.Context(), "m1", 0, func(m *store.Machine) error {
		m.Name = "half-done"
		return errBoom
	})
	if !errors.Is(err, errBoom) {
		t.Fatalf("UpdateMachine err = %v, want fn's error", err)
	}
	if diff := cmp.Diff(before, mustGet(t, s, "m1")); diff != "" {
		t.Errorf("machine changed by a failed update (-before +after):\n%s", diff)
	}
}

func testUpdateNotFound(t *testing.T, s store.Store) {
	_, err := s.UpdateMachine(t.Context(), "missing", 0, func(*store.Machine) error {
		t.Error("fn called for a missing machine")
		return nil
	})
	if !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("UpdateMachine(missing) err = %v, want ErrNotFound", err)
	}
}

func testUpdateImmutableFields(t *testing.T, s store.Store) {
	before := mustCreate(t, s, newMachine("m1", "acme", "web", "a"))
	for name, fn := range map[string]func(*store.Machine) error{
		"ID":        func(m *store.Machine) error { m.ID = "m2"; return nil },
		"Version":   func(m *store.Machine) error { m.Version = 99; return nil },
		"CreatedAt": func(m *store.Machine) error { m.CreatedAt = m.CreatedAt.Add(-time.Hour); return nil },
	} {
		if _, err := s.UpdateMachine(t.Context(), "m1", 0, fn); err == nil {
			t.Errorf("UpdateMachine changing %s succeeded", name)
		}
	}
	if diff := cmp.Diff(before, mustGet(t, s, "m1")); diff != "" {
		t.Errorf("machine changed by refused updates (-before +after):\n%s", diff)
	}
	if _, err := s.GetMachine(t.Context(), "m2"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetMachine(m2) err = %v, want ErrNotFound", err)
	}
}

func testUpdateRename(t *testing.T, s store.Store) {
	mustCreate(t, s, newMachine("m1", "acme", "web", "a"))
	mustCreate(t, s, newMachine("m2", "acme", "web", "b"))
	rename := func(name string) func(*store.Machine) error {
		return func(m *store.Machine) error { m.Name = name; return nil }
	}
	if _, err := s.UpdateMachine(t.Context(), "m2", 0, rename("a")); !errors.Is(err, store.ErrExists) {
		t.Fatalf("rename onto a taken name err = %v, want ErrExists", err)
	}
	if _, err := s.UpdateMachine(t.Context(), "m2", 0, rename("c")); err != nil {
		t.Fatalf("rename to a free name: %v", err)
	}
	// The old name is free again; the new one is taken.
	mustCreate(t, s, newMachine("m3", "acme", "web", "b"))
	if err := s.CreateMachine(t.Context(), newMachine("m4", "acme", "web", "c")); !errors.Is(err, store.ErrExists) {
		t.Fatalf("CreateMachine with the renamed-to name err = %v, want ErrExists", err)
	}
	// An update that keeps the name must not trip over its own index entry.
	if _, err := s.UpdateMachine(t.Context(), "m1", 0, setTag("k", "v")); err != nil {
		t.Fatalf("update without rename: %v", err)
	}
}

func testDelete(t *testing.T, s store.Store) {
	if err := s.DeleteMachine(t.Context(), "missing", nil); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("DeleteMachine(missing) err = %v, want ErrNotFound", err)
	}
	mustCreate(t, s, newMachine("m1", "acme", "web", "a"))
	mustCreate(t, s, newMachine("m2", "acme", "web", "b"))
	// The check sees the machine as it is now, and its error aborts the
	// deletion and comes back as is.
	if _, err := s.UpdateMachine(t.Context(), "m1", 0, setTag("moved", "yes")); err != nil {
		t.Fatal(err)
	}
	errRefused := errors.New("refused by check")
	var seen *store.Machine
	err := s.DeleteMachine(t.Context(), "m1", func(m *store.Machine) error { seen = m; return errRefused })
	if !errors.Is(err, errRefused) {
		t.Fatalf("DeleteMachine with a refusing check err = %v, want the check's error", err)
	}
	if seen == nil || seen.Version != 2 || seen.Tags["moved"] != "yes" {
		t.Errorf("the check saw %+v, want the machine as updated (version 2)", seen)
	}
	if _, err := s.GetMachine(t.Context(), "m1"); err != nil {
		t.Fatalf("machine gone after a refused delete: %v", err)
	}
	if err := s.DeleteMachine(t.Context(), "m1", func(*store.Machine) error { return nil }); err != nil {
		t.Fatalf("DeleteMachine: %v", err)
	}
	if _, err := s.GetMachine(t.Context(), "m1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetMachine after delete err = %v, want ErrNotFound", err)
	}
	if err := s.DeleteMachine(t.Context(), "m1", nil); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("second DeleteMachine err = %v, want ErrNotFound", err)
	}
	if got, _ := s.ListMachines(t.Context()); len(got) != 1 || got[0].ID != "m2" {
		t.Errorf("ListMachines after delete = %v, want only m2", got)
	}
	// Both the id and the name are free again.
	m := mustCreate(t, s, newMachine("m1", "acme", "web", "a"))
	if m.Version != 1 {
		t.Errorf("recreated machine Version = %d, want 1", m.Version)
	}
}

func testMachineCloneSafety(t *testing.T, s store.Store) {
	in := newMachine("m1", "acme", "web", "a")
	mustCreate(t, s, in)
	want := in.Clone()
	mutate := func(m *store.Machine) {
		m.Tags["role"] = "mutated"
		m.Tags["new"] = "x"
		m.SourceAddrs[0] = "0.0.0.0/0"
	}
	check := func(step string) {
		t.Helper()
		if diff := cmp.Diff(want, mustGet(t, s, "m1")); diff != "" {
			t.Errorf("after mutating %s, stored machine changed (-want +got):\n%s", step, diff)
		}
	}

	mutate(in)
	check("the created machine")

	mutate(mustGet(t, s, "m1"))
	check("a got machine")

	list, err := s.ListMachines(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	mutate(list[0])
	check("a listed machine")

	var seen *store.Machine
	got, err := s.UpdateMachine(t.Context(), "m1", 0, func(m *store.Machine) error {
		seen = m
		m.Region = "fra"
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want = got.Clone()
	mutate(seen)
	check("the machine passed to fn")
	mutate(got)
	check("the updated machine")
}

func testConcurrentUpdates(t *testing.T, s store.Store) {
	mustCreate(t, s, newMachine("m1", "acme", "web", "a"))
	const n = 20
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			_, err := s.UpdateMachine(t.Context(), "m1", 0, func(m *store.Machine) error {
				c, _ := strconv.Atoi(m.Tags["counter"])
				m.Tags["counter"] = strconv.Itoa(c + 1)
				return nil
			})
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("UpdateMachine: %v", err)
		}
	}
	got := mustGet(t, s, "m1")
	if got.Tags["counter"] != strconv.Itoa(n) || got.Version != n+1 {
		t.Errorf("counter = %s, version = %d; want %d and %d (lost update)", got.Tags["counter"], got.Version, n, n+1)
	}
}

// testConflictRetry is the read-modify-write loop a caller holding a stale
// copy runs: every writer eventually wins, none overwrites another.
func testConflictRetry(t *testing.T, s store.Store) {
	mustCreate(t, s, newMachine("m1", "acme", "web", "a"))
	const n = 10
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			for {
				cur, err := s.GetMachine(t.Context(), "m1")
				if err != nil {
					t.Errorf("GetMachine: %v", err)
					return
				}
				_, err = s.UpdateMachine(t.Context(), "m1", cur.Version, setTag(fmt.Sprint("w", i), "done"))
				if errors.Is(err, store.ErrConflict) {
					continue
				}
				if err != nil {
					t.Errorf("UpdateMachine: %v", err)
				}
				return
			}
		})
	}
	wg.Wait()
	got := mustGet(t, s, "m1")
	for i := range n {
		if got.Tags[fmt.Sprint("w", i)] != "done" {
			t.Errorf("writer %d's update lost", i)
		}
	}
	if got.Version != n+1 {
		t.Errorf("Version = %d, want %d", got.Version, n+1)
	}
}

func newKey(kind, id string, created time.Time) *store.SealedKey {
	return &store.SealedKey{
		ID: id, Kind: kind, Alg: "ES256", State: "active",
		CreatedAt: created, ActivateAt: created.Add(time.Minute),
		Sealed: []byte("sealed:" + kind + "/" + id),
	}
}

func testKeys(t *testing.T, s store.Store) {
	ctx := t.Context()
	t0 := time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC)
	keys := []*store.SealedKey{
		newKey(store.KindOIDC, "o2", t0.Add(2*time.Hour)),
		newKey(store.KindMacaroon, "r1", t0),
		newKey(store.KindOIDC, "o3", t0),
		newKey(store.KindOIDC, "o1", t0), // same CreatedAt as o3: ID breaks the tie
	}
	for _, k := range keys {
		if err := s.PutKey(ctx, k); err != nil {
			t.Fatalf("PutKey(%s): %v", k.ID, err)
		}
	}
	list := func(kind string) []*store.SealedKey {
		t.Helper()
		got, err := s.ListKeys(ctx, kind)
		if err != nil {
			t.Fatalf("ListKeys(%q): %v", kind, err)
		}
		return got
	}
	if diff := cmp.Diff([]*store.SealedKey{keys[3], keys[2], keys[0]}, list(store.KindOIDC)); diff != "" {
		t.Errorf("ListKeys(oidc) (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]*store.SealedKey{keys[1]}, list(store.KindMacaroon)); diff != "" {
		t.Errorf("ListKeys(macaroon) (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]*store.SealedKey{keys[1], keys[3], keys[2], keys[0]}, list("")); diff != "" {
		t.Errorf("ListKeys(all) (-want +got):\n%s", diff)
	}
	if got := list("oid"); len(got) != 0 {
		t.Errorf("ListKeys(oid) = %d keys, want 0: kinds match exactly", len(got))
	}

	// Put replaces: rotation retires a key in place.
	retired := keys[0].Clone()
	retired.State, retired.RetiredAt = "retired", t0.Add(3*time.Hour)
	if err := s.PutKey(ctx, retired); err != nil {
		t.Fatalf("PutKey(replace): %v", err)
	}
	if diff := cmp.Diff([]*store.SealedKey{keys[3], keys[2], retired}, list(store.KindOIDC)); diff != "" {
		t.Errorf("ListKeys after replace (-want +got):\n%s", diff)
	}

	if err := s.DeleteKey(ctx, store.KindOIDC, "o3"); err != nil {
		t.Fatalf("DeleteKey: %v", err)
	}
	if err := s.DeleteKey(ctx, store.KindOIDC, "o3"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("second DeleteKey err = %v, want ErrNotFound", err)
	}
	if err := s.DeleteKey(ctx, store.KindMacaroon, "o1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("DeleteKey(wrong kind) err = %v, want ErrNotFound", err)
	}
	if diff := cmp.Diff([]*store.SealedKey{keys[3], retired}, list(store.KindOIDC)); diff != "" {
		t.Errorf("ListKeys after delete (-want +got):\n%s", diff)
	}

	for _, k := range []*store.SealedKey{newKey("", "x", t0), newKey(store.KindOIDC, "", t0)} {
		if err := s.PutKey(ctx, k); err == nil {
			t.Errorf("PutKey(kind %q, id %q) succeeded, want error", k.Kind, k.ID)
		}
	}
}

func testKeyCloneSafety(t *testing.T, s store.Store) {
	ctx := t.Context()
	k := newKey(store.KindOIDC, "k1", time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC))
	want := k.Clone()
	if err := s.PutKey(ctx, k); err != nil {
		t.Fatal(err)
	}
	k.Sealed[0] = 'X'
	got, err := s.ListKeys(ctx, store.KindOIDC)
	if err != nil || len(got) != 1 {
		t.Fatalf("ListKeys = %v, %v", got, err)
	}
	if diff := cmp.Diff(want, got[0]); diff != "" {
		t.Errorf("stored key changed with the caller's copy (-want +got):\n%s", diff)
	}
	got[0].Sealed[0] = 'Y'
	again, _ := s.ListKeys(ctx, store.KindOIDC)
	if diff := cmp.Diff(want, again[0]); diff != "" {
		t.Errorf("stored key changed with a listed copy (-want +got):\n%s", diff)
	}
}

func testRevocations(t *testing.T, s store.Store) {
	ctx := t.Context()
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	if ok, err := s.IsRevoked(ctx, "t1"); err != nil || ok {
		t.Fatalf("IsRevoked on empty store = %v, %v; want false", ok, err)
	}
	r2 := &store.Revocation{TokenID: "t2", Reason: "machine removed", RevokedAt: t0}
	r1 := &store.Revocation{TokenID: "t1", Reason: "leaked", RevokedAt: t0.Add(time.Hour), ExpiresAt: t0.Add(24 * time.Hour)}
	for _, r := range []*store.Revocation{r2, r1} {
		if err := s.Revoke(ctx, r); err != nil {
			t.Fatalf("Revoke(%s): %v", r.TokenID, err)
		}
	}
	for id, want := range map[string]bool{"t1": true, "t2": true, "t3": false, "": false} {
		if got, err := s.IsRevoked(ctx, id); err != nil || got != want {
			t.Errorf("IsRevoked(%q) = %v, %v; want %v", id, got, err, want)
		}
	}
	got, err := s.ListRevocations(ctx)
	if err != nil {
		t.Fatalf("ListRevocations: %v", err)
	}
	if diff := cmp.Diff([]*store.Revocation{r1, r2}, got); diff != "" {
		t.Errorf("ListRevocations (-want +got):\n%s", diff)
	}

	// Revoking again replaces the record.
	r1b := &store.Revocation{TokenID: "t1", Reason: "leaked again", RevokedAt: t0.Add(2 * time.Hour)}
	if err := s.Revoke(ctx, r1b); err != nil {
		t.Fatalf("Revoke(again): %v", err)
	}
	got, _ = s.ListRevocations(ctx)
	if diff := cmp.Diff([]*store.Revocation{r1b, r2}, got); diff != "" {
		t.Errorf("ListRevocations after re-revoke (-want +got):\n%s", diff)
	}

	if err := s.Revoke(ctx, &store.Revocation{Reason: "no id"}); err == nil {
		t.Error("Revoke with empty TokenID succeeded")
	}
}

func testCanceledContext(t *testing.T, s store.Store) {
	mustCreate(t, s, newMachine("m1", "acme", "web", "a"))
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	ops := map[string]func() error{
		"GetMachine":    func() error { _, err := s.GetMachine(ctx, "m1"); return err },
		"ListMachines":  func() error { _, err := s.ListMachines(ctx); return err },
		"CreateMachine": func() error { return s.CreateMachine(ctx, newMachine("m2", "acme", "web", "b")) },
		"UpdateMachine": func() error { _, err := s.UpdateMachine(ctx, "m1", 0, setTag("k", "v")); return err },
		"DeleteMachine": func() error { return s.DeleteMachine(ctx, "m1", nil) },
		"WatchMachine":  func() error { _, err := s.WatchMachine(ctx, "m1"); return err },
		"WatchKeys":     func() error { _, err := s.WatchKeys(ctx); return err },
	}
	for name, op := range ops {
		if err := op(); !errors.Is(err, context.Canceled) {
			t.Errorf("%s with canceled context err = %v, want context.Canceled", name, err)
		}
	}
	if got := mustGet(t, s, "m1"); got.Version != 1 {
		t.Errorf("machine changed under a canceled context: version %d", got.Version)
	}
}

func recv[T any](t *testing.T, ch <-chan T) T {
	t.Helper()
	select {
	case v, ok := <-ch:
		if !ok {
			t.Fatal("watch channel closed early")
		}
		return v
	case <-time.After(waitTimeout):
		t.Fatal("timed out waiting for a watch event")
	}
	var zero T
	return zero
}

func expectClosed[T any](t *testing.T, ch <-chan T) {
	t.Helper()
	deadline := time.After(waitTimeout)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-deadline:
			t.Fatal("watch channel not closed")
		}
	}
}

func expectNothing[T any](t *testing.T, ch <-chan T) {
	t.Helper()
	select {
	case v := <-ch:
		t.Fatalf("unexpected watch event %+v", v)
	case <-time.After(50 * time.Millisecond):
	}
}

func testWatchMachine(t *testing.T, s store.Store) {
	created := mustCreate(t, s, newMachine("m1", "acme", "web", "a"))
	mustCreate(t, s, newMachine("m2", "acme", "web", "b"))
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	ch, err := s.WatchMachine(ctx, "m1")
	if err != nil {
		t.Fatalf("WatchMachine: %v", err)
	}

	first := recv(t, ch)
	if first.MachineID != "m1" {
		t.Errorf("MachineID = %q, want m1", first.MachineID)
	}
	if diff := cmp.Diff(created, first.Machine); diff != "" {
		t.Errorf("initial event (-want +got):\n%s", diff)
	}
	expectNothing(t, ch)

	// Changes to other machines are not delivered.
	if _, err := s.UpdateMachine(t.Context(), "m2", 0, setTag("k", "v")); err != nil {
		t.Fatal(err)
	}
	expectNothing(t, ch)

	updated, err := s.UpdateMachine(t.Context(), "m1", 0, setTag("k", "v"))
	if err != nil {
		t.Fatal(err)
	}
	ev := recv(t, ch)
	if diff := cmp.Diff(updated, ev.Machine); diff != "" {
		t.Errorf("update event (-want +got):\n%s", diff)
	}
	if ev.Revision <= first.Revision {
		t.Errorf("revision did not grow: %d after %d", ev.Revision, first.Revision)
	}

	if err := s.DeleteMachine(t.Context(), "m1", nil); err != nil {
		t.Fatal(err)
	}
	del := recv(t, ch)
	if del.MachineID != "m1" || del.Machine != nil {
		t.Errorf("delete event = %+v, want MachineID m1 and nil Machine", del)
	}
	if del.Revision <= ev.Revision {
		t.Errorf("revision did not grow: %d after %d", del.Revision, ev.Revision)
	}

	cancel()
	expectClosed(t, ch)
}

func testWatchMachineNotFound(t *testing.T, s store.Store) {
	if _, err := s.WatchMachine(t.Context(), "missing"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("WatchMachine(missing) err = %v, want ErrNotFound", err)
	}
}

// testWatchMachineCoalesces: a watcher that never reads must not block
// writers, and when it does read it gets the final state, never an older
// state after a newer one.
func testWatchMachineCoalesces(t *testing.T, s store.Store) {
	mustCreate(t, s, newMachine("m1", "acme", "web", "a"))
	ch, err := s.WatchMachine(t.Context(), "m1")
	if err != nil {
		t.Fatalf("WatchMachine: %v", err)
	}
	const n = 100
	done := make(chan error, 1)
	go func() {
		for i := range n {
			if _, err := s.UpdateMachine(t.Context(), "m1", 0, setTag("i", strconv.Itoa(i))); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("UpdateMachine: %v", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("writers blocked by a watcher that does not read")
	}

	var events int
	var last uint64
	for last != n+1 {
		ev := recv(t, ch)
		events++
		if ev.Machine == nil || ev.Machine.Version <= last {
			t.Fatalf("event %d: %+v after version %d; want a newer state", events, ev.Machine, last)
		}
		last = ev.Machine.Version
	}
	if events > n/2 {
		t.Errorf("slow watcher got %d events for %d changes; want them coalesced", events, n+1)
	}
	if got := mustGet(t, s, "m1"); got.Tags["i"] != strconv.Itoa(n-1) {
		t.Errorf("final tag = %q, want %d", got.Tags["i"], n-1)
	}
}

// testWatchMachineDuringWrites guards the subscribe/read ordering: a watch
// started while writes are in flight still ends on the final state.
func testWatchMachineDuringWrites(t *testing.T, s store.Store) {
	mustCreate(t, s, newMachine("m1", "acme", "web", "a"))
	const n = 50
	for range 5 {
		start := mustGet(t, s, "m1").Version
		done := make(chan struct{})
		go func() {
			defer close(done)
			for range n {
				if _, err := s.UpdateMachine(t.Context(), "m1", 0, setTag("k", "v")); err != nil {
					t.Errorf("UpdateMachine: %v", err)
					return
				}
			}
		}()
		ctx, cancel := context.WithCancel(t.Context())
		ch, err := s.WatchMachine(ctx, "m1")
		if err != nil {
			cancel()
			t.Fatalf("WatchMachine: %v", err)
		}
		<-done
		for want := start + n; ; {
			ev := recv(t, ch)
			if ev.Machine.Version == want {
				break
			}
		}
		cancel()
	}
}

func testWatchMachineOwnCopies(t *testing.T, s store.Store) {
	mustCreate(t, s, newMachine("m1", "acme", "web", "a"))
	a, err := s.WatchMachine(t.Context(), "m1")
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.WatchMachine(t.Context(), "m1")
	if err != nil {
		t.Fatal(err)
	}
	recv(t, a)
	recv(t, b)
	if _, err := s.UpdateMachine(t.Context(), "m1", 0, setTag("k", "v")); err != nil {
		t.Fatal(err)
	}
	ea, eb := recv(t, a), recv(t, b)
	ea.Machine.Tags["k"] = "mutated"
	ea.Machine.SourceAddrs[0] = "0.0.0.0/0"
	if eb.Machine.Tags["k"] != "v" || eb.Machine.SourceAddrs[0] == "0.0.0.0/0" {
		t.Error("two watchers share one machine value")
	}
	if got := mustGet(t, s, "m1"); got.Tags["k"] != "v" || got.SourceAddrs[0] == "0.0.0.0/0" {
		t.Error("mutating a watched machine changed the store")
	}
}

func testWatchKeys(t *testing.T, s store.Store) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	ch, err := s.WatchKeys(ctx)
	if err != nil {
		t.Fatalf("WatchKeys: %v", err)
	}
	expectNothing(t, ch)

	k := newKey(store.KindOIDC, "k1", time.Now())
	steps := []struct {
		name string
		do   func() error
	}{
		{"PutKey", func() error { return s.PutKey(t.Context(), k) }},
		{"Revoke", func() error { return s.Revoke(t.Context(), &store.Revocation{TokenID: "t1", RevokedAt: time.Now()}) }},
		{"DeleteKey", func() error { return s.DeleteKey(t.Context(), store.KindOIDC, "k1") }},
	}
	for _, st := range steps {
		if err := st.do(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		recv(t, ch)
	}

	// Machine changes are not key changes.
	mustCreate(t, s, newMachine("m1", "acme", "web", "a"))
	expectNothing(t, ch)

	// A burst while nobody reads still leaves a wake-up pending.
	for i := range 10 {
		if err := s.PutKey(t.Context(), newKey(store.KindMacaroon, strconv.Itoa(i), time.Now())); err != nil {
			t.Fatal(err)
		}
	}
	recv(t, ch)

	cancel()
	expectClosed(t, ch)
}

func testCloseEndsWatches(t *testing.T, s store.Store) {
	mustCreate(t, s, newMachine("m1", "acme", "web", "a"))
	mch, err := s.WatchMachine(t.Context(), "m1")
	if err != nil {
		t.Fatal(err)
	}
	kch, err := s.WatchKeys(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	expectClosed(t, mch)
	expectClosed(t, kch)
}
