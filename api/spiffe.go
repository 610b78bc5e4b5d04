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

// X509SVIDRequest is the body of the issuer's POST /v1/svids/x509 (the
// guest API's takes no body: the agent makes the key). Unknown fields are
// refused.
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

// JWTSVIDRequest is the body of the issuer's POST /v1/svids/jwt (the guest
// API's is JWTSVIDGuestRequest).
type JWTSVIDRequest struct {
	// SPIFFEID is the ID asked for.
	SPIFFEID string `json:"spiffe_id,omitempty"`
	// Audience lists 1 to 10 audiences; required.
	Audience []string `json:"aud"`
}

// JWTSVIDReply is the answer to POST /v1/svids/jwt (issuer and guest
// API).
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
// /v1/svids/x509: the caller's X.509-SVID with its private key, for a
// caller the policy admits (the same SVID the Workload API serves it).
// Every field is PEM; the key exists only in the agent's memory and in
// this reply.
type X509SVIDGuestReply struct {
	SPIFFEID string `json:"spiffe_id"`
	// X509SVID is the certificate chain, leaf first ("CERTIFICATE"
	// blocks).
	X509SVID string `json:"x509_svid"`
	// X509SVIDKey is the private key ("PRIVATE KEY", PKCS#8).
	X509SVIDKey string `json:"x509_svid_key"`
	// Bundle is the trust domain's X.509 authorities ("CERTIFICATE"
	// blocks).
	Bundle string `json:"bundle"`
	// ExpiresAt is the leaf's NotAfter, RFC 3339.
	ExpiresAt time.Time `json:"expires_at"`
}

// JWTSVIDGuestRequest is the body of the guest API's POST /v1/svids/jwt:
// the audiences (1 to 10) only, the identity being the caller's own.
// Unknown fields are refused. The answer is a JWTSVIDReply.
type JWTSVIDGuestRequest struct {
	Audience []string `json:"audience"`
}

// PEMContentType is the media type a guest API caller names in Accept to
// get POST /v1/svids/x509's answer as PEM (the chain, then the key).
const PEMContentType = "application/x-pem-file"
