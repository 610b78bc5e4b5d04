// Package store defines the issuer's state: registered machines, sealed
// signing and root keys, and token revocations, behind one interface with a
// single-node backend (store/bolt) and a clustered one (store/etcd).
//
// The interface is shaped so both fit: writes are transactional per call,
// UpdateMachine is a read-modify-write with optimistic concurrency, every
// write carries a store-wide revision, and watches push changes so replicas
// can serve long polls and reload keys without polling the store.
//
// What only some backends can do is declared as optional interfaces in
// capabilities.go (Elector, Importer, Health); Store.Shared says whether a
// missing Elector is safe.
package store

import (
	"context"
	"errors"
	"maps"
	"slices"
	"time"
)

// Errors callers test for with errors.Is. Backends wrap them with context.
var (
	// ErrNotFound means the machine, key or revocation does not exist.
	ErrNotFound = errors.New("store: not found")
	// ErrConflict means the record changed since the version the caller
	// expected; re-read and retry.
	ErrConflict = errors.New("store: version conflict")
	// ErrExists means a machine with the same ID, or the same org, app and
	// name, is already registered.
	ErrExists = errors.New("store: already exists")
	// ErrUnavailable means the backend could not be reached (a clustered
	// backend without quorum, past its cache grace): callers answer 503.
	ErrUnavailable = errors.New("state store unavailable")
)

// Key kinds.
const (
	KindMacaroon = "macaroon"  // macaroon root keys
	KindOIDC     = "oidc"      // OIDC signing keys
	KindSPIFFECA = "spiffe-ca" // SPIFFE X.509 CAs, one kind per org: "spiffe-ca/<org>"
	// KindSPIFFEJWT is an org's JWT-SVID signing keys, "spiffe-jwt/<org>":
	// apart from its OIDC keys, published only in its SPIFFE bundle.
	KindSPIFFEJWT = "spiffe-jwt"
	// KindAdminToken is one remote admin token's root key and its label
	// and expiry, sealed together; the record's ID is the token id.
	KindAdminToken = "admin-token"
)

// Machine is a registered machine and the metadata the issuer serves for it.
type Machine struct {
	ID          string
	Name        string
	Org         string
	App         string
	Region      string
	Image       string
	ImageDigest string
	PrivateIP   string
	Tags        map[string]string
	SourceAddrs []string // CIDR strings the machine's token may be used from

	// Version is set to 1 on create and bumped by the store on every change;
	// callers pass it back to UpdateMachine for optimistic concurrency.
	Version   uint64
	CreatedAt time.Time
	UpdatedAt time.Time
}

// Clone returns a deep copy of m, so neither side can mutate the other's
// maps and slices.
func (m *Machine) Clone() *Machine {
	if m == nil {
		return nil
	}
	c := *m
	c.Tags = maps.Clone(m.Tags)
	c.SourceAddrs = slices.Clone(m.SourceAddrs)
	return &c
}

// SealedKey is a private key (OIDC signing key or macaroon root key) as the
// store keeps it: Sealed is already encrypted by the caller (package seal);
// the store never sees key material in the clear.
type SealedKey struct {
	ID         string
	Kind       string // KindMacaroon, KindOIDC/<org>, KindSPIFFECA/<org>, KindSPIFFEJWT/<org> or KindAdminToken
	Alg        string // e.g. "RS256", "ES256", "HS256"
	State      string // lifecycle state, owned by the issuer
	CreatedAt  time.Time
	ActivateAt time.Time
	RetiredAt  time.Time
	Sealed     []byte
}

// Clone returns a deep copy of k.
func (k *SealedKey) Clone() *SealedKey {
	if k == nil {
		return nil
	}
	c := *k
	c.Sealed = slices.Clone(k.Sealed)
	return &c
}

// Revocation records a revoked machine token by its id.
type Revocation struct {
	TokenID   string
	Reason    string
	RevokedAt time.Time
	// ExpiresAt is when the revocation can be forgotten because the token
	// has expired anyway; zero means never.
	ExpiresAt time.Time
}

