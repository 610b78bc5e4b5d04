package issuer

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/store"
)

// TestStateBackends_MatchConfig: every name config validation accepts has
// a backend, and every backend can be configured.
func TestStateBackends_MatchConfig(t *testing.T) {
	got := slices.Sorted(maps.Keys(stateBackends))
	want := slices.Sorted(slices.Values(config.StateBackends()))
	if !slices.Equal(got, want) {
		t.Errorf("issuer backends %q, config.StateBackends %q", got, want)
	}
}

// sharedWrapper is what a wrapper around a shared backend looks like when
// it forgets to forward Lead: embedding store.Store keeps Shared and
// hides every capability.
type sharedWrapper struct{ store.Store }

func (sharedWrapper) Shared() bool { return true }

// electingWrapper forwards a Lead that counts its campaigns and grants
// leadership at once.
type electingWrapper struct {
	sharedWrapper
	campaigns *atomic.Int64
}

func (w electingWrapper) Lead(ctx context.Context, name string) (context.Context, func(), error) {
	if name == "key-maintenance" {
		w.campaigns.Add(1)
	}
	lctx, cancel := context.WithCancel(ctx)
	return lctx, cancel, nil
}

// withBoltWrapped serves the bolt backend through wrap until the test
// ends.
func withBoltWrapped(t *testing.T, wrap func(store.Store) store.Store) {
	orig := stateBackends["bolt"]
	t.Cleanup(func() { stateBackends["bolt"] = orig })
	stateBackends["bolt"] = stateBackend{
		init: orig.init,
		open: func(ctx context.Context, st config.State, log *slog.Logger) (store.Store, error) {
			s, err := orig.open(ctx, st, log)
			if err != nil {
				return nil, err
			}
			return wrap(s), nil
		},
	}
}

// TestNew_SharedStoreWithoutElectorRefused: a store shared between
// replicas that cannot elect one (a new backend without Lead, or a wrapper
// that hides it) fails at start. Before, the issuer took a missing Lead
// for "this replica is the only one" and ran key rotation on every
// replica.
func TestNew_SharedStoreWithoutElectorRefused(t *testing.T) {
	dir := shortDir(t)
	ov := []config.IssuerOverride{issuerConfig(dir, nil)}
	cfg, err := config.LoadIssuer("", ov...)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Init(t.Context(), cfg); err != nil {
		t.Fatalf("Init: %v", err)
	}
	withBoltWrapped(t, func(s store.Store) store.Store { return sharedWrapper{s} })
	quiet := slog.New(slog.DiscardHandler)
	s, err := New(t.Context(), Options{Overrides: ov, Logger: quiet})
	if err == nil {
		s.Store().Close()
		t.Fatal("New succeeded on a shared store without an Elector")
	}
	if !errors.Is(err, store.ErrNoElector) || !strings.Contains(err.Error(), `"bolt"`) {
		t.Errorf("New: %v; want ErrNoElector naming the backend", err)
	}
	// The refused store was closed: bolt's file lock is free again.
	var campaigns atomic.Int64
	withBoltWrapped(t, func(s store.Store) store.Store { return electingWrapper{sharedWrapper{s}, &campaigns} })
	s, err = New(t.Context(), Options{Overrides: ov, Logger: quiet})
	if err != nil {
		t.Fatalf("New with an Elector: %v", err)
	}
	// A shared store's key maintenance runs only once this replica is
	// elected through the store's Elector.
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); s.keyMaintenance(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for campaigns.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	s.Store().Close()
	if campaigns.Load() == 0 {
		t.Error("key maintenance on a shared store never campaigned through its Elector")
	}
}
