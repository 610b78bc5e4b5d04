package oidc_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/wicket-sh/wicket/internal/oidc"
)

func TestSign_HeaderAndAudienceShape(t *testing.T) {
	for _, alg := range oidc.Algs {
		k := mustKey(t, alg, t0, 0)
		for _, tc := range []struct {
			aud  []string
			want string // JSON of the aud claim
		}{
			{[]string{"one"}, `"one"`},
			{[]string{"one", "two"}, `["one","two"]`},
		} {
			tok := mustSign(t, k, claimsFor("https://id.example/a", "a", t0, tc.aud...))
			jws, err := jose.ParseSigned(tok, []jose.SignatureAlgorithm{jose.SignatureAlgorithm(alg)})
			if err != nil {
				t.Fatal(err)
			}
			h := jws.Signatures[0].Protected
			if h.KeyID != k.ID || h.Algorithm != string(alg) || h.ExtraHeaders["typ"] != "JWT" {
				t.Errorf("%s header: kid=%q alg=%q typ=%v", alg, h.KeyID, h.Algorithm, h.ExtraHeaders["typ"])
			}
			payload, err := jws.Verify(k.Private.Public())
			if err != nil {
				t.Fatal(err)
			}
			var claims map[string]json.RawMessage
			json.Unmarshal(payload, &claims)
			if got := string(claims["aud"]); got != tc.want {
				t.Errorf("%s aud = %s, want %s", alg, got, tc.want)
			}
			if string(claims["nbf"]) != string(claims["iat"]) {
				t.Errorf("zero NotBefore: nbf %s, want iat %s", claims["nbf"], claims["iat"])
			}
		}
	}
}

func TestSign_RefusesIncompleteClaims(t *testing.T) {
	k := mustKey(t, oidc.ES256, t0, 0)
	for name, mutate := range map[string]func(*oidc.Claims){
		"no issuer":        func(c *oidc.Claims) { c.Issuer = "" },
		"no subject":       func(c *oidc.Claims) { c.Subject = "" },
		"no jti":           func(c *oidc.Claims) { c.ID = "" },
		"no audience":      func(c *oidc.Claims) { c.Audience = nil },
		"bad audience":     func(c *oidc.Claims) { c.Audience = []string{"a b"} },
		"no iat":           func(c *oidc.Claims) { c.IssuedAt = time.Time{} },
		"exp before iat":   func(c *oidc.Claims) { c.Expiry = c.IssuedAt.Add(-time.Second) },
		"exp equal to iat": func(c *oidc.Claims) { c.Expiry = c.IssuedAt },
	} {
		c := claimsFor("https://id.example/a", "a", t0, "aud")
		mutate(&c)
		if tok, err := oidc.Sign(k, c); err == nil {
			t.Errorf("%s: signed %s", name, tok)
		}
	}
}

// A JWT-SVID carries sub, aud, exp, iat and jti and nothing else (no iss,
// none of an OIDC token's org/app/machine claims), and incomplete claims
// are refused.
func TestSignJWTSVID_OnlySVIDClaims(t *testing.T) {
	k := mustKey(t, oidc.ES256, t0, 0)
	good := oidc.JWTSVIDClaims{Subject: "spiffe://td.test/app/a/workload/w", Audience: []string{"db"}, IssuedAt: t0, Expiry: t0.Add(time.Minute), ID: "j"}
	tok, err := oidc.SignJWTSVID(k, good)
	if err != nil {
		t.Fatal(err)
	}
	jws, err := jose.ParseSigned(tok, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		t.Fatal(err)
	}
	payload, err := jws.Verify(k.Private.Public())
	if err != nil {
		t.Fatal(err)
	}
	var claims map[string]json.RawMessage
	json.Unmarshal(payload, &claims)
	if len(claims) != 5 || claims["sub"] == nil || claims["aud"] == nil || claims["exp"] == nil || claims["iat"] == nil || claims["jti"] == nil {
		t.Errorf("claims %s, want exactly sub, aud, exp, iat, jti", payload)
	}
	for name, mutate := range map[string]func(*oidc.JWTSVIDClaims){
		"no subject":     func(c *oidc.JWTSVIDClaims) { c.Subject = "" },
		"no jti":         func(c *oidc.JWTSVIDClaims) { c.ID = "" },
		"no audience":    func(c *oidc.JWTSVIDClaims) { c.Audience = nil },
		"no iat":         func(c *oidc.JWTSVIDClaims) { c.IssuedAt = time.Time{} },
		"exp before iat": func(c *oidc.JWTSVIDClaims) { c.Expiry = c.IssuedAt.Add(-time.Second) },
	} {
		c := good
		mutate(&c)
		if tok, err := oidc.SignJWTSVID(k, c); err == nil {
			t.Errorf("%s: signed %s", name, tok)
		}
	}
}

func TestValidateAudience(t *testing.T) {
	many := make([]string, oidc.MaxAudiences+1)
	for i := range many {
		many[i] = "a"
	}
	for _, tc := range []struct {
		name string
		aud  []string
		ok   bool
	}{
		{"one", []string{"sts.amazonaws.com"}, true},
		{"url", []string{"https://vault.example:8200/v1/auth/jwt?x=1&y=~"}, true},
		{"max count", many[:oidc.MaxAudiences], true},
		{"max length", []string{strings.Repeat("x", oidc.MaxAudienceLen)}, true},
		{"none", nil, false},
		{"empty list", []string{}, false},
		{"too many", many, false},
		{"empty value", []string{"a", ""}, false},
		{"too long", []string{strings.Repeat("x", oidc.MaxAudienceLen+1)}, false},
		{"space", []string{"x y"}, false},
		{"tab", []string{"x\ty"}, false},
		{"newline", []string{"x\ny"}, false},
		{"NUL", []string{"x\x00"}, false},
		{"DEL", []string{"x\x7f"}, false},
		{"non-ASCII", []string{"café"}, false},
	} {
		err := oidc.ValidateAudience(tc.aud)
		if tc.ok != (err == nil) {
			t.Errorf("%s: err = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil && !errors.Is(err, oidc.ErrInvalidAudience) {
			t.Errorf("%s: %v does not wrap ErrInvalidAudience", tc.name, err)
		}
		// Errors reach callers; they must not echo what the caller sent.
		for _, a := range tc.aud {
			if err != nil && len(a) > 1 && strings.Contains(err.Error(), a) {
				t.Errorf("%s: error %q echoes the input", tc.name, err)
			}
		}
	}
}

func TestSubject(t *testing.T) {
	if got, err := oidc.Subject("acme", "web", "m1"); err != nil || got != "acme:web:m1" {
		t.Errorf("Subject = %q, %v", got, err)
	}
	// "a:b"+"c" and "a"+"b:c" would collide, handing one machine another's trust.
	for _, parts := range [][3]string{{"a:b", "c", "d"}, {"a", "b:c", "d"}, {"a", "b", "c:d"}, {"", "b", "c"}, {"a", "", "c"}, {"a", "b", ""}} {
		if got, err := oidc.Subject(parts[0], parts[1], parts[2]); err == nil {
			t.Errorf("Subject%q = %q, want error", parts, got)
		}
	}
}

func TestIssuerURL(t *testing.T) {
	for _, base := range []string{"https://id.example", "https://id.example/", "https://id.example//"} {
		if got := oidc.IssuerURL(base, "acme"); got != "https://id.example/acme" {
			t.Errorf("IssuerURL(%q) = %q", base, got)
		}
	}
}