// Event is one state of a watched machine.
type Event struct {
	MachineID string
	// Machine is the state after the change, or nil if it was deleted. Each
	// subscriber gets its own copy.
	Machine *Machine
	// Revision is the store-wide revision of the write that produced this
	// state (or, for the first event of a watch, the revision it was read
	// at). It only grows within one watch.
	Revision uint64
}

// Store holds the issuer's state. Implementations are safe for concurrent
// use. Machines, keys and revocations passed in and returned are copies:
// the caller may mutate them freely.
type Store interface {
	// CreateMachine registers m. It sets m.Version to 1 and m.CreatedAt and
	// m.UpdatedAt to now. It fails with ErrExists if m.ID, or m's
	// (Org, App, Name), is already taken.
	CreateMachine(ctx context.Context, m *Machine) error
	// GetMachine returns the machine with id, or ErrNotFound.
	GetMachine(ctx context.Context, id string) (*Machine, error)
	// ListMachines returns all machines sorted by org, app, name.
	ListMachines(ctx context.Context) ([]*Machine, error)
	// UpdateMachine applies fn to a copy of the current machine and stores
	// the result atomically, bumping Version and setting UpdatedAt. If
	// expectVersion is not 0 and differs from the current version it fails
	// with ErrConflict without calling fn. An error from fn aborts the
	// update and is returned as is. fn may be called more than once (a
	// backend may retry on contention), so it must have no side effects, and
	// it must not call the store. fn may not change ID, Version or
	// CreatedAt. Renaming to a taken (Org, App, Name) fails with ErrExists.
	// It returns the new machine.
	UpdateMachine(ctx context.Context, id string, expectVersion uint64, fn func(*Machine) error) (*Machine, error)
	// DeleteMachine removes the machine with id, or returns ErrNotFound.
	// check, when not nil, is asked about the machine as it is inside the
	// deletion's transaction: an error from it aborts the deletion and is
	// returned as is, so a caller's decision (a scope check) is made on
	// the very record deleted, never on an earlier read. Like
	// UpdateMachine's fn it may be called more than once and must have no
	// side effects; it must not call the store.
	DeleteMachine(ctx context.Context, id string, check func(*Machine) error) error

	// PutKey creates or replaces the key with k's (Kind, ID).
	PutKey(ctx context.Context, k *SealedKey) error
	// ListKeys returns the keys of kind ("" for all kinds), sorted by kind,
	// then CreatedAt, then ID.
	ListKeys(ctx context.Context, kind string) ([]*SealedKey, error)
	// DeleteKey removes a key, or returns ErrNotFound.
	DeleteKey(ctx context.Context, kind, id string) error

	// Revoke records r, replacing any earlier revocation of r.TokenID.
	Revoke(ctx context.Context, r *Revocation) error
	// IsRevoked reports whether tokenID has been revoked.
	IsRevoked(ctx context.Context, tokenID string) (bool, error)
	// ListRevocations returns all revocations sorted by token id.
	ListRevocations(ctx context.Context) ([]*Revocation, error)

	// WatchMachine returns a channel that first delivers the machine's
	// current state, then its state after every change, so a subscriber
	// never misses a change between a read and a watch. A slow consumer
	// never blocks writers: undelivered states are coalesced and the latest
	// one wins, so the final state is always delivered. A deletion is
	// delivered as an Event with a nil Machine. The channel is closed when
	// ctx ends or the store is closed. It fails with ErrNotFound if the
	// machine does not exist.
	WatchMachine(ctx context.Context, id string) (<-chan Event, error)
	// WatchKeys returns a channel that receives a value after any key or
	// revocation changes, coalescing bursts into one, so replicas know to
	// reload. It sends nothing initially: subscribe, then load. The channel
	// is closed when ctx ends or the store is closed.
	WatchKeys(ctx context.Context) (<-chan struct{}, error)

	// Shared reports whether other processes (issuer replicas) may use the
	// same state at the same time. It is part of the interface, not an
	// optional capability, so that every backend has to answer it: a
	// shared store must also implement Elector (ElectorFor), else the
	// issuer refuses to start on it. false promises that nothing else
	// writes the state while this Store is open (bolt holds the file's
	// lock), so the process may do singleton work without an election.
	Shared() bool

	// Close releases the store and closes all watch channels.
	Close() error
}
