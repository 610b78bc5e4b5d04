package storetest

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/wicket-sh/wicket/internal/store"
	"github.com/wicket-sh/wicket/internal/wait"
)

// notElected bounds the wait that shows a second campaign is not elected
// while the first leads. It can only let a broken Elector pass, never fail
// a correct one.
const notElected = 300 * time.Millisecond

// capabilityTests are the cases of the optional capabilities
// (store/capabilities.go). Each skips, naming the capability, when the
// backend does not implement it; Shared is checked for every backend.
var capabilityTests = []struct {
	name string
	fn   func(t *testing.T, s store.Store)
}{
	{"SharedElects", testSharedElects},
	{"Elector/Exclusive", testLeadExclusive},
	{"Elector/CanceledContext", testLeadCanceled},
	{"Elector/LostWithContext", testLeadLostWithContext},
	{"Importer/KeepsVersionAndTimes", testImportKeeps},
	{"Importer/Exists", testImportExists},
	{"Importer/RequiresIDAndVersion", testImportRequires},
	{"Importer/Watched", testImportWatched},
	{"Health/ReachableWhenOpen", testHealthReachable},
	{"NameIndex/FindsByName", testNameIndexFinds},
	{"NameIndex/NotFound", testNameIndexNotFound},
	{"RecentReader/OwnWritesAtOnce", testRecentOwnWrites},
}

// testSharedElects: a store shared between processes can elect one, or
// the issuer refuses it (ElectorFor).
func testSharedElects(t *testing.T, s store.Store) {
	el, err := store.ElectorFor(s)
	if err != nil {
		t.Fatalf("%T: %v", s, err)
	}
	if s.Shared() != (el != nil) {
		t.Errorf("%T: Shared() = %v but ElectorFor gave %v", s, s.Shared(), el)
	}
}

func elector(t *testing.T, s store.Store) store.Elector {
	t.Helper()
	el, ok := s.(store.Elector)
	if !ok {
		t.Skipf("%T does not implement store.Elector", s)
	}
	return el
}

type led struct {
	lost   context.Context
	resign func()
	err    error
}

func campaign(ctx context.Context, el store.Elector, name string) <-chan led {
	ch := make(chan led, 1)
	go func() {
		l, r, err := el.Lead(ctx, name)
		ch <- led{l, r, err}
	}()
	return ch
}

func mustLead(t *testing.T, el store.Elector, name string) (context.Context, func()) {
	t.Helper()
	lost, resign, err := el.Lead(t.Context(), name)
	if err != nil {
		t.Fatalf("Lead(%s): %v", name, err)
	}
	t.Cleanup(resign)
	return lost, resign
}

// testLeadExclusive: a second campaign for a name is elected only once the
// leader resigns; other names are independent; resigning ends lost and is
// safe twice.
func testLeadExclusive(t *testing.T, s store.Store) {
	el := elector(t, s)
	lost, resign := mustLead(t, el, "a")
	if lost.Err() != nil {
		t.Fatal("leader's context ended at once")
	}
	second := campaign(t.Context(), el, "a")
	expectWaiting(t, second)
	_, resignB := mustLead(t, el, "b") // another name: not blocked by "a"
	resignB()

	resign()
	resign()
	if lost.Err() == nil {
		t.Error("leader's context live after resigning")
	}
	expectElected(t, second)
}

// expectWaiting fails if a campaign returns while another leads.
func expectWaiting(t *testing.T, c <-chan led) {
	t.Helper()
	select {
	case l := <-c:
		if l.err == nil {
			l.resign()
		}
		t.Fatalf("a campaign returned while another leads (err %v)", l.err)
	case <-time.After(notElected):
	}
}

// expectElected waits for a campaign to lead, then resigns.
func expectElected(t *testing.T, c <-chan led) {
	t.Helper()
	select {
	case l := <-c:
		if l.err != nil {
			t.Fatalf("campaign: %v", l.err)
		}
		if l.lost.Err() != nil {
			t.Error("new leader's context already ended")
		}
		l.resign()
	case <-time.After(waitTimeout):
		t.Fatal("campaign not elected after the leader resigned")
	}
}

// testLeadCanceled: a campaign under an ended context fails rather than
// leading.
func testLeadCanceled(t *testing.T, s store.Store) {
	el := elector(t, s)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	lost, resign, err := el.Lead(ctx, "a")
	if err == nil {
		resign()
		t.Fatalf("Lead under a canceled context led (lost ended: %v)", lost.Err() != nil)
	}
	// A campaign waiting behind a leader is called off by its context.
	mustLead(t, el, "a")
	ctx, cancel = context.WithCancel(t.Context())
	waiting := campaign(ctx, el, "a")
	cancel()
	select {
	case l := <-waiting:
		if l.err == nil {
			l.resign()
			t.Error("a campaign called off while another leads was elected")
		}
	case <-time.After(waitTimeout):
		t.Fatal("a waiting campaign ignored its context")
	}
}

