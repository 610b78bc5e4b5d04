package issuer

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/metrics"
	"github.com/wicket-sh/wicket/internal/safedir"
	"github.com/wicket-sh/wicket/internal/store"
	"github.com/wicket-sh/wicket/internal/store/bolt"
	"github.com/wicket-sh/wicket/internal/store/etcd"
)

// openStore opens the configured state backend (stateBackends), and
// refuses a store shared between replicas that cannot elect one of them:
// key maintenance would run on every replica.
func openStore(ctx context.Context, st config.State, log *slog.Logger) (store.Store, error) {
	b, err := backendFor(st)
	if err != nil {
		return nil, err
	}
	s, err := b.open(ctx, st, log)
	if err != nil {
		return nil, err
	}
	if _, err := store.ElectorFor(s); err != nil {
		s.Close()
		return nil, fmt.Errorf("state backend %q: %w", st.Backend, err)
	}
	return s, nil
}

// openBoltState opens the bolt backend's state file, which Init created.
func openBoltState(_ context.Context, st config.State, _ *slog.Logger) (store.Store, error) {
	d, err := openStateDir(st.Dir, false)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	exists, err := checkStateFile(d, st.BoltPath())
	if err != nil {
		return nil, err
	}
	if !exists {
		return nil, fmt.Errorf("state %s not found: run `wicket issuer init` first", st.BoltPath())
	}
	return openBolt(d, st.BoltPath())
}

// openStateDir opens the bolt backend's state directory through safedir:
// no symlink anywhere in its path, no ancestor another user can change,
// the directory itself owned by the issuer's uid and private (0700 or
// stricter). Whoever else owns or can swap it could have planted a seal
// key and state of their own, and mint tokens this issuer accepts. With
// create, a missing directory is made 0700.
func openStateDir(dir string, create bool) (*safedir.Dir, error) {
	d, err := safedir.Open(dir, safedir.Options{Owner: safedir.SelfOnly, Create: create, Mode: 0o700, GID: -1})
	if err != nil {
		return nil, fmt.Errorf("state dir refused: %w", err)
	}
	fi, err := d.Stat()
	if err != nil {
		d.Close()
		return nil, fmt.Errorf("state dir %s: %w", dir, err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		d.Close()
		return nil, fmt.Errorf("state dir %s must be a directory that only its owner can access (mode %04o, want 0700)", dir, fi.Mode().Perm())
	}
	return d, nil
}

// checkStateFile reports whether the state file exists in d, and refuses
// one that is not a regular file owned by the issuer's uid.
func checkStateFile(d *safedir.Dir, path string) (bool, error) {
	fi, err := d.Lstat(filepath.Base(path))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("state %s: %w", path, err)
	}
	return true, checkStateInfo(path, fi)
}

func checkStateInfo(path string, fi fs.FileInfo) error {
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("state %s is not a regular file (%s)", path, fi.Mode().Type())
	}
	if err := safedir.CheckOwner(path, fi, safedir.SelfOnly); err != nil {
		return fmt.Errorf("state refused: %w", err)
	}
	return nil
}

// openBolt opens (or creates) the state file relative to d, without
// following a symlink, and checks the owner of the file actually opened.
func openBolt(d *safedir.Dir, path string) (*bolt.Store, error) {
	return bolt.Open(path, &bolt.Options{OpenFile: func(_ string, flag int, perm os.FileMode) (*os.File, error) {
		f, err := d.OpenFile(filepath.Base(path), flag, perm)
		if err != nil {
			return nil, err
		}
		fi, err := f.Stat()
		if err == nil {
			err = checkStateInfo(path, fi)
		}
		if err != nil {
			f.Close()
			return nil, err
		}
		return f, nil
	}})
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

// requestMachine is a request's read of its caller's machine (the token
// check): from a clustered store's watch-fed copy when it keeps one
// (store.RecentReader: no round trip per request; a change made through
// another replica applies once the watch delivers it), else GetMachine.
func (s *Issuer) requestMachine(ctx context.Context, id string) (*store.Machine, error) {
	if rr, ok := s.store.(store.RecentReader); ok {
		return rr.GetMachineRecent(ctx, id)
	}
	return s.store.GetMachine(ctx, id)
}

func (s *Issuer) stateStatus(st config.State) map[string]any {
	out := map[string]any{"backend": st.Backend}
	if r, ok := s.store.(store.Health); ok {
		out["reachable"] = r.Reachable()
	}
	if rs, ok := s.store.(store.ReadStats); ok {
		n := rs.MachineReads()
		out["machine_reads"] = map[string]uint64{"mirror": n.Mirror, "backend": n.Backend}
	}
	return out
}

// stateMetrics are the state store's read counts, for a backend that
// keeps them (etcd: how many per-request machine reads its watch-fed
// mirror answered, how many went to etcd).
func (s *Issuer) stateMetrics() []metrics.Sample {
	rs, ok := s.store.(store.ReadStats)
	if !ok {
		return nil
	}
	n := rs.MachineReads()
	const help = "Machine reads (token checks, long polls) by where the state store answered them."
	return []metrics.Sample{
		{Name: "wicket_state_machine_reads_total", Help: help, Type: metrics.Counter, Labels: map[string]string{"source": "mirror"}, Value: float64(n.Mirror)},
		{Name: "wicket_state_machine_reads_total", Help: help, Type: metrics.Counter, Labels: map[string]string{"source": "backend"}, Value: float64(n.Backend)},
	}
}
