package etcd

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/wicket-sh/wicket/internal/store"
)

// The stored records are separate from the store types so that renaming a
// Go field can never orphan data already written. They are the same JSON
// as store/bolt's, so `wicket issuer migrate` needs no conversion and an
// operator reading etcd sees what the bbolt file held.

type machineRecord struct {
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

func encodeMachine(m *store.Machine) (string, error) {
	b, err := json.Marshal(machineRecord{
		ID: m.ID, Name: m.Name, Org: m.Org, App: m.App, Region: m.Region,
		Image: m.Image, ImageDigest: m.ImageDigest, PrivateIP: m.PrivateIP,
		Tags: m.Tags, SourceAddrs: m.SourceAddrs, Version: m.Version,
		CreatedAt: m.CreatedAt, UpdatedAt: m.UpdatedAt,
	})
	return string(b), err
}

func decodeMachine(v []byte) (*store.Machine, error) {
	var r machineRecord
	if err := json.Unmarshal(v, &r); err != nil {
		return nil, fmt.Errorf("decoding machine: %w", err)
	}
	return &store.Machine{
		ID: r.ID, Name: r.Name, Org: r.Org, App: r.App, Region: r.Region,
		Image: r.Image, ImageDigest: r.ImageDigest, PrivateIP: r.PrivateIP,
		Tags: r.Tags, SourceAddrs: r.SourceAddrs, Version: r.Version,
		CreatedAt: r.CreatedAt, UpdatedAt: r.UpdatedAt,
	}, nil
}

type keyRecord struct {
	ID         string    `json:"id"`
	Kind       string    `json:"kind"`
	Alg        string    `json:"alg"`
	State      string    `json:"state"`
	CreatedAt  time.Time `json:"created_at"`
	ActivateAt time.Time `json:"activate_at"`
	RetiredAt  time.Time `json:"retired_at"`
	Sealed     []byte    `json:"sealed"`
}

func encodeKey(k *store.SealedKey) (string, error) {
	b, err := json.Marshal(keyRecord{
		ID: k.ID, Kind: k.Kind, Alg: k.Alg, State: k.State, CreatedAt: k.CreatedAt,
		ActivateAt: k.ActivateAt, RetiredAt: k.RetiredAt, Sealed: k.Sealed,
	})
	return string(b), err
}

func decodeKey(v []byte) (*store.SealedKey, error) {
	var r keyRecord
	if err := json.Unmarshal(v, &r); err != nil {
		return nil, fmt.Errorf("decoding key: %w", err)
	}
	return &store.SealedKey{
		ID: r.ID, Kind: r.Kind, Alg: r.Alg, State: r.State, CreatedAt: r.CreatedAt,
		ActivateAt: r.ActivateAt, RetiredAt: r.RetiredAt, Sealed: r.Sealed,
	}, nil
}

type revocationRecord struct {
	TokenID   string    `json:"token_id"`
	Reason    string    `json:"reason,omitempty"`
	RevokedAt time.Time `json:"revoked_at"`
	ExpiresAt time.Time `json:"expires_at"`
}

func encodeRevocation(r *store.Revocation) (string, error) {
	b, err := json.Marshal(revocationRecord{TokenID: r.TokenID, Reason: r.Reason, RevokedAt: r.RevokedAt, ExpiresAt: r.ExpiresAt})
	return string(b), err
}

func decodeRevocation(v []byte) (*store.Revocation, error) {
	var r revocationRecord
	if err := json.Unmarshal(v, &r); err != nil {
		return nil, fmt.Errorf("decoding revocation: %w", err)
	}
	return &store.Revocation{TokenID: r.TokenID, Reason: r.Reason, RevokedAt: r.RevokedAt, ExpiresAt: r.ExpiresAt}, nil
}
