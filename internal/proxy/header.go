package proxy

import (
	"fmt"
	"net/http"
	"net/textproto"
	"strings"
)

// MaxForwardHeaders bounds one allowlist of forwarded request headers.
const MaxForwardHeaders = 64

// DefaultForwardHeaders are the caller's request headers forwarded when a
// route (or the issuer's gateway) names none: content negotiation,
// conditional and range requests, the client's name and a request id. The
// body's length and framing are set by net/http, never copied.
var DefaultForwardHeaders = []string{
	"Accept", "Accept-Language", "Content-Type", "Content-Language",
	"If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since",
	"If-Range", "Range", "User-Agent", "X-Request-Id",
}

// neverForwarded are request headers no allowlist can let through: the
// caller's own credentials (the agent adds the only credential sent),
// what net/http sets itself, hop-by-hop headers (RFC 9110 7.6.1) and the
// headers with which an upstream, or a proxy in front of it, would take
// another method, path or client address than the one checked.
var neverForwarded = map[string]bool{
	// credentials
	"Authorization": true, "Cookie": true, "Cookie2": true,
	// set by net/http (the transport negotiates its own gzip, which the
	// agent decodes to check replies for token material)
	"Host": true, "Content-Length": true, "Accept-Encoding": true, "Expect": true, "Http2-Settings": true,
	// hop-by-hop
	"Connection": true, "Keep-Alive": true, "Te": true, "Trailer": true,
	"Transfer-Encoding": true, "Upgrade": true,
	// forwarding: the client address and the original request
	"Forwarded": true, "Via": true, "X-Real-Ip": true, "True-Client-Ip": true,
	"X-Client-Ip": true, "X-Cluster-Client-Ip": true, "Cf-Connecting-Ip": true,
	"Fastly-Client-Ip": true, "X-Original-Host": true, "X-Host": true,
	// method and path overrides
	"X-Http-Method-Override": true, "X-Http-Method": true, "X-Method-Override": true,
	"X-Original-Method": true, "X-Original-Url": true, "X-Original-Uri": true,
	"X-Rewrite-Url": true,
}

// neverForwardedPrefix are lower-case name prefixes never forwarded:
// Proxy-* (Proxy-Authorization, Proxy-Connection), X-Forwarded-* and the
// identity the issuer's gateway asserts, X-Wicket-*.
var neverForwardedPrefix = []string{"proxy-", "x-forwarded", "x-wicket"}

// NeverForwarded reports whether a request header named name is dropped
// whatever an allowlist says: any name containing '_' (WSGI and CGI
// servers map '-' and '_' both to '_', so X_Wicket_Machine_Id would pass
// for X-Wicket-Machine-Id), any name that is X-Wicket-*, X-Forwarded-* or
// Proxy-* in any case, credentials, hop-by-hop headers, what net/http sets
// itself, and the method, path and client-address override family.
func NeverForwarded(name string) bool {
	if strings.ContainsRune(name, '_') {
		return true
	}
	if neverForwarded[textproto.CanonicalMIMEHeaderKey(name)] {
		return true
	}
	lower := strings.ToLower(name)
	for _, p := range neverForwardedPrefix {
		if strings.HasPrefix(lower, p) {
			return true
		}
	}
	return false
}

// HeaderAllowlist is the set of the caller's request headers forwarded
// upstream. It is immutable; the zero value forwards nothing.
type HeaderAllowlist struct {
	names map[string]bool // canonical names
	list  []string        // canonical names, as configured
}

// CompileHeaders validates an allowlist of request header names; nil means
// DefaultForwardHeaders, an empty non-nil list forwards none. Names match
// case-insensitively. A name that is not an HTTP token, or one that is
// never forwarded (NeverForwarded), is an error: an allowlist that
// silently did not apply would be a surprise.
func CompileHeaders(names []string) (*HeaderAllowlist, error) {
	if names == nil {
		names = DefaultForwardHeaders
	}
	if len(names) > MaxForwardHeaders {
		return nil, fmt.Errorf("%d headers, at most %d", len(names), MaxForwardHeaders)
	}
	a := &HeaderAllowlist{names: make(map[string]bool, len(names))}
	for _, n := range names {
		switch {
		case n == "" || len(n) > 128 || !validToken(n):
			return nil, fmt.Errorf("header %q: want a header name (letters, digits and !#$%%&'*+-.^`|~, at most 128)", n)
		case NeverForwarded(n):
			return nil, fmt.Errorf("header %q is never forwarded (names with '_', credentials, hop-by-hop, Host and framing, Proxy-*, Forwarded, Via, X-Forwarded-*, X-Wicket-*, client-address and method or URL override headers)", n)
		}
		c := textproto.CanonicalMIMEHeaderKey(n)
		if !a.names[c] {
			a.names[c] = true
			a.list = append(a.list, c)
		}
	}
	return a, nil
}

// Names returns the allowlisted names, canonicalized, in configured order.
func (a *HeaderAllowlist) Names() []string {
	if a == nil {
		return nil
	}
	return append([]string(nil), a.list...)
}

// Filter returns the headers of src that are forwarded: allowlisted, not
// NeverForwarded, and not named by src's Connection header (which makes
// them hop-by-hop).
func (a *HeaderAllowlist) Filter(src http.Header) http.Header {
	dst := http.Header{}
	if a == nil {
		return dst
	}
	listed := connectionListed(src)
	for k, vs := range src {
		c := textproto.CanonicalMIMEHeaderKey(k)
		if !a.names[c] || listed[c] || NeverForwarded(k) {
			continue
		}
		dst[c] = append(dst[c], vs...)
	}
	return dst
}

// validToken reports whether s is an RFC 9110 token.
func validToken(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}
