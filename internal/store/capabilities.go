package store

import (
	"context"
	"errors"
	"fmt"
)

// The optional capabilities of a backend. The issuer finds them with a type
// assertion on the Store it opened, so a backend declares one by
// implementing its interface; storetest runs the conformance cases of every
// capability a backend implements. Wrapping a Store (for metrics, say) in a
// type that embeds the Store interface hides these methods: a wrapper must
// forward each capability it means to keep, and Shared tells the issuer when
// a missing Elector is not safe to ignore.

// Elector elects one process among all those sharing a store to do work
// that must be done once for the whole deployment, not once per replica:
// scheduled key rotation and pruning. Every Store whose Shared reports true
// must implement it (see ElectorFor).
//
// Lead campaigns for the leadership called name and blocks until this
// process leads or ctx ends (then it returns an error). While this process
// leads, no other process sharing the store leads the same name: that is
// the whole promise, and it must hold across processes, not only within
// one. lost ends when the leadership may have passed to another process
// (the backend can no longer vouch for it) and when ctx ends; the leader
// must stop acting for the group as soon as it does. resign gives the
// leadership up at once so another can take it without waiting for a
// timeout; it must be called once leading is over, is safe to call more
// than once and ends lost. Different names are independent leaderships.
type Elector interface {
	Lead(ctx context.Context, name string) (lost context.Context, resign func(), err error)
}

// Importer takes a machine exactly as another store holds it, for copying
// state between backends (wicket issuer migrate): ID, Version, CreatedAt
// and UpdatedAt are kept rather than set, so metadata ETags and
// expect_version carry over. Like CreateMachine, ImportMachine fails with
// ErrExists if m's ID or its (Org, App, Name) is taken, and watchers see
// the new machine; it refuses a machine without an ID or with Version 0.
// A later UpdateMachine continues from the imported Version.
type Importer interface {
	ImportMachine(ctx context.Context, m *Machine) error
}

// NameIndex finds a machine by its (Org, App, Name), which every store
// keeps unique, through the store's own name index instead of a listing:
// without it an "org/app/name" reference (the admin API, EnsureMachine)
// decodes the whole registry on every call, which at fleet scale is what
// a name lookup costs. It fails with ErrNotFound when no machine has that
// name.
type NameIndex interface {
	GetMachineByName(ctx context.Context, org, app, name string) (*Machine, error)
}

// Health reports whether a backend that lives elsewhere (a cluster)
// answers right now, for status pages. Reachable must not block: it
// reports what the backend last saw (its watch or its last request), not
// the result of a new round trip. A store without Health is reachable
// whenever it is open (a local file).
type Health interface {
	Reachable() bool
}

// RecentReader reads a machine from a clustered backend's watch-fed copy
// of the machines, without a round trip: the machine as the backend's
// watch last reported it, which lags the backend's own state by at most a
// bound the backend documents (etcd: the watch delay, and 2 s if the
// watch stalls). When the copy cannot answer (it lacks the machine,
// perhaps created elsewhere a moment ago, or is not known current) it
// reads the backend as GetMachine does, so a machine is never reported
// missing that GetMachine would find. This process's own writes are in
// the copy as soon as they commit. It is for the per-request read of a
// token check, where a change made through another replica may take
// effect after that bound; never for a read-modify-write or an admin's
// answer, which use GetMachine.
type RecentReader interface {
	GetMachineRecent(ctx context.Context, id string) (*Machine, error)
}

// ReadStats counts the per-request machine reads (GetMachineRecent, a
// watch's first state) by where a backend answered them: a clustered one
// from its watch-fed copy (Mirror) or with a round trip (Backend), for
// status pages and for measuring what the copy saves. The counts only
// grow.
type ReadStats interface {
	MachineReads() MachineReads
}

// MachineReads is what ReadStats reports.
type MachineReads struct {
	Mirror, Backend uint64
}

// ErrNoElector means a store is shared between processes but cannot elect
// one of them, so work that must run once would run on every replica.
var ErrNoElector = errors.New("store: shared between replicas but cannot elect a leader")

// ElectorFor returns how a process decides whether it may do work that
// must run once for everyone sharing s: nil when s is not shared (this
// process is the only user, so it does the work itself), s's Elector when
// s is shared, and ErrNoElector when s is shared and has none. The issuer
// calls it when it opens the state, so such a store fails at start
// instead of rotating keys on every replica.
func ElectorFor(s Store) (Elector, error) {
	if !s.Shared() {
		return nil, nil
	}
	el, ok := s.(Elector)
	if !ok {
		return nil, fmt.Errorf("%w (%T)", ErrNoElector, s)
	}
	return el, nil
}