// testLeadLostWithContext: the leader's context ends with the context it
// campaigned under.
func testLeadLostWithContext(t *testing.T, s store.Store) {
	el := elector(t, s)
	ctx, cancel := context.WithCancel(t.Context())
	lost, resign, err := el.Lead(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	defer resign()
	cancel()
	select {
	case <-lost.Done():
	case <-time.After(waitTimeout):
		t.Fatal("leader's context outlived the campaign's")
	}
	resign()
	// Leadership was given up: the name can be led again.
	_, again := mustLead(t, el, "a")
	again()
}

func importer(t *testing.T, s store.Store) store.Importer {
	t.Helper()
	imp, ok := s.(store.Importer)
	if !ok {
		t.Skipf("%T does not implement store.Importer", s)
	}
	return imp
}

// imported is a machine as another store holds it.
func imported(id, name string, version uint64) *store.Machine {
	m := newMachine(id, "acme", "web", name)
	m.Version = version
	m.CreatedAt = time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)
	m.UpdatedAt = time.Date(2024, 6, 7, 8, 9, 10, 0, time.UTC)
	return m
}

func testImportKeeps(t *testing.T, s store.Store) {
	imp := importer(t, s)
	m := imported("m1", "a", 7)
	if err := imp.ImportMachine(t.Context(), m); err != nil {
		t.Fatalf("ImportMachine: %v", err)
	}
	got := mustGet(t, s, "m1")
	if diff := cmp.Diff(m, got); diff != "" {
		t.Errorf("imported machine differs (-want +got):\n%s", diff)
	}
	// Optimistic concurrency continues from the imported version.
	if _, err := s.UpdateMachine(t.Context(), "m1", 6, setTag("k", "v")); !errors.Is(err, store.ErrConflict) {
		t.Errorf("UpdateMachine at an older version: %v, want ErrConflict", err)
	}
	up, err := s.UpdateMachine(t.Context(), "m1", 7, setTag("k", "v"))
	if err != nil {
		t.Fatalf("UpdateMachine at the imported version: %v", err)
	}
	if up.Version != 8 || !up.CreatedAt.Equal(m.CreatedAt) {
		t.Errorf("after update: version %d, created %v; want 8 and %v", up.Version, up.CreatedAt, m.CreatedAt)
	}
}

func testImportExists(t *testing.T, s store.Store) {
	imp := importer(t, s)
	if err := imp.ImportMachine(t.Context(), imported("m1", "a", 3)); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		m    *store.Machine
	}{
		{"same id", imported("m1", "other", 3)},
		{"same name", imported("m2", "a", 3)},
	} {
		if err := imp.ImportMachine(t.Context(), tc.m); !errors.Is(err, store.ErrExists) {
			t.Errorf("import with the %s: %v, want ErrExists", tc.name, err)
		}
	}
	if err := s.CreateMachine(t.Context(), newMachine("m3", "acme", "web", "a")); !errors.Is(err, store.ErrExists) {
		t.Errorf("create with an imported machine's name: %v, want ErrExists", err)
	}
	if got := mustGet(t, s, "m1"); got.Version != 3 || got.Name != "a" {
		t.Errorf("refused imports changed the machine: %+v", got)
	}
}

func testImportRequires(t *testing.T, s store.Store) {
	imp := importer(t, s)
	if err := imp.ImportMachine(t.Context(), imported("", "a", 1)); err == nil {
		t.Error("import without an id succeeded")
	}
	if err := imp.ImportMachine(t.Context(), imported("m1", "a", 0)); err == nil {
		t.Error("import with version 0 succeeded")
	}
	if ms, err := s.ListMachines(t.Context()); err != nil || len(ms) != 0 {
		t.Errorf("after refused imports: %d machines, %v", len(ms), err)
	}
}

