package issuer

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/store"
	"github.com/wicket-sh/wicket/internal/store/etcd"
)

// stateBackend is how the issuer opens and initializes one kind of state
// store, named by state.backend. Adding a backend is a package under
// internal/store that passes storetest, its settings in config.State with
// their validation (config.StateBackends lists the names), and one entry
// in stateBackends; docs/architecture.md has the steps.
type stateBackend struct {
	// open opens state that init created, for serving. openStore then
	// refuses a store that is shared but cannot elect (store.ElectorFor).
	open func(ctx context.Context, st config.State, log *slog.Logger) (store.Store, error)
	// init creates what open needs (the state directory and file, the seal
	// key) and the first machine-token key (initKeys). It keeps what
	// exists: running it twice is safe.
	init func(ctx context.Context, cfg *config.Issuer) (*InitResult, error)
}

// stateBackends are the state backends, by name. This map is the only
// place the issuer names them.
var stateBackends map[string]stateBackend

// The map is filled in init, not by its declaration, because a backend's
// init ends in New, which opens the store through this map: Go refuses
// that cycle in package-level initializers.
func init() {
	stateBackends = map[string]stateBackend{
		"bolt": {open: openBoltState, init: initBolt},
		"etcd": {open: openEtcdState, init: initEtcd},
	}
}

// backendFor returns the backend state.backend names. Config validation
// refuses unknown names first, so this error is for a config.StateBackends
// entry without a backend here (TestStateBackends_MatchConfig).
func backendFor(st config.State) (stateBackend, error) {
	b, ok := stateBackends[st.Backend]
	if !ok {
		return stateBackend{}, fmt.Errorf("state.backend %q: no such backend", st.Backend)
	}
	return b, nil
}

// openEtcdState opens the etcd backend.
func openEtcdState(ctx context.Context, st config.State, log *slog.Logger) (store.Store, error) {
	s, err := etcd.Open(ctx, EtcdConfig(st, log))
	if err != nil {
		return nil, fmt.Errorf("state: %w", err)
	}
	return s, nil
}
