package api

import "time"

// Remote admin operations, the values of AdminTokenRequest.Ops and
// AdminScope.Ops: what an admin token may be allowed to do on the
// issuer's remote admin API.
const (
	OpMachineAdd    = "machine.add"
	OpMachineUpdate = "machine.update"
	OpMachineRemove = "machine.remove"
	OpMachineGet    = "machine.get" // get one machine, list machines
	OpTokenMint     = "token.mint"
	OpTokenRevoke   = "token.revoke"
)

// AdminTokenRequest is the body of POST /v1/admin-tokens on the issuer's
// admin socket: a new root admin token for the remote admin API. Empty
// lists narrow nothing; the holder can narrow the token further offline.
type AdminTokenRequest struct {
	// Label names the token in listings and logs ("host-fra-1"); at most
	// 64 printable characters.
	Label string `json:"label"`
	// TTL is the token's lifetime (a Go duration); empty = 8760h.
	TTL           string   `json:"ttl"`
	Orgs          []string `json:"orgs"`
	Apps          []string `json:"apps"`
	Regions       []string `json:"regions"`
	Ops           []string `json:"ops"`
	MaxMachineTTL string   `json:"max_machine_ttl"` // a Go duration; empty = no cap beyond machine_tokens.max_ttl
	SourceAddrs   []string `json:"source_addrs"`    // CIDR prefixes
}

// AdminTokenMinted is the answer to POST /v1/admin-tokens: the token is
// shown once and not stored (only its root key, sealed).
type AdminTokenMinted struct {
	Token     string    `json:"token"`
	TokenID   string    `json:"token_id"`
	Label     string    `json:"label"`
	ExpiresAt time.Time `json:"expires_at"`
}

// AdminTokenInfo is an admin token as GET /v1/admin-tokens lists it:
// never the token itself.
type AdminTokenInfo struct {
	TokenID   string    `json:"token_id"`
	Label     string    `json:"label"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at"`
	Revoked   bool      `json:"revoked"`
}

// AdminTokenList is the answer to GET /v1/admin-tokens.
type AdminTokenList struct {
	AdminTokens []AdminTokenInfo `json:"admin_tokens"`
}

// AdminScope is what an admin token may do after every attenuation: each
// list is what all its caveats of that kind allow (null: not narrowed).
type AdminScope struct {
	Orgs          []string  `json:"orgs"`
	Apps          []string  `json:"apps"`
	Regions       []string  `json:"regions"`
	Ops           []string  `json:"ops"`
	MaxMachineTTL string    `json:"max_machine_ttl"` // "" = no cap of the token's own; "0s" = mints no machine token
	SourceAddrs   []string  `json:"source_addrs"`
	ExpiresAt     time.Time `json:"expires_at"`
}

// RemoteStatus is the answer to GET /v1/status on the remote admin API:
// which admin token the caller holds and what it may do, not the issuer's
// internals (those are on the admin socket).
type RemoteStatus struct {
	Service      string     `json:"service"` // "issuer"
	Version      string     `json:"version"`
	AdminTokenID string     `json:"admin_token_id"`
	Scope        AdminScope `json:"scope"`
}