// testImportWatched: an imported machine is listed and watched like a
// created one.
func testImportWatched(t *testing.T, s store.Store) {
	imp := importer(t, s)
	m := imported("m1", "a", 5)
	if err := imp.ImportMachine(t.Context(), m); err != nil {
		t.Fatal(err)
	}
	ms, err := s.ListMachines(t.Context())
	if err != nil || len(ms) != 1 || ms[0].ID != "m1" {
		t.Fatalf("ListMachines: %v, %v", ms, err)
	}
	ch, err := s.WatchMachine(t.Context(), "m1")
	if err != nil {
		t.Fatal(err)
	}
	if ev := recv(t, ch); ev.Machine == nil || ev.Machine.Version != 5 {
		t.Errorf("first event %+v, want the imported machine at version 5", ev)
	}
	if _, err := s.UpdateMachine(t.Context(), "m1", 0, setTag("k", "v")); err != nil {
		t.Fatal(err)
	}
	for {
		ev := recv(t, ch)
		if ev.Machine != nil && ev.Machine.Version == 6 {
			break
		}
	}
}

func testHealthReachable(t *testing.T, s store.Store) {
	h, ok := s.(store.Health)
	if !ok {
		t.Skipf("%T does not implement store.Health", s)
	}
	mustCreate(t, s, newMachine("m1", "acme", "web", "a"))
	if !h.Reachable() {
		t.Error("Reachable() = false on an open store that just answered")
	}
}

// testNameIndexFinds: the machine with that org, app and name, and only
// that one, as GetMachine returns it.
func testNameIndexFinds(t *testing.T, s store.Store) {
	ni := nameIndex(t, s)
	mustCreate(t, s, newMachine("m1", "acme", "web", "a"))
	mustCreate(t, s, newMachine("m2", "acme", "web", "b"))
	mustCreate(t, s, newMachine("m3", "acme", "api", "a"))
	for _, id := range []string{"m1", "m2", "m3"} {
		want := mustGet(t, s, id)
		got, err := ni.GetMachineByName(t.Context(), want.Org, want.App, want.Name)
		if err != nil {
			t.Fatalf("GetMachineByName(%s/%s/%s): %v", want.Org, want.App, want.Name, err)
		}
		if d := cmp.Diff(want, got); d != "" {
			t.Errorf("GetMachineByName(%s/%s/%s) differs from GetMachine(%s) (-want +got):\n%s", want.Org, want.App, want.Name, id, d)
		}
	}
}

// testNameIndexNotFound: an unknown name, and a deleted machine's, is
// ErrNotFound.
func testNameIndexNotFound(t *testing.T, s store.Store) {
	ni := nameIndex(t, s)
	mustCreate(t, s, newMachine("m1", "acme", "web", "a"))
	if err := s.DeleteMachine(t.Context(), "m1", nil); err != nil {
		t.Fatal(err)
	}
	for _, n := range [][3]string{{"acme", "web", "a"}, {"acme", "web", "zz"}, {"other", "web", "a"}} {
		if _, err := ni.GetMachineByName(t.Context(), n[0], n[1], n[2]); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("GetMachineByName(%v) = %v, want ErrNotFound", n, err)
		}
	}
}

// testRecentOwnWrites: this process's creates, updates and deletes are
// in what GetMachineRecent answers as soon as they return, and it finds
// what GetMachine finds.
func testRecentOwnWrites(t *testing.T, s store.Store) {
	rr := recentReader(t, s)
	ctx := t.Context()
	recent := func(id string) (*store.Machine, error) { return rr.GetMachineRecent(ctx, id) }
	if _, err := recent("m1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetMachineRecent(missing) = %v, want ErrNotFound", err)
	}
	mustCreate(t, s, newMachine("m1", "acme", "web", "a"))
	got, err := recent("m1")
	if err != nil {
		t.Fatalf("GetMachineRecent after create: %v", err)
	}
	if d := cmp.Diff(mustGet(t, s, "m1"), got); d != "" {
		t.Errorf("GetMachineRecent differs from GetMachine (-want +got):\n%s", d)
	}
	if _, err := s.UpdateMachine(ctx, "m1", 0, setTag("k", "v")); err != nil {
		t.Fatal(err)
	}
	if got, err := recent("m1"); err != nil || got.Tags["k"] != "v" || got.Version != 2 {
		t.Errorf("GetMachineRecent after update = %+v, %v, want version 2 with k=v", got, err)
	}
	if err := s.DeleteMachine(ctx, "m1", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := recent("m1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetMachineRecent after delete = %v, want ErrNotFound", err)
	}
}

func recentReader(t *testing.T, s store.Store) store.RecentReader {
	t.Helper()
	rr, ok := s.(store.RecentReader)
	if !ok {
		t.Skipf("%T does not implement store.RecentReader", s)
	}
	return rr
}

func nameIndex(t *testing.T, s store.Store) store.NameIndex {
	t.Helper()
	ni, ok := s.(store.NameIndex)
	if !ok {
		t.Skipf("%T does not implement store.NameIndex", s)
	}
	return ni
}

