package api

import "time"

// Metadata is what a machine learns about itself: the body of the guest
// API's GET /v1/metadata and of the issuer's GET /v1/machines/self.
type Metadata struct {
	MachineID   string            `json:"machine_id"`
	MachineName string            `json:"machine_name"`
	App         string            `json:"app"`
	Org         string            `json:"org"`
	Region      string            `json:"region"`
	Image       string            `json:"image"`
	ImageDigest string            `json:"image_digest"`
	PrivateIP   string            `json:"private_ip"`
	Tags        map[string]string `json:"tags"`
}

// Long-poll bounds of GET /v1/metadata?wait=true (guest API) and GET
// /v1/machines/self?wait=true (issuer): the timeout parameter must lie in
// [MinWait, MaxWait]; without one the wait is DefaultWait.
const (
	DefaultWait = 30 * time.Second
	MinWait     = time.Second
	MaxWait     = 120 * time.Second
)

// TokenRequest is the optional body of the guest API's POST
// /v1/tokens/oidc. An absent or null aud asks for the org's default
// audience (its issuer URL). Unknown fields are refused.
type TokenRequest struct {
	Aud *string `json:"aud,omitempty"`
}

// TokenReply is the answer to POST /v1/tokens/oidc, on the guest API (when
// the caller accepts application/json; otherwise the bare JWT as
// application/jwt) and on the issuer.
type TokenReply struct {
	// Token is the signed OIDC token, a compact JWS.
	Token string `json:"token"`
	// ExpiresAt is the token's exp, RFC 3339 in whole seconds.
	ExpiresAt time.Time `json:"expires_at"`
}

// HealthReply is the body of GET /v1/health on every socket and on the
// issuer's HTTP API.
type HealthReply struct {
	Status string `json:"status"` // HealthOK
}

// HealthOK is HealthReply.Status of a service that is up.
const HealthOK = "ok"
