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
	b, err := backendFor(cfg.State)
	if err != nil {
		return nil, err
	}
	return b.init(ctx, cfg)
}

// initBolt creates the state directory, the seal key file and the bbolt
// state file.
func initBolt(ctx context.Context, cfg *config.Issuer) (*InitResult, error) {
	st := cfg.State
	res := &InitResult{StateFile: st.BoltPath()}
	d, err := openStateDir(st.Dir, true)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	if st.SealKeyEnv == "" {
		res.SealKeyFile = st.KeyFile()
		if err := seal.GenerateKeyFile(st.KeyFile()); err != nil && !errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("create seal key: %w", err)
		}
	}
	exists, err := checkStateFile(d, st.BoltPath())
	if err != nil {
		return nil, err
	}
	if exists {
		// "Already initialized" only for state this issuer could have
		// made: a seal key it did not write means someone else holds it.
		if st.SealKeyEnv == "" {
			key, err := seal.LoadKeyFile(st.KeyFile())
			if err != nil {
				return nil, fmt.Errorf("existing state %s: %w", st.Dir, err)
			}
			clear(key)
		}
		return res, nil
	}
	db, err := openBolt(d, st.BoltPath())
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

// ensureStateDir creates dir (0700) and refuses one the issuer does not
// own, one others can access or one under a chain another user can change.
func ensureStateDir(dir string) error {
	d, err := openStateDir(dir, true)
	if err != nil {
		return err
	}
	return d.Close()
}
