package store_test

import (
	"context"
	"errors"
	"testing"

	"github.com/wicket-sh/wicket/internal/store"
)

// sharedStore is a Store that only answers Shared; embedding the interface
// is also how a wrapper around a real backend would lose its Elector.
type sharedStore struct {
	store.Store
	shared bool
}

func (s sharedStore) Shared() bool { return s.shared }

type electingStore struct{ sharedStore }

func (electingStore) Lead(ctx context.Context, _ string) (context.Context, func(), error) {
	return ctx, func() {}, nil
}

func TestElectorFor(t *testing.T) {
	if el, err := store.ElectorFor(sharedStore{shared: false}); el != nil || err != nil {
		t.Errorf("unshared store: %v, %v; want nil, nil (this process does the work)", el, err)
	}
	if el, err := store.ElectorFor(sharedStore{shared: true}); el != nil || !errors.Is(err, store.ErrNoElector) {
		t.Errorf("shared store without Lead: %v, %v; want ErrNoElector", el, err)
	}
	s := electingStore{sharedStore{shared: true}}
	if el, err := store.ElectorFor(s); err != nil || el == nil {
		t.Errorf("shared store with Lead: %v, %v; want its Elector", el, err)
	}
	// An Elector that says it is not shared is not asked: nothing else
	// uses the state, so there is nobody to be elected over.
	if el, err := store.ElectorFor(electingStore{sharedStore{shared: false}}); el != nil || err != nil {
		t.Errorf("unshared store with Lead: %v, %v; want nil, nil", el, err)
	}
}
