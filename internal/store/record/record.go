// Package record holds the JSON records both store backends write. They
// are separate from the store types so that renaming a Go field can never
// orphan data already written, and shared so that `wicket issuer migrate`
// copies state between backends without conversion. A record is marshaled
// at once or freshly decoded, so sharing maps and slices here never leaks.
package record

import (
	"time"

	"github.com/wicket-sh/wicket/internal/store"
)

// Machine is a stored machine.
type Machine struct {
	ID          string            `json:"id"`
	Name        string            `json:"name"`
	Org         string            `json:"org"`
	App         string            `json:"app"`
	Region      string            `json:"region,omitempty"`
	Image       string            `json:"image,omitempty"`
	ImageDigest string            `json:"image_digest,omitempty"`
	PrivateIP   string            `json:"private_ip,omitempty"`
	Tags        map[string]string `json:"tags"`
	SourceAddrs []string          `json:"source_addrs"`
	Version     uint64            `json:"version"`
	CreatedAt   time.Time         `json:"created_at"`
	UpdatedAt   time.Time         `json:"updated_at"`
}

// FromMachine converts a machine to its record.
func FromMachine(m *store.Machine) Machine {
	return Machine{
		ID: m.ID, Name: m.Name, Org: m.Org, App: m.App, Region: m.Region,
		Image: m.Image, ImageDigest: m.ImageDigest, PrivateIP: m.PrivateIP,
		Tags: m.Tags, SourceAddrs: m.SourceAddrs, Version: m.Version,
		CreatedAt: m.CreatedAt, UpdatedAt: m.UpdatedAt,
	}
}

// Machine returns the store type.
func (r *Machine) Machine() *store.Machine {
	return &store.Machine{
		ID: r.ID, Name: r.Name, Org: r.Org, App: r.App, Region: r.Region,
		Image: r.Image, ImageDigest: r.ImageDigest, PrivateIP: r.PrivateIP,
		Tags: r.Tags, SourceAddrs: r.SourceAddrs, Version: r.Version,
		CreatedAt: r.CreatedAt, UpdatedAt: r.UpdatedAt,
	}
}

// Key is a stored sealed key.
type Key struct {
	ID         string    `json:"id"`
	Kind       string    `json:"kind"`
	Alg        string    `json:"alg"`
	State      string    `json:"state"`
	CreatedAt  time.Time `json:"created_at"`
	ActivateAt time.Time `json:"activate_at"`
	RetiredAt  time.Time `json:"retired_at"`
	Sealed     []byte    `json:"sealed"`
}

// FromKey converts a sealed key to its record.
func FromKey(k *store.SealedKey) Key {
	return Key{
		ID: k.ID, Kind: k.Kind, Alg: k.Alg, State: k.State, CreatedAt: k.CreatedAt,
		ActivateAt: k.ActivateAt, RetiredAt: k.RetiredAt, Sealed: k.Sealed,
	}
}

// Key returns the store type.
func (r *Key) Key() *store.SealedKey {
	return &store.SealedKey{
		ID: r.ID, Kind: r.Kind, Alg: r.Alg, State: r.State, CreatedAt: r.CreatedAt,
		ActivateAt: r.ActivateAt, RetiredAt: r.RetiredAt, Sealed: r.Sealed,
	}
}

// Revocation is a stored revocation.
type Revocation struct {
	TokenID   string    `json:"token_id"`
	Reason    string    `json:"reason,omitempty"`
	RevokedAt time.Time `json:"revoked_at"`
	ExpiresAt time.Time `json:"expires_at"`
}

// FromRevocation converts a revocation to its record.
func FromRevocation(r *store.Revocation) Revocation {
	return Revocation{TokenID: r.TokenID, Reason: r.Reason, RevokedAt: r.RevokedAt, ExpiresAt: r.ExpiresAt}
}

// Revocation returns the store type.
func (r *Revocation) Revocation() *store.Revocation {
	return &store.Revocation{TokenID: r.TokenID, Reason: r.Reason, RevokedAt: r.RevokedAt, ExpiresAt: r.ExpiresAt}
}
