package issuer

import (
	"context"
	"errors"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/wicket-sh/wicket/internal/store"
	"github.com/wicket-sh/wicket/internal/store/bolt"
)

// listCounter counts registry listings and forwards the name index of the
// store it wraps.
type listCounter struct {
	store.Store
	lists atomic.Int64
}

func (l *listCounter) ListMachines(ctx context.Context) ([]*store.Machine, error) {
	l.lists.Add(1)
	return l.Store.ListMachines(ctx)
}

func (l *listCounter) GetMachineByName(ctx context.Context, org, app, name string) (*store.Machine, error) {
	return l.Store.(store.NameIndex).GetMachineByName(ctx, org, app, name)
}

// listOnly hides every capability: a store without a name index.
type listOnly struct{ store.Store }

// An "org/app/name" reference is answered from the store's name index,
// not by decoding every registered machine (the fleet simulator's setup
// of 3,000 machines through EnsureMachine took 23 s that way); a store
// without the index still finds it by listing.
func TestFindMachine_ByNameUsesTheIndex(t *testing.T) {
	st, err := bolt.Open(filepath.Join(t.TempDir(), "state.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for _, m := range []*store.Machine{{ID: "m1", Org: "acme", App: "web", Name: "a"}, {ID: "m2", Org: "acme", App: "web", Name: "b"}} {
		if err := st.CreateMachine(t.Context(), m); err != nil {
			t.Fatal(err)
		}
	}
	lc := &listCounter{Store: st}
	for _, s := range []*Issuer{{store: lc}, {store: &listOnly{st}}} {
		for ref, want := range map[string]string{"acme/web/b": "m2", "m1": "m1", "acme/web/a": "m1"} {
			m, err := s.findMachine(t.Context(), ref)
			if err != nil || m.ID != want {
				t.Errorf("%T: findMachine(%q) = %v, %v; want %s", s.store, ref, m, err, want)
			}
		}
		for _, ref := range []string{"acme/web/zz", "acme/web", "acme/web/a/x", "other/web/a"} {
			if _, err := s.findMachine(t.Context(), ref); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("%T: findMachine(%q) = %v, want ErrNotFound", s.store, ref, err)
			}
		}
	}
	if n := lc.lists.Load(); n != 0 {
		t.Errorf("findMachine listed the registry %d times on a store with a name index; want 0", n)
	}
}
