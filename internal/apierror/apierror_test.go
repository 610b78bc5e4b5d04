package apierror

import (
	"net/http/httptest"
	"testing"
)

func TestCanonicalPath(t *testing.T) {
	for p, want := range map[string]bool{
		"/": true, "/v1/metadata": true, "/v1/metadata/tags/a.b": true, "/v1/.well-known/x": true,
		"": false, "v1": false, "/v1/../admin": false, "/v1/..": false, "/./v1": false,
		"//v1": false, "/v1//x": false, "/v1/\x00": false, "/v1/.": false,
	} {
		if got := CanonicalPath(p); got != want {
			t.Errorf("CanonicalPath(%q) = %v, want %v", p, got, want)
		}
	}
}

func TestWrite(t *testing.T) {
	w := httptest.NewRecorder()
	Write(w, 403, CodeForbidden, "forbidden")
	if w.Code != 403 || w.Body.String() != "{\"error\":\"forbidden\",\"code\":\"forbidden\"}\n" || w.Header().Get("Content-Type") != "application/json" {
		t.Errorf("got %d %q %v", w.Code, w.Body.String(), w.Header())
	}
}
