package api

import (
	"encoding/json"
	"time"
)

// SPIFFEEndpointSocketEnv is the standard variable SPIFFE libraries read
// the Workload API's address from ("unix:///run/wicket/spiffe.sock");
// `wicket agent run` sets it for the workload when the Workload API is on.
const SPIFFEEndpointSocketEnv = "SPIFFE_ENDPOINT_SOCKET"

// DefaultSPIFFESocket is the agent's SPIFFE Workload API socket.
const DefaultSPIFFESocket = "/run/wicket/spiffe.sock"

// X509SVIDRequest is the body of the issuer's POST /v1/svids/x509 and of
// the guest API's POST /v1/svids/x509 (without CSR there: the agent makes
// the key). Unknown fields are refused.
type X509SVIDRequest struct {
	// CSR is the DER of a PKCS#10 request whose only SAN is the URI SAN
	// of the SPIFFE ID asked for (base64 in JSON).
	CSR []byte `json:"csr"`
}

// X509SVIDReply is the issuer's answer to POST /v1/svids/x509.
type X509SVIDReply struct {
	SPIFFEID string `json:"spiffe_id"`
	// CertChain is the leaf's DER (wicket's CAs are roots: no
	// intermediates).
	CertChain [][]byte `json:"cert_chain"`
	// ExpiresAt is the leaf's NotAfter, RFC 3339.
	ExpiresAt time.Time `json:"expires_at"`
}

// JWTSVIDRequest is the body of POST /v1/svids/jwt (issuer and guest API).
type JWTSVIDRequest struct {
	// SPIFFEID is the ID asked for (issuer only; the guest API takes the
	// caller's from the agent's policy).
	SPIFFEID string `json:"spiffe_id,omitempty"`
	// Audience lists 1 to 10 audiences; required.
	Audience []string `json:"aud"`
}

// JWTSVIDReply is the answer to POST /v1/svids/jwt.
type JWTSVIDReply struct {
	SPIFFEID  string    `json:"spiffe_id"`
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expires_at"`
}

// SVIDBundleReply is the issuer's answer to GET /v1/svids/bundle: the
// machine's trust domain, its own SPIFFE ID and its trust domain's bundle,
// and the bundles of the foreign trust domains its org federates with.
type SVIDBundleReply struct {
	TrustDomain string `json:"trust_domain"`
	// SPIFFEID is the machine's own ID.
	SPIFFEID string `json:"spiffe_id"`
	// Bundle is the trust domain's SPIFFE bundle document (the same JSON
	// as <public_url>/<org>/.well-known/spiffe-bundle).
	Bundle json.RawMessage `json:"bundle"`
	// FederatedBundles are the SPIFFE bundle documents of the foreign
	// trust domains ([[spiffe.federation]]) the machine's org trusts,
	// keyed by trust domain name ("spire.example"); absent when there
	// are none, and a domain is absent until the issuer has its bundle.
	FederatedBundles map[string]json.RawMessage `json:"federated_bundles,omitempty"`
}

// X509SVIDGuestReply is the guest API's JSON answer to POST
// /v1/svids/x509: the SVID with its private key, for a caller the policy
// admits. The key is PKCS#8 PEM; it exists only in the agent's memory and
// in this reply.
type X509SVIDGuestReply struct {
	SPIFFEID  string    `json:"spiffe_id"`
	CertPEM   string    `json:"cert_pem"`
	KeyPEM    string    `json:"key_pem"`
	BundlePEM string    `json:"bundle_pem"`
	ExpiresAt time.Time `json:"expires_at"`
}
