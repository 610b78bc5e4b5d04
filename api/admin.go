package api

import "time"

// ReloadResult is the answer to POST /v1/reload on an admin socket.
type ReloadResult struct {
	Status     string `json:"status"` // "ok"
	Generation uint64 `json:"generation"`
	// RestartRequired lists the static settings that changed and take
	// effect only after a restart; never null.
	RestartRequired []string `json:"restart_required"`
}

// MachineSpec is the body of POST /v1/machines on the issuer's admin
// socket.
type MachineSpec struct {
	Name        string            `json:"name"`
	Org         string            `json:"org"`
	App         string            `json:"app"`
	Region      string            `json:"region"`
	Image       string            `json:"image"`
	ImageDigest string            `json:"image_digest"`
	PrivateIP   string            `json:"private_ip"`
	Tags        map[string]string `json:"tags"`
	SourceAddrs []string          `json:"source_addrs"`
	// TokenTTL is the machine token's lifetime ("720h"); empty = default.
	TokenTTL string `json:"token_ttl"`
}

// MachineUpdate is the body of PATCH /v1/machines/{id}: nil fields are
// kept.
type MachineUpdate struct {
	Region      *string           `json:"region"`
	Image       *string           `json:"image"`
	ImageDigest *string           `json:"image_digest"`
	PrivateIP   *string           `json:"private_ip"`
	SetTags     map[string]string `json:"set_tags"`
	RemoveTags  []string          `json:"remove_tags"`
	SourceAddrs *[]string         `json:"source_addrs"`
	// ExpectVersion, when not zero, must be the machine's current version
	// or the update fails with CodeConflict.
	ExpectVersion uint64 `json:"expect_version"`
}

// MachineView is a machine as the issuer's admin API shows it.
type MachineView struct {
	Metadata
	SourceAddrs []string  `json:"source_addrs"`
	Version     uint64    `json:"version"`
	CreatedAt   time.Time `json:"created_at"`
	UpdatedAt   time.Time `json:"updated_at"`
}

// MintedToken is a machine token as the issuer's admin API returns it,
// once: it is not stored.
type MintedToken struct {
	Token     string    `json:"token"`
	TokenID   string    `json:"token_id"`
	ExpiresAt time.Time `json:"expires_at"`
}

// MachineAdded is the answer to POST /v1/machines.
type MachineAdded struct {
	Machine MachineView  `json:"machine"`
	Token   *MintedToken `json:"token"`
}

// MachineList is the answer to GET /v1/machines.
type MachineList struct {
	Machines []MachineView `json:"machines"`
}

// MachineRemoved is the answer to DELETE /v1/machines/{id}.
type MachineRemoved struct {
	MachineID string `json:"machine_id"`
	Status    string `json:"status"` // "removed"
}

// MintRequest is the body of POST /v1/machines/{id}/tokens.
type MintRequest struct {
	TTL string `json:"ttl"` // a Go duration; empty = default
}

// RevokeRequest is the body of POST /v1/revocations.
type RevokeRequest struct {
	TokenID string `json:"token_id"` // 32 hex characters
	Reason  string `json:"reason"`   // kept in the state, at most 256 printable characters
	// Token is the machine token itself. The remote admin API needs it (or
	// a copy of it) to check that the token belongs to a machine in the
	// admin token's scope; token_id may then be left empty, and must match
	// when given. The admin socket takes either.
	Token string `json:"token,omitempty"`
}

// TokenRevoked is the answer to POST /v1/revocations.
type TokenRevoked struct {
	Status  string `json:"status"` // "revoked"
	TokenID string `json:"token_id"`
}

// KeyInfo describes a signing key without any private material.
type KeyInfo struct {
	Kind       string    `json:"kind"` // "oidc" or "macaroon"
	Org        string    `json:"org,omitempty"`
	ID         string    `json:"id"`
	Alg        string    `json:"alg,omitempty"`
	State      string    `json:"state"`
	CreatedAt  time.Time `json:"created_at"`
	ActivateAt time.Time `json:"activate_at,omitzero"`
	RetiredAt  time.Time `json:"retired_at,omitzero"`
}

// KeyList is the answer to GET /v1/keys.
type KeyList struct {
	Keys []KeyInfo `json:"keys"`
}

// RotateRequest is the body of POST /v1/keys/rotate.
type RotateRequest struct {
	Kind string `json:"kind"` // "oidc" (default), "spiffe-jwt", "spiffe-ca" or "macaroon"
	Org  string `json:"org"`  // the org whose key or CA rotates
	Alg  string `json:"alg"`  // "RS256" or "ES256"; empty = the configured one
}

// MacaroonKeyRotated is the answer to POST /v1/keys/rotate for kind
// "macaroon"; kind "oidc" answers with the new key's KeyInfo.
type MacaroonKeyRotated struct {
	ID   string `json:"id"`
	Kind string `json:"kind"` // "macaroon"
}
