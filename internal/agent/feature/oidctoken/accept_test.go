package oidctoken

import (
	"mime"
	"net/http/httptest"
	"strings"
	"testing"
)

// parsedWantsJSON is wantsJSON without the shortcut: every part parsed.
func parsedWantsJSON(values []string) bool {
	for _, v := range values {
		for _, part := range strings.Split(v, ",") {
			mt, _, err := mime.ParseMediaType(strings.TrimSpace(part))
			if err == nil && mt == "application/json" {
				return true
			}
		}
	}
	return false
}

var acceptSeeds = []string{"*/*", "application/json", "Application/JSON", "application/jwt, application/json;q=0.5",
	"text/html", "application/jwt", "application/json+x", " APPLICATION/Json ; charset=utf-8", "json", "application/jso n", ""}

// FuzzWantsJSON holds the shortcut (no "json", no parse) to the parsing
// it skips.
func FuzzWantsJSON(f *testing.F) {
	for _, s := range acceptSeeds {
		f.Add(s, "*/*")
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		r := httptest.NewRequest("POST", "/v1/tokens/oidc", nil)
		r.Header["Accept"] = []string{a, b}
		if got, want := wantsJSON(r), parsedWantsJSON([]string{a, b}); got != want {
			t.Fatalf("Accept %q %q: %v, parsing every part gives %v", a, b, got, want)
		}
	})
}

func TestWantsJSON(t *testing.T) {
	for _, s := range acceptSeeds {
		r := httptest.NewRequest("POST", "/v1/tokens/oidc", nil)
		r.Header.Set("Accept", s)
		if got, want := wantsJSON(r), parsedWantsJSON([]string{s}); got != want {
			t.Errorf("Accept %q: %v, want %v", s, got, want)
		}
	}
}
