package oidctoken

import (
	"net/http/httptest"
	"strings"
	"testing"
)

// strictAud is parseTokenRequest without the fast path.
func strictAud(body string) (string, bool) {
	r := httptest.NewRequest("POST", "/v1/tokens/oidc", strings.NewReader(body))
	b := []byte(body)
	if _, ok := fastAud(b); ok {
		// Force the slow path by adding insignificant whitespace.
		r = httptest.NewRequest("POST", "/v1/tokens/oidc", strings.NewReader(" "+body))
	}
	return parseTokenRequest(r)
}

// FuzzFastAud checks the fast path never accepts what the strict decoder
// refuses, and returns the same audience when both accept.
func FuzzFastAud(f *testing.F) {
	for _, s := range []string{`{"aud":"sts.amazonaws.com"}`, `{"aud":"a b"}`, `{"aud":"a\"b"}`, `{"aud":"\u0041"}`,
		`{"aud":""}`, `{"aud":"x","y":1}`, `{"aud":"` + strings.Repeat("a", 257) + `"}`, `{"aud":"é"}`, `{"aud":"a\\b"}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		fast, ok := fastAud([]byte(body))
		if !ok {
			return
		}
		slow, sok := strictAud(body)
		if !sok || slow != fast {
			t.Fatalf("fast path accepted %q as %q; strict decoder says %q, %v", body, fast, slow, sok)
		}
	})
}

func TestFastAud(t *testing.T) {
	for body, want := range map[string]bool{
		`{"aud":"sts.amazonaws.com"}`: true,
		`{"aud":"a b"}`:               false,
		`{"aud":"a\\b"}`:              false,
		`{"aud":""}`:                  false,
		`{ "aud":"x"}`:                false,
		`{"aud":"x"} `:                false,
	} {
		if _, ok := fastAud([]byte(body)); ok != want {
			t.Errorf("fastAud(%s) = %v, want %v", body, ok, want)
		}
	}
}
