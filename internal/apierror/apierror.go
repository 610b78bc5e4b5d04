// Package apierror writes the error responses wicket's sockets give their
// callers (S-errors): a generic message and a stable code, never the
// caller's input, a file path, an upstream body or an internal error. The
// details belong in the server log, next to the peer that caused them.
package apierror

import (
	"net/http"
	"reflect"
	"strconv"
	"strings"

	"github.com/wicket-sh/wicket/api"
)

// Write sends {"error":msg,"code":code} (an api.ErrorReply) with status.
// code is one of the api.Code constants; msg must be a constant from the
// program, never derived from the request.
func Write(w http.ResponseWriter, status int, code, msg string) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	body := `{"error":` + strconv.Quote(msg) + `,"code":` + strconv.Quote(code) + "}\n"
	w.WriteHeader(status)
	w.Write([]byte(body))
}

// Common responses.
func NotFound(w http.ResponseWriter) { Write(w, http.StatusNotFound, api.CodeNotFound, "not found") }

// MethodNotAllowed answers 405 with the allowed methods.
func MethodNotAllowed(w http.ResponseWriter, allow string) {
	w.Header().Set("Allow", allow)
	Write(w, http.StatusMethodNotAllowed, api.CodeMethodNotAllowed, "method not allowed")
}

// Forbidden answers 403.
func Forbidden(w http.ResponseWriter) { Write(w, http.StatusForbidden, api.CodeForbidden, "forbidden") }

// BadRequest answers 400.
func BadRequest(w http.ResponseWriter) {
	Write(w, http.StatusBadRequest, api.CodeBadRequest, "bad request")
}

// Internal answers 500.
func Internal(w http.ResponseWriter) {
	Write(w, http.StatusInternalServerError, api.CodeInternal, "internal error")
}

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
	for i, seg := range strings.Split(p[1:], "/") {
		if seg == "." || strings.HasPrefix(seg, "..") {
			return false
		}
		if seg == "" && i != strings.Count(p[1:], "/") {
			return false // "//" inside the path
		}
	}
	return true
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
	h, pattern := mux.Handler(r)
	if reflect.TypeOf(h) == redirectType {
		return ""
	}
	return pattern
}
