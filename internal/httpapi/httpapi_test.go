package httpapi

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/wicket-sh/wicket/api"
)

func TestCanonicalPath(t *testing.T) {
	for p, want := range map[string]bool{
		"/": true, "/v1/metadata": true, "/v1/metadata/tags/a.b": true, "/v1/.well-known/x": true,
		"": false, "v1": false, "/v1/../admin": false, "/v1/..": false, "/./v1": false,
		"//v1": false, "/v1//x": false, "/v1/\x00": false, "/v1/.": false,
		"/v1/apps/a/..;/b": false, "/v1/x;jsessionid=1": false, "/v1/..x": false, "/v1/a\\b": false, "/v1/": true,
	} {
		if got := CanonicalPath(p); got != want {
			t.Errorf("CanonicalPath(%q) = %v, want %v", p, got, want)
		}
	}
}

func TestWrite(t *testing.T) {
	w := httptest.NewRecorder()
	Write(w, 403, api.CodeForbidden, "forbidden")
	if w.Code != 403 || w.Body.String() != "{\"error\":\"forbidden\",\"code\":\"forbidden\"}\n" || w.Header().Get("Content-Type") != "application/json" {
		t.Errorf("got %d %q %v", w.Code, w.Body.String(), w.Header())
	}
}

func TestEncodedSeparator(t *testing.T) {
	for raw, want := range map[string]bool{
		"/v1/apps/a/machines": false,
		"/v1/apps/a%2fb":      true,
		"/v1/apps/a%2Fb":      true,
		"/v1/apps/%2e%2e/b":   true,
		"/v1/apps/a%5cb":      true,
		"/v1/apps/a%00":       true,
		"/v1/apps/a%3bx":      true,
		"/v1/apps/a?x=%2f":    false, // the query is not the path
	} {
		r := httptest.NewRequest("GET", "http://wicket"+raw, nil)
		if got := EncodedSeparator(r); got != want {
			t.Errorf("EncodedSeparator(%s) = %v, want %v", raw, got, want)
		}
	}
}

// TestMuxPattern_RedirectIsNoMatch: whatever ServeMux would redirect
// (missing trailing slash, unclean path, CONNECT) is reported as no match,
// so a server never sends a Location built from the caller's input; real
// matches keep their pattern.
func TestMuxPattern_RedirectIsNoMatch(t *testing.T) {
	mux := http.NewServeMux()
	noop := http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})
	mux.Handle("/v1/apps/{app}/", noop)
	mux.Handle("GET /{org}/.well-known/", noop)
	mux.Handle("GET /v1/health", noop)
	for _, tc := range []struct{ method, target, want string }{
		{"GET", "/v1/apps/x?q=<script>", ""},
		{"CONNECT", "/v1/apps/x", ""},
		{"GET", "/dev/.well-known", ""},
		{"GET", "//v1/health", ""},
		{"GET", "/v1/./health", ""},
		{"GET", "/v1/nothing", ""},
		{"GET", "/v1/apps/x/machines", "/v1/apps/{app}/"},
		{"GET", "/dev/.well-known/jwks.json", "GET /{org}/.well-known/"},
		{"GET", "/v1/health?x=1", "GET /v1/health"},
	} {
		r := httptest.NewRequest(tc.method, tc.target, nil)
		if got := MuxPattern(mux, r); got != tc.want {
			t.Errorf("%s %s: pattern %q, want %q", tc.method, tc.target, got, tc.want)
		}
		if tc.want == "" {
			continue
		}
		// Sanity: the mux itself does not redirect what matched.
		w := httptest.NewRecorder()
		mux.ServeHTTP(w, r)
		if w.Code/100 == 3 {
			t.Errorf("%s %s: matched but mux answered %d", tc.method, tc.target, w.Code)
		}
	}
}
