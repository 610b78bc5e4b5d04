package issuer

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"

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
// the key comes from an environment variable) and the state file with a
// first machine-token root key. It is idempotent: existing state is kept.
func Init(ctx context.Context, cfg *config.Issuer) (*InitResult, error) {
	st := cfg.State
	res := &InitResult{StateFile: st.BoltPath()}
	if err := os.MkdirAll(st.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	if fi, err := os.Lstat(st.Dir); err != nil || !fi.IsDir() || fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("state dir %s must be a directory that only its owner can access (mode 0700)", st.Dir)
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
	s, err := New(ctx, Options{Overrides: []config.IssuerOverride{func(c *config.Issuer) { *c = *cfg }}, allowNoMintKey: true})
	if err != nil {
		return nil, err
	}
	defer s.store.Close()
	id, err := s.AddMacaroonKey(ctx)
	if err != nil {
		return nil, err
	}
	res.Created, res.MacaroonKeyID = true, id
	return res, nil
}
