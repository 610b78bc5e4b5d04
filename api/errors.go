package api

// ErrorReply is the body of every error answer on every wicket socket and
// on the issuer's HTTP API: {"error":"<generic>","code":"<stable>"}.
type ErrorReply struct {
	// Error is a generic, human-readable message. It never repeats the
	// request; the details are in the server's log.
	Error string `json:"error"`
	// Code is one of the Code constants; clients match on it.
	Code string `json:"code"`
}

// Stable error codes. Clients may match on these; they never change meaning.
const (
	// CodeBadRequest: the request is malformed or names an invalid value
	// (400), including a non-canonical path.
	CodeBadRequest = "bad_request"
	// CodeUnauthorized: the issuer refused the machine token, or the remote
	// admin API the admin token (401), for whatever reason.
	CodeUnauthorized = "unauthorized"
	// CodeForbidden: the caller's peer credentials, policy or admin token
	// do not allow the request (403); on the remote admin API, a valid
	// admin token whose scope does not grant it.
	CodeForbidden = "forbidden"
	// CodeNotFound: no such endpoint, route, metadata key or object (404).
	CodeNotFound = "not_found"
	// CodeMethodNotAllowed: the path exists under other methods, listed in
	// the Allow header (405).
	CodeMethodNotAllowed = "method_not_allowed"
	// CodeRequestTimeout: the request body did not arrive in time (408).
	CodeRequestTimeout = "request_timeout"
	// CodeConflict: an admin update's expect_version is not the current
	// version (409).
	CodeConflict = "conflict"
	// CodeBodyTooLarge: the request body exceeds the socket's limit (413).
	CodeBodyTooLarge = "body_too_large"
	// CodeRateLimited: the caller (a uid on the agent, an admin token on
	// the remote admin API) is over its rate; see Retry-After (429).
	CodeRateLimited = "rate_limited"
	// CodeInternal: the server failed (500).
	CodeInternal = "internal_error"
	// CodeReloadFailed: a reload was refused and the running configuration
	// kept (500).
	CodeReloadFailed = "reload_failed"
	// CodeBadGateway: a proxied upstream failed or answered unacceptably
	// (502).
	CodeBadGateway = "bad_gateway"
	// CodeUpstreamUnavailable: what the answer needs (the issuer, the
	// machine's metadata, the state store) is out of reach for now; retry
	// later (503).
	CodeUpstreamUnavailable = "upstream_unavailable"
	// CodeUpstreamTimeout: a proxied upstream did not answer in time (504).
	CodeUpstreamTimeout = "upstream_timeout"
)