// RunShared runs the cases of a store shared between processes. open must
// return two stores on one new, empty state, as two replicas would open
// it; RunShared closes them when the subtest ends. A backend whose Shared
// reports true must pass it as well as Run.
func RunShared(t *testing.T, open func(t *testing.T) (a, b store.Store)) {
	fresh := func(t *testing.T) (store.Store, store.Store) {
		t.Helper()
		a, b := open(t)
		t.Cleanup(func() { a.Close(); b.Close() })
		if !a.Shared() || !b.Shared() {
			t.Fatalf("%T: Shared() = false on a shared store", a)
		}
		return a, b
	}
	tests := []struct {
		name string
		fn   func(t *testing.T, a, b store.Store)
	}{
		{"WritesSeenByOther", testSharedWrites},
		{"WatchesWokenByOther", testSharedWatches},
		{"OneLeaderAcross", testSharedLead},
		{"RecentReader/CreatedByOtherAtOnce", testSharedRecent},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := fresh(t)
			tt.fn(t, a, b)
		})
	}
}

func testSharedWrites(t *testing.T, a, b store.Store) {
	mustCreate(t, a, newMachine("m1", "acme", "web", "a"))
	if got := mustGet(t, b, "m1"); got.Version != 1 {
		t.Errorf("other replica reads version %d", got.Version)
	}
	if err := b.CreateMachine(t.Context(), newMachine("m2", "acme", "web", "a")); !errors.Is(err, store.ErrExists) {
		t.Errorf("other replica creates a taken name: %v, want ErrExists", err)
	}
	if _, err := b.UpdateMachine(t.Context(), "m1", 1, setTag("k", "v")); err != nil {
		t.Fatal(err)
	}
	if _, err := a.UpdateMachine(t.Context(), "m1", 1, setTag("k", "w")); !errors.Is(err, store.ErrConflict) {
		t.Errorf("update at a version the other replica replaced: %v, want ErrConflict", err)
	}
	if err := a.Revoke(t.Context(), &store.Revocation{TokenID: "t1", RevokedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if ok, err := b.IsRevoked(t.Context(), "t1"); err != nil || !ok {
		t.Errorf("other replica: IsRevoked = %v, %v", ok, err)
	}
}

func testSharedWatches(t *testing.T, a, b store.Store) {
	mustCreate(t, a, newMachine("m1", "acme", "web", "a"))
	mch, err := b.WatchMachine(t.Context(), "m1")
	if err != nil {
		t.Fatal(err)
	}
	recv(t, mch)
	kch, err := b.WatchKeys(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.UpdateMachine(t.Context(), "m1", 0, setTag("k", "v")); err != nil {
		t.Fatal(err)
	}
	for {
		ev := recv(t, mch)
		if ev.Machine != nil && ev.Machine.Tags["k"] == "v" {
			break
		}
	}
	if err := a.PutKey(t.Context(), newKey(store.KindOIDC, "k1", time.Now())); err != nil {
		t.Fatal(err)
	}
	recv(t, kch)
	if err := a.DeleteMachine(t.Context(), "m1", nil); err != nil {
		t.Fatal(err)
	}
	for {
		if ev := recv(t, mch); ev.Machine == nil {
			break
		}
	}
}

// testSharedRecent: a machine another replica just created is found at
// once by GetMachineRecent here (read-your-writes across replicas), and
// one it removed is gone here within the backend's bound.
func testSharedRecent(t *testing.T, a, b store.Store) {
	rr := recentReader(t, b)
	for i := range 10 {
		id := "m" + strconv.Itoa(i)
		mustCreate(t, a, newMachine(id, "acme", "web", id))
		if m, err := rr.GetMachineRecent(t.Context(), id); err != nil || m.ID != id {
			t.Fatalf("GetMachineRecent(%s) right after the other replica created it = %+v, %v", id, m, err)
		}
	}
	if err := a.DeleteMachine(t.Context(), "m0", nil); err != nil {
		t.Fatal(err)
	}
	wait.Eventually(t, waitTimeout, func() bool {
		_, err := rr.GetMachineRecent(t.Context(), "m0")
		return errors.Is(err, store.ErrNotFound)
	}, "machine removed by the other replica gone here")
}

// testSharedLead: while one replica leads a name, the other's campaign
// waits; it is elected once the leader resigns.
func testSharedLead(t *testing.T, a, b store.Store) {
	ea, eb := elector(t, a), elector(t, b)
	_, resign := mustLead(t, ea, "keys")
	second := campaign(t.Context(), eb, "keys")
	expectWaiting(t, second)
	resign()
	expectElected(t, second)
}
