package api

import "encoding/json"

// IssuerTokenRequest is the optional body of the issuer's POST
// /v1/tokens/oidc (an empty body asks for the defaults). Unknown fields
// are refused.
type IssuerTokenRequest struct {
	// Aud is a JSON string or a list of 1 to 10 strings; absent or null
	// means the org's default audience.
	Aud json.RawMessage `json:"aud,omitempty"`
	// TTL is a Go duration ("5m"); empty means the issuer's [oidc]
	// token_ttl. It is capped by [oidc] max_ttl and by the presented
	// token's own end.
	TTL string `json:"ttl,omitempty"`
}
