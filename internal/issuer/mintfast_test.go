package issuer

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/wicket-sh/wicket/api"
)

// strictTokenRequest is the handler's slow path: what it answers for body
// when the fast one does not recognize it.
func strictTokenRequest(body []byte) (aud []string, ttl string, err error) {
	var req api.IssuerTokenRequest
	if len(strings.TrimSpace(string(body))) > 0 {
		dec := json.NewDecoder(strings.NewReader(string(body)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			return nil, "", err
		}
	}
	aud, err = parseAud(req.Aud)
	return aud, req.TTL, err
}

func FuzzFastTokenRequest(f *testing.F) {
	for _, s := range []string{`{"aud":"sts.amazonaws.com"}`, `{"aud":"a"}`, `{"aud":""}`, `{"aud":"a\"b"}`, `{"aud":"a\\u0041"}`,
		`{"aud":"a b"}`, `{"aud":["a"]}`, `{"aud":"a","ttl":"5m"}`, `{ "aud":"a"}`, `{"aud":"é"}`, `{"aud":"<&>"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		got, ok := fastTokenRequest(body)
		if !ok {
			return
		}
		aud, ttl, err := strictTokenRequest(body)
		if err != nil || len(aud) != 1 || aud[0] != got || ttl != "" {
			t.Fatalf("%q: fast path gives %q, strict decoder %q ttl %q (%v)", body, got, aud, ttl, err)
		}
	})
}

func TestFastTokenRequest_OnlyTheAgentsShape(t *testing.T) {
	if aud, ok := fastTokenRequest([]byte(`{"aud":"sts.amazonaws.com"}`)); !ok || aud != "sts.amazonaws.com" {
		t.Errorf("agent's body: %q %v", aud, ok)
	}
	for _, s := range []string{``, `{}`, `{"aud":""}`, `{"aud":"a\"}`, `{"aud":"a\\"}`, `{"aud":"a b"}`, `{"aud":["a"]}`, `{"aud":"a","ttl":"5m"}`, `{"aud":"é"}`} {
		if aud, ok := fastTokenRequest([]byte(s)); ok {
			t.Errorf("%s: taken by the fast path as %q", s, aud)
		}
	}
}

func TestWriteTokenReply_SameAsEncoder(t *testing.T) {
	tok := "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJ4In0.c2lnLV8"
	for _, exp := range []time.Time{
		time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC),
		time.Date(1999, 12, 31, 23, 59, 59, 0, time.UTC),
		time.Unix(1, 0).UTC(),
	} {
		var want bytes.Buffer
		json.NewEncoder(&want).Encode(api.TokenReply{Token: tok, ExpiresAt: exp})
		w := httptest.NewRecorder()
		writeTokenReply(w, tok, exp)
		if w.Body.String() != want.String() {
			t.Errorf("reply\n got %s\nwant %s", w.Body, want.String())
		}
		if w.Code != http.StatusOK || w.Header().Get("Content-Type") != "application/json" || w.Header().Get("Cache-Control") != "no-store" {
			t.Errorf("status %d, headers %v", w.Code, w.Header())
		}
	}
	if !jwsSafe(tok) || jwsSafe(`a"b`) || jwsSafe("a\\b") || jwsSafe("a<b") {
		t.Error("jwsSafe")
	}
}

func TestReadRequestBody_AsReadAll(t *testing.T) {
	for _, tc := range []struct {
		body string
		cl   int64
		want string
	}{
		{`{"aud":"x"}`, 11, `{"aud":"x"}`},
		{`{"aud":"x"}`, -1, `{"aud":"x"}`},
		{``, 0, ``},
		{strings.Repeat("a", 100), 100, strings.Repeat("a", 64)}, // over max: cut at max, as before
	} {
		r := httptest.NewRequest("POST", "/v1/tokens/oidc", strings.NewReader(tc.body))
		r.ContentLength = tc.cl
		got, err := readRequestBody(r, 64)
		if err != nil || string(got) != tc.want {
			t.Errorf("%q (length %d): %q %v", tc.body, tc.cl, got, err)
		}
	}
}
