// Package bolt is the embedded, single-node store.Store: one bbolt file under
// the issuer's state directory. Watches are in-process, fed after each commit.
package bolt

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"

	"go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/wicket-sh/wicket/internal/store"
	"github.com/wicket-sh/wicket/internal/store/record"
	"github.com/wicket-sh/wicket/internal/store/watchhub"
)

// ErrLocked is returned by Open when another process holds the state file.
var ErrLocked = errors.New("state file locked by another process")

// DefaultLockTimeout is how long Open waits for the file lock by default.
const DefaultLockTimeout = time.Second

// schemaVersion is the on-disk layout version kept in the meta bucket.
const schemaVersion = 1

var (
	bucketMachines    = []byte("machines")    // id → machineRecord JSON
	bucketNames       = []byte("names")       // key(org, app, name) → id
	bucketKeys        = []byte("keys")        // key(kind, id) → keyRecord JSON
	bucketRevocations = []byte("revocations") // token id → revocationRecord JSON
	bucketMeta        = []byte("meta")

	metaSchema   = []byte("schema")
	metaRevision = []byte("revision") // bumped by every write transaction
)

// Options configures Open. The zero value (or nil) gives the defaults.
type Options struct {
	// LockTimeout bounds the wait for the file lock held by another
	// process; 0 means DefaultLockTimeout.
	LockTimeout time.Duration
	// OpenFile, when set, opens the state file instead of os.OpenFile (it
	// gets Open's path): the issuer opens it relative to a directory
	// descriptor it has checked, and checks the file's owner.
	OpenFile func(name string, flag int, perm os.FileMode) (*os.File, error)
}

// Store is a store.Store backed by a bbolt file.
type Store struct {
	db  *bbolt.DB
	hub watchhub.Hub

	// machines caches decoded machines: every verified request looks its
	// machine up, and decoding JSON was a tenth of a token request's cost.
	// This process is the file's only writer (bbolt's file lock), so
	// invalidating on our own writes keeps the cache exact; gen makes a
	// read that raced with a write skip filling the cache.
	cacheMu  sync.Mutex
	machines map[string]*store.Machine
	gen      uint64

	closeOnce sync.Once
	closeErr  error
}

var _ store.Store = (*Store)(nil)

// Open opens or creates the state file at path (mode 0600; its directory
// must exist). If another process has it open, Open fails with ErrLocked
// after the lock timeout instead of hanging.
func Open(path string, opts *Options) (*Store, error) {
	timeout := DefaultLockTimeout
	var openFile func(string, int, os.FileMode) (*os.File, error)
	if opts != nil {
		if opts.LockTimeout > 0 {
			timeout = opts.LockTimeout
		}
		openFile = opts.OpenFile
	}
	// 0600: the file holds sealed keys and the revocation list; sealing
	// protects the keys, the mode keeps everything else private too.
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: timeout, OpenFile: openFile})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("bolt: opening %s: %w (waited %v)", path, ErrLocked, timeout)
	}
	if err != nil {
		return nil, fmt.Errorf("bolt: opening %s: %w", path, err)
	}
	if err := db.Update(initSchema); err != nil {
		db.Close()
		return nil, fmt.Errorf("bolt: initializing %s: %w", path, err)
	}
	return &Store{db: db, hub: watchhub.New()}, nil
}

func initSchema(tx *bbolt.Tx) error {
	for _, b := range [][]byte{bucketMachines, bucketNames, bucketKeys, bucketRevocations, bucketMeta} {
		if _, err := tx.CreateBucketIfNotExists(b); err != nil {
			return fmt.Errorf("creating bucket %s: %w", b, err)
		}
	}
	meta := tx.Bucket(bucketMeta)
	v := meta.Get(metaSchema)
	if v == nil {
		return meta.Put(metaSchema, encodeUint(schemaVersion))
	}
	// Refuse a layout we don't know rather than misread it.
	if got := decodeUint(v); got != schemaVersion {
		return fmt.Errorf("unsupported schema version %d (this build reads %d)", got, schemaVersion)
	}
	return nil
}

// Shared implements store.Store: the bbolt file is locked by the one
// process that opens it, so no other replica shares the state.
func (s *Store) Shared() bool { return false }

// Close closes all watch channels and the file. It is safe to call twice.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.hub.Close()
		if err := s.db.Close(); err != nil {
			s.closeErr = fmt.Errorf("bolt: closing: %w", err)
		}
	})
	return s.closeErr
}

