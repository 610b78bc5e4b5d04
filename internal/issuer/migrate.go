package issuer

import (
	"context"
	"errors"
	"fmt"

	"github.com/wicket-sh/wicket/internal/store"
)

// MigrateResult counts what Migrate copied.
type MigrateResult struct {
	Machines    int `json:"machines"`
	Keys        int `json:"keys"`
	Revocations int `json:"revocations"`
	// Unchanged counts machines the destination already held exactly as
	// the source does (an earlier, interrupted run).
	Unchanged int `json:"unchanged"`
}

// Migrate copies every sealed key, revocation and machine from src to dst.
//
// Sealed keys are copied byte for byte, never unsealed: dst must be served
// with src's seal key, and tokens minted before keep verifying. Machines
// keep their ID, version and timestamps, so metadata ETags and
// expect_version carry over. Running it again is safe: keys and
// revocations are rewritten as they are, machines already copied unchanged
// are skipped, and a machine that differs in dst (changed there since)
// stops the migration rather than being overwritten. The issuer must not
// be running on either store meanwhile. dst must be a store.Importer.
func Migrate(ctx context.Context, dst, src store.Store) (*MigrateResult, error) {
	imp, ok := dst.(store.Importer)
	if !ok {
		return nil, errors.New("migrate: the destination cannot take machines with their versions")
	}
	res := &MigrateResult{}
	// Keys first: a machine whose tokens cannot be verified is no use.
	keys, err := src.ListKeys(ctx, "")
	if err != nil {
		return res, fmt.Errorf("migrate: read keys: %w", err)
	}
	for _, k := range keys {
		if err := dst.PutKey(ctx, k); err != nil {
			return res, fmt.Errorf("migrate: key %s/%s: %w", k.Kind, k.ID, err)
		}
		res.Keys++
	}
	revs, err := src.ListRevocations(ctx)
	if err != nil {
		return res, fmt.Errorf("migrate: read revocations: %w", err)
	}
	for _, r := range revs {
		if err := dst.Revoke(ctx, r); err != nil {
			return res, fmt.Errorf("migrate: revocation %s: %w", r.TokenID, err)
		}
		res.Revocations++
	}
	ms, err := src.ListMachines(ctx)
	if err != nil {
		return res, fmt.Errorf("migrate: read machines: %w", err)
	}
	for _, m := range ms {
		err := imp.ImportMachine(ctx, m)
		if errors.Is(err, store.ErrExists) {
			cur, gerr := dst.GetMachine(ctx, m.ID)
			if gerr == nil && sameMachine(cur, m) {
				res.Unchanged++
				continue
			}
			return res, fmt.Errorf("migrate: machine %s (%s/%s/%s) exists in the destination with other contents", m.ID, m.Org, m.App, m.Name)
		}
		if err != nil {
			return res, fmt.Errorf("migrate: machine %s: %w", m.ID, err)
		}
		res.Machines++
	}
	return res, nil
}

// sameMachine reports whether a and b are one machine at one version.
func sameMachine(a, b *store.Machine) bool {
	return a.ID == b.ID && a.Org == b.Org && a.App == b.App && a.Name == b.Name &&
		a.Version == b.Version && a.UpdatedAt.Equal(b.UpdatedAt)
}
