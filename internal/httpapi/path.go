package httpapi

import (
	"net/http"
	"reflect"
	"strings"
)

// CanonicalPath reports whether p is an absolute, clean URL path: no dot
// segments, no doubled slashes, no NUL, no backslash, no ';' and no
// segment starting with "..". Servers refuse anything else with a plain 400
// instead of redirecting, because a redirect's Location would echo the
// caller's input, and a path that some server further along normalizes
// differently ("/a/..;/b" is "/b" to Tomcat and Spring) is how allowlists
// are walked around.
func CanonicalPath(p string) bool {
	if p == "" || p[0] != '/' || strings.ContainsAny(p, "\x00\\;") {
		return false
	}
	// Segment by segment without splitting: this runs on every request.
	rest := p[1:]
	for {
		seg, more, found := strings.Cut(rest, "/")
		if seg == "." || strings.HasPrefix(seg, "..") {
			return false
		}
		if !found {
			return true // the last segment may be empty: a trailing slash
		}
		if seg == "" {
			return false // "//" inside the path
		}
		rest = more
	}
}

// EncodedSeparator reports whether the raw request path percent-encodes a
// slash, a backslash, a dot or NUL. Such a path means one thing to us
// (decoded) and may mean another to an upstream; nothing legitimate needs
// them.
func EncodedSeparator(r *http.Request) bool {
	raw := r.RequestURI
	if raw == "" {
		raw = r.URL.EscapedPath()
	}
	if i := strings.IndexByte(raw, '?'); i >= 0 {
		raw = raw[:i]
	}
	raw = strings.ToLower(raw)
	for _, bad := range []string{"%2f", "%5c", "%2e", "%00", "%3b"} {
		if strings.Contains(raw, bad) {
			return true
		}
	}
	return strings.ContainsRune(r.URL.Path, '\\')
}

// redirectType is the type of the handler http.ServeMux hands out when it
// would redirect instead of serving.
var redirectType = reflect.TypeOf(http.RedirectHandler("/", http.StatusTemporaryRedirect))

// MuxPattern returns the pattern of mux that would serve r, or "" when none
// would. A request ServeMux would redirect — to add a trailing slash
// ("/v1/apps/x" for "/v1/apps/{app}/"), to clean its path ("//", "/./"),
// CONNECT included — counts as matching nothing, because the redirect's
// Location and body repeat the caller's path and query (S-errors). Every
// wicket server decides through this function before dispatching to its
// mux, and answers "" with its own 404 (or 405), so none of them ever
// redirects. A handler registered as an http.RedirectHandler is therefore
// never reached either: wicket registers none.
func MuxPattern(mux *http.ServeMux, r *http.Request) string {
	_, pattern := MuxHandler(mux, r)
	return pattern
}

// MuxHandler is MuxPattern with the handler of that pattern (nil when
// none would serve r). A pattern without wildcards needs no path values,
// so its handler may be called directly, sparing the mux's second lookup;
// one with wildcards must be reached through mux.ServeHTTP, which fills
// them in.
func MuxHandler(mux *http.ServeMux, r *http.Request) (http.Handler, string) {
	h, pattern := mux.Handler(r)
	if pattern == "" || reflect.TypeOf(h) == redirectType {
		return nil, ""
	}
	return h, pattern
}

// ValidMethod reports whether m is one of the methods a wicket route or
// policy rule may name: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS.
// CONNECT and TRACE, and anything else, never are.
func ValidMethod(m string) bool {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut,
		http.MethodPatch, http.MethodDelete, http.MethodOptions:
		return true
	}
	return false
}

// AllowedMethods lists, for a 405's Allow header, which of candidates mux
// serves r's path under (through MuxPattern, so a redirect is no match);
// "" when none does, and the answer is a 404.
func AllowedMethods(mux *http.ServeMux, r *http.Request, candidates ...string) string {
	var allow []string
	for _, m := range candidates {
		r2 := r.Clone(r.Context())
		r2.Method = m
		if MuxPattern(mux, r2) != "" {
			allow = append(allow, m)
		}
	}
	return strings.Join(allow, ", ")
}
