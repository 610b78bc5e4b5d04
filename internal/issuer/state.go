package issuer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/store"
	"github.com/wicket-sh/wicket/internal/store/bolt"
	"github.com/wicket-sh/wicket/internal/store/etcd"
)

// openStore opens the configured state backend.
func openStore(ctx context.Context, st config.State, log *slog.Logger) (store.Store, error) {
	if st.Backend == "etcd" {
		s, err := etcd.Open(ctx, EtcdConfig(st, log))
		if err != nil {
			return nil, fmt.Errorf("state: %w", err)
		}
		return s, nil
	}
	if _, err := os.Stat(st.BoltPath()); err != nil {
		return nil, fmt.Errorf("state %s not found: run `wicket issuer init` first", st.BoltPath())
	}
	return bolt.Open(st.BoltPath(), nil)
}

// EtcdConfig is the etcd store configuration for the [state] section.
func EtcdConfig(st config.State, log *slog.Logger) etcd.Config {
	return etcd.Config{
		Endpoints: st.Endpoints,
		CertFile:  st.TLSCert, KeyFile: st.TLSKey, CAFile: st.TLSCA,
		Prefix:         st.Prefix,
		DialTimeout:    st.DialTimeout.Duration,
		RequestTimeout: st.RequestTimeout.Duration,
		CacheGrace:     st.CacheGrace.Duration,
		Logger:         log,
	}
}

// unavailable reports whether err means the state store could not be
// reached, which callers see as 503 rather than 500: retrying later helps.
func unavailable(err error) bool { return errors.Is(err, store.ErrUnavailable) }

func (s *Issuer) stateStatus(st config.State) map[string]any {
	out := map[string]any{"backend": st.Backend}
	if r, ok := s.store.(interface{ Reachable() bool }); ok {
		out["reachable"] = r.Reachable()
	}
	return out
}
