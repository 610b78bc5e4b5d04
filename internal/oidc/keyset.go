package oidc

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// ErrNoSigningKey means no key of the requested algorithm may sign at the
// requested time (none exists, or the only one is still pre-publishing).
var ErrNoSigningKey = errors.New("oidc: no signing key")

// KeySet is an immutable snapshot of an org's keys, safe for concurrent use.
// The issuer builds a new one whenever keys change and swaps it in atomically.
type KeySet struct {
	keys []*Key // private copies, newest ActivateAt first
}

// NewKeySet validates keys and snapshots them. It copies every key, so later
// changes to the caller's keys do not reach the snapshot, and prepares each
// key's signer once here rather than once per token.
func NewKeySet(keys []*Key) (*KeySet, error) {
	s := &KeySet{keys: make([]*Key, 0, len(keys))}
	seen := make(map[string]bool, len(keys))
	for _, k := range keys {
		if err := k.validate(); err != nil {
			return nil, err
		}
		// Relying parties select the verification key by kid alone.
		if seen[k.ID] {
			return nil, fmt.Errorf("oidc: duplicate key id %s", k.ID)
		}
		seen[k.ID] = true
		c := *k
		if err := c.prepare(); err != nil {
			return nil, err
		}
		s.keys = append(s.keys, &c)
	}
	slices.SortFunc(s.keys, func(a, b *Key) int {
		return cmp.Or(b.ActivateAt.Compare(a.ActivateAt), b.CreatedAt.Compare(a.CreatedAt), cmp.Compare(a.ID, b.ID))
	})
	return s, nil
}

// Signer returns the key that signs alg tokens at now: the newest key that is
// active at now (see [Key.StateAt]). A key never signs before its ActivateAt,
// so relying parties have had the prepublish delay to fetch it.
func (s *KeySet) Signer(alg Alg, now time.Time) (*Key, error) {
	for _, k := range s.keys {
		if k.Alg == alg && k.StateAt(now) == StateActive {
			return k, nil
		}
	}
	return nil, fmt.Errorf("%w for %s", ErrNoSigningKey, alg)
}

// JWKS returns the public keys relying parties should accept at now: every
// pending, active and retired key, until a retired key has been retired for
// grace. Grace must cover the longest token lifetime plus clock skew.
func (s *KeySet) JWKS(now time.Time, grace time.Duration) jose.JSONWebKeySet {
	set := jose.JSONWebKeySet{Keys: make([]jose.JSONWebKey, 0, len(s.keys))}
	for _, k := range s.keys {
		if k.expired(now, grace) {
			continue
		}
		set.Keys = append(set.Keys, jose.JSONWebKey{
			Key:       k.Private.Public(), // public half only, by construction
			KeyID:     k.ID,
			Algorithm: string(k.Alg),
			Use:       "sig",
		})
	}
	return set
}

// expired reports whether k has been retired for at least grace at now.
func (k *Key) expired(now time.Time, grace time.Duration) bool {
	// A negative grace would unpublish a key while it still signs.
	return k.State == StateRetired && !now.Before(k.RetiredAt.Add(max(grace, 0)))
}

// Rotate returns keys with a new key for alg, and the new key. The new key is
// pending: published from now, signing from now+prepublish. Every other key of
// alg is retired at that same instant, so exactly one key signs at any time and
// tokens it signed keep verifying through the JWKS grace period. Pending keys
// of other algs whose time has come are relabelled active.
//
// Rotate does not modify keys: changed keys are copies, since the originals
// may be shared with a live KeySet.
func Rotate(keys []*Key, alg Alg, now time.Time, prepublish time.Duration) ([]*Key, *Key, error) {
	nk, err := GenerateKey(alg, now, prepublish)
	if err != nil {
		return nil, nil, err
	}
	out := make([]*Key, 0, len(keys)+1)
	for _, k := range keys {
		switch {
		// A key already retiring later than the hand-over (the delay shrank
		// between rotations) is pulled forward, so it never outlives its successor.
		case k.Alg == alg && (k.State != StateRetired || k.RetiredAt.After(nk.ActivateAt)):
			c := *k
			c.State, c.RetiredAt = StateRetired, nk.ActivateAt
			k = &c
		case k.State == StatePending && k.StateAt(now) == StateActive:
			c := *k
			c.State = StateActive
			k = &c
		}
		out = append(out, k)
	}
	return append(out, nk), nk, nil
}

// Prune returns keys without those retired for at least grace at now, the
// same keys [KeySet.JWKS] stops publishing.
func Prune(keys []*Key, now time.Time, grace time.Duration) []*Key {
	return slices.DeleteFunc(slices.Clone(keys), func(k *Key) bool { return k.expired(now, grace) })
}