// update runs fn in a write transaction and bumps the store revision,
// which it returns for the events the write publishes.
func (s *Store) update(ctx context.Context, fn func(tx *bbolt.Tx) error) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	var rev uint64
	err := s.db.Update(func(tx *bbolt.Tx) error {
		if err := fn(tx); err != nil {
			return err
		}
		meta := tx.Bucket(bucketMeta)
		rev = decodeUint(meta.Get(metaRevision)) + 1
		return meta.Put(metaRevision, encodeUint(rev))
	})
	return rev, err
}

func (s *Store) view(ctx context.Context, fn func(tx *bbolt.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.db.View(fn)
}

// CreateMachine implements store.Store.
func (s *Store) CreateMachine(ctx context.Context, m *store.Machine) error {
	if m == nil || m.ID == "" {
		return errors.New("bolt: create machine: id required")
	}
	c := m.Clone()
	rev, err := s.update(ctx, func(tx *bbolt.Tx) error {
		machines, names := tx.Bucket(bucketMachines), tx.Bucket(bucketNames)
		if machines.Get([]byte(c.ID)) != nil {
			return fmt.Errorf("machine id %q: %w", c.ID, store.ErrExists)
		}
		nk := nameKey(c)
		if names.Get(nk) != nil {
			return fmt.Errorf("machine %q in org %q app %q: %w", c.Name, c.Org, c.App, store.ErrExists)
		}
		now := time.Now().UTC()
		c.Version, c.CreatedAt, c.UpdatedAt = 1, now, now
		if err := names.Put(nk, []byte(c.ID)); err != nil {
			return err
		}
		return putJSON(machines, []byte(c.ID), record.FromMachine(c))
	})
	if err != nil {
		return fmt.Errorf("bolt: create machine: %w", err)
	}
	m.Version, m.CreatedAt, m.UpdatedAt = c.Version, c.CreatedAt, c.UpdatedAt
	s.hub.PublishMachine(c.ID, c, rev)
	return nil
}

// GetMachine implements store.Store.
func (s *Store) GetMachine(ctx context.Context, id string) (*store.Machine, error) {
	s.cacheMu.Lock()
	if m, ok := s.machines[id]; ok {
		s.cacheMu.Unlock()
		return m.Clone(), nil
	}
	gen := s.gen
	s.cacheMu.Unlock()
	var m *store.Machine
	err := s.view(ctx, func(tx *bbolt.Tx) error {
		var err error
		m, err = getMachine(tx, id)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("bolt: get machine: %w", err)
	}
	s.cacheMu.Lock()
	if s.gen == gen {
		if s.machines == nil || len(s.machines) >= maxCachedMachines {
			s.machines = make(map[string]*store.Machine)
		}
		s.machines[id] = m.Clone()
	}
	s.cacheMu.Unlock()
	return m, nil
}

// GetMachineByName implements store.NameIndex from the names bucket.
func (s *Store) GetMachineByName(ctx context.Context, org, app, name string) (*store.Machine, error) {
	var id string
	err := s.view(ctx, func(tx *bbolt.Tx) error {
		v := tx.Bucket(bucketNames).Get(compositeKey(org, app, name))
		if v == nil {
			return fmt.Errorf("machine %q in org %q app %q: %w", name, org, app, store.ErrNotFound)
		}
		id = string(v)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("bolt: get machine by name: %w", err)
	}
	return s.GetMachine(ctx, id)
}

// maxCachedMachines bounds the machine cache.
const maxCachedMachines = 65536

// forget drops id from the machine cache after a write.
func (s *Store) forget(id string) {
	s.cacheMu.Lock()
	s.gen++
	delete(s.machines, id)
	s.cacheMu.Unlock()
}

// ListMachines implements store.Store.
func (s *Store) ListMachines(ctx context.Context) ([]*store.Machine, error) {
	var out []*store.Machine
	err := s.view(ctx, func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketMachines).ForEach(func(k, v []byte) error {
			var r record.Machine
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("decoding machine %q: %w", k, err)
			}
			out = append(out, r.Machine())
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("bolt: list machines: %w", err)
	}
	slices.SortFunc(out, func(a, b *store.Machine) int {
		return cmp.Or(cmp.Compare(a.Org, b.Org), cmp.Compare(a.App, b.App),
			cmp.Compare(a.Name, b.Name), cmp.Compare(a.ID, b.ID))
	})
	return out, nil
}

// UpdateMachine implements store.Store. Writers are serialized by bbolt, so
// fn runs exactly once per call.
func (s *Store) UpdateMachine(ctx context.Context, id string, expectVersion uint64, fn func(*store.Machine) error) (*store.Machine, error) {
	var next *store.Machine
	var fnErr error
	rev, err := s.update(ctx, func(tx *bbolt.Tx) error {
		cur, err := getMachine(tx, id)
		if err != nil {
			return err
		}
		if expectVersion != 0 && cur.Version != expectVersion {
			return fmt.Errorf("machine %q is at version %d, not %d: %w", id, cur.Version, expectVersion, store.ErrConflict)
		}
		next = cur.Clone()
		if fnErr = fn(next); fnErr != nil {
			return fnErr
		}
		if next.ID != cur.ID || next.Version != cur.Version || !next.CreatedAt.Equal(cur.CreatedAt) {
			return fmt.Errorf("machine %q: update may not change ID, Version or CreatedAt", id)
		}
		next.Version++
		next.UpdatedAt = time.Now().UTC()

		names := tx.Bucket(bucketNames)
		if oldKey, newKey := nameKey(cur), nameKey(next); !bytes.Equal(oldKey, newKey) {
			if names.Get(newKey) != nil {
				return fmt.Errorf("machine %q in org %q app %q: %w", next.Name, next.Org, next.App, store.ErrExists)
			}
			if err := names.Delete(oldKey); err != nil {
				return err
			}
			if err := names.Put(newKey, []byte(id)); err != nil {
				return err
			}
		}
		return putJSON(tx.Bucket(bucketMachines), []byte(id), record.FromMachine(next))
	})
	s.forget(id) // before publishing: a watcher that re-reads sees the new state
	if fnErr != nil {
		return nil, fnErr
	}
	if err != nil {
		return nil, fmt.Errorf("bolt: update machine: %w", err)
	}
	s.hub.PublishMachine(id, next, rev)
	return next, nil
}

// DeleteMachine implements store.Store.
func (s *Store) DeleteMachine(ctx context.Context, id string, check func(*store.Machine) error) error {
	var checkErr error
	rev, err := s.update(ctx, func(tx *bbolt.Tx) error {
		cur, err := getMachine(tx, id)
		if err != nil {
			return err
		}
		if check != nil {
			if checkErr = check(cur.Clone()); checkErr != nil {
				return checkErr
			}
		}
		if err := tx.Bucket(bucketNames).Delete(nameKey(cur)); err != nil {
			return err
		}
		return tx.Bucket(bucketMachines).Delete([]byte(id))
	})
	s.forget(id)
	if checkErr != nil {
		return checkErr
	}
	if err != nil {
		return fmt.Errorf("bolt: delete machine: %w", err)
	}
	s.hub.PublishMachine(id, nil, rev)
	return nil
}

// PutKey implements store.Store.
func (s *Store) PutKey(ctx context.Context, k *store.SealedKey) error {
	if k == nil || k.Kind == "" || k.ID == "" {
		return errors.New("bolt: put key: kind and id required")
	}
	r := record.FromKey(k)
	_, err := s.update(ctx, func(tx *bbolt.Tx) error {
		return putJSON(tx.Bucket(bucketKeys), compositeKey(k.Kind, k.ID), r)
	})
	if err != nil {
		return fmt.Errorf("bolt: put key %s/%s: %w", k.Kind, k.ID, err)
	}
	s.hub.PublishKeys()
	return nil
}

// ListKeys implements store.Store.
func (s *Store) ListKeys(ctx context.Context, kind string) ([]*store.SealedKey, error) {
	var prefix []byte
	if kind != "" {
		prefix = compositeKey(kind)
	}
	var out []*store.SealedKey
	err := s.view(ctx, func(tx *bbolt.Tx) error {
		c := tx.Bucket(bucketKeys).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			var r record.Key
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("decoding key: %w", err)
			}
			out = append(out, r.Key())
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("bolt: list keys: %w", err)
	}
	slices.SortFunc(out, func(a, b *store.SealedKey) int {
		return cmp.Or(cmp.Compare(a.Kind, b.Kind), a.CreatedAt.Compare(b.CreatedAt), cmp.Compare(a.ID, b.ID))
	})
	return out, nil
}

// DeleteKey implements store.Store.
func (s *Store) DeleteKey(ctx context.Context, kind, id string) error {
	_, err := s.update(ctx, func(tx *bbolt.Tx) error {
		b, k := tx.Bucket(bucketKeys), compositeKey(kind, id)
		if b.Get(k) == nil {
			return store.ErrNotFound
		}
		return b.Delete(k)
	})
	if err != nil {
		return fmt.Errorf("bolt: delete key %s/%s: %w", kind, id, err)
	}
	s.hub.PublishKeys()
	return nil
}

// Revoke implements store.Store.
func (s *Store) Revoke(ctx context.Context, r *store.Revocation) error {
	if r == nil || r.TokenID == "" {
		return errors.New("bolt: revoke: token id required")
	}
	rec := record.FromRevocation(r)
	_, err := s.update(ctx, func(tx *bbolt.Tx) error {
		return putJSON(tx.Bucket(bucketRevocations), []byte(r.TokenID), rec)
	})
	if err != nil {
		return fmt.Errorf("bolt: revoke %q: %w", r.TokenID, err)
	}
	s.hub.PublishKeys()
	return nil
}

// IsRevoked implements store.Store.
func (s *Store) IsRevoked(ctx context.Context, tokenID string) (bool, error) {
	if tokenID == "" {
		return false, nil
	}
	var revoked bool
	err := s.view(ctx, func(tx *bbolt.Tx) error {
		revoked = tx.Bucket(bucketRevocations).Get([]byte(tokenID)) != nil
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("bolt: is revoked: %w", err)
	}
	return revoked, nil
}

// ListRevocations implements store.Store. bbolt iterates in key order, which
// is token id order.
func (s *Store) ListRevocations(ctx context.Context) ([]*store.Revocation, error) {
	var out []*store.Revocation
	err := s.view(ctx, func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketRevocations).ForEach(func(k, v []byte) error {
			var r record.Revocation
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("decoding revocation %q: %w", k, err)
			}
			out = append(out, r.Revocation())
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("bolt: list revocations: %w", err)
	}
	return out, nil
}

// WatchMachine implements store.Store.
func (s *Store) WatchMachine(ctx context.Context, id string) (<-chan store.Event, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	// Subscribe before reading: a write that commits in between is then
	// either in what we read or delivered as an event, and the revision
	// check in offer keeps the newer of the two.
	sub, err := s.hub.SubscribeMachine(id)
	if err != nil {
		return nil, fmt.Errorf("bolt: watch machine: %w", err)
	}
	var first store.Event
	err = s.view(ctx, func(tx *bbolt.Tx) error {
		m, err := getMachine(tx, id)
		if err != nil {
			return err
		}
		first = store.Event{MachineID: id, Machine: m, Revision: decodeUint(tx.Bucket(bucketMeta).Get(metaRevision))}
		return nil
	})
	if err != nil {
		s.hub.UnsubscribeMachine(sub)
		return nil, fmt.Errorf("bolt: watch machine: %w", err)
	}
	s.hub.Offer(sub, first)
	context.AfterFunc(ctx, func() { s.hub.UnsubscribeMachine(sub) })
	return sub.Events(), nil
}

// WatchKeys implements store.Store.
func (s *Store) WatchKeys(ctx context.Context) (<-chan struct{}, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ch, err := s.hub.SubscribeKeys()
	if err != nil {
		return nil, fmt.Errorf("bolt: watch keys: %w", err)
	}
	context.AfterFunc(ctx, func() { s.hub.UnsubscribeKeys(ch) })
	return ch, nil
}

func getMachine(tx *bbolt.Tx, id string) (*store.Machine, error) {
	v := tx.Bucket(bucketMachines).Get([]byte(id))
	if v == nil {
		return nil, fmt.Errorf("machine %q: %w", id, store.ErrNotFound)
	}
	var r record.Machine
	if err := json.Unmarshal(v, &r); err != nil {
		return nil, fmt.Errorf("decoding machine %q: %w", id, err)
	}
	return r.Machine(), nil
}

func putJSON(b *bbolt.Bucket, key []byte, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put(key, data)
}

func nameKey(m *store.Machine) []byte { return compositeKey(m.Org, m.App, m.Name) }

// compositeKey joins parts, each prefixed with its length, so no split of
// the same bytes into different parts (org "a/b" app "c" versus org "a" app
// "b/c") can collide, and the encoding of a leading part is a prefix of
// every key that starts with it.
func compositeKey(parts ...string) []byte {
	var b []byte
	for _, p := range parts {
		b = binary.AppendUvarint(b, uint64(len(p)))
		b = append(b, p...)
	}
	return b
}

func encodeUint(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

func decodeUint(b []byte) uint64 {
	if len(b) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}
