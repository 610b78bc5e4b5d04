package issuer

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/seal"
	"github.com/wicket-sh/wicket/internal/store/bolt"
)

// InitResult says what Init created.
type InitResult struct {
	StateFile, SealKeyFile string
	Created                bool // false when the state already existed
	MacaroonKeyID          string
}

// Init creates the state directory (0700), the seal key file (0600, unless
// the key comes from an environment variable) and the state with a first
// machine-token root key: a bbolt file, or, for the etcd backend, the keys
// under the configured prefix. It is idempotent: existing state is kept.
func Init(ctx context.Context, cfg *config.Issuer) (*InitResult, error) {
	if cfg.State.Backend == "etcd" {
		return initEtcd(ctx, cfg)
	}
	st := cfg.State
	res := &InitResult{StateFile: st.BoltPath()}
	if err := ensureStateDir(st.Dir); err != nil {
		return nil, err
	}
	if st.SealKeyEnv == "" {
		res.SealKeyFile = st.KeyFile()
		if err := seal.GenerateKeyFile(st.KeyFile()); err != nil && !errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("create seal key: %w", err)
		}
	}
	if _, err := os.Stat(st.BoltPath()); err == nil {
		return res, nil
	}
	db, err := bolt.Open(st.BoltPath(), nil)
	if err != nil {
		return nil, err
	}
	db.Close()
	return initKeys(ctx, cfg, res)
}

// initEtcd initializes cluster state. Every replica needs the same seal
// key: the first replica's init creates it, the others are given a copy.
func initEtcd(ctx context.Context, cfg *config.Issuer) (*InitResult, error) {
	st := cfg.State
	res := &InitResult{StateFile: "etcd " + strings.Join(st.Endpoints, ",") + " prefix " + st.Prefix}
	generated := false
	if st.SealKeyEnv == "" {
		if st.SealKeyFile == "" {
			if err := ensureStateDir(st.Dir); err != nil {
				return nil, err
			}
		}
		res.SealKeyFile = st.KeyFile()
		err := seal.GenerateKeyFile(st.KeyFile())
		if err != nil && !errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("create seal key: %w", err)
		}
		generated = err == nil
	}
	res, err := initKeys(ctx, cfg, res)
	if err != nil && generated {
		// Most likely the cluster was initialized by another replica with
		// its own seal key: don't leave a key behind that can never work.
		os.Remove(st.KeyFile())
		return nil, fmt.Errorf("%w (if another replica initialized this cluster, copy its seal key to %s)", err, st.KeyFile())
	}
	return res, err
}

// initKeys adds the first machine-token key unless the state has one.
func initKeys(ctx context.Context, cfg *config.Issuer, res *InitResult) (*InitResult, error) {
	s, err := New(ctx, Options{Overrides: []config.IssuerOverride{func(c *config.Issuer) { *c = *cfg }}, allowNoMintKey: true})
	if err != nil {
		return nil, err
	}
	defer s.store.Close()
	if s.keys.Load().mintKey != nil {
		return res, nil
	}
	id, err := s.AddMacaroonKey(ctx)
	if err != nil {
		return nil, err
	}
	res.Created, res.MacaroonKeyID = true, id
	return res, nil
}

// ensureStateDir creates dir (0700) and refuses one others can read.
func ensureStateDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	if fi, err := os.Lstat(dir); err != nil || !fi.IsDir() || fi.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("state dir %s must be a directory that only its owner can access (mode 0700)", dir)
	}
	return nil
}
