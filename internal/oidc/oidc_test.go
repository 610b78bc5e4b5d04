package oidc_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gooidc "github.com/coreos/go-oidc/v3/oidc"
	"github.com/google/go-cmp/cmp"

	"github.com/wicket-sh/wicket/internal/oidc"
)

// t0 is a fixed start so tests never depend on the wall clock.
var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

// issuer is a real HTTP server on loopback serving oidc.Handler for several
// orgs, with a settable clock and per-org key snapshots swapped atomically,
// the way the issuer package does it.
type issuer struct {
	srv  *httptest.Server
	mu   sync.Mutex
	now  time.Time
	sets map[string]*atomic.Pointer[oidc.KeySet]
}

const grace = time.Hour

func newIssuer(t *testing.T, orgs ...string) *issuer {
	t.Helper()
	is := &issuer{now: t0, sets: map[string]*atomic.Pointer[oidc.KeySet]{}}
	for _, org := range orgs {
		is.sets[org] = new(atomic.Pointer[oidc.KeySet])
	}
	h := &oidc.Handler{
		Keys: func(org string) *oidc.KeySet {
			if p := is.sets[org]; p != nil {
				return p.Load()
			}
			return nil
		},
		Settings: func() oidc.PublishSettings {
			return oidc.PublishSettings{Grace: grace, MaxAge: time.Minute}
		},
		Now: is.clock,
	}
	is.srv = httptest.NewServer(h)
	t.Cleanup(is.srv.Close)
	h.PublicURL = is.srv.URL + "/" // trailing slash must not leak into issuers
	return is
}

func (is *issuer) clock() time.Time {
	is.mu.Lock()
	defer is.mu.Unlock()
	return is.now
}

func (is *issuer) setClock(now time.Time) {
	is.mu.Lock()
	defer is.mu.Unlock()
	is.now = now
}

func (is *issuer) url(org string) string { return oidc.IssuerURL(is.srv.URL, org) }

func (is *issuer) setKeys(t *testing.T, org string, keys []*oidc.Key) *oidc.KeySet {
	t.Helper()
	set, err := oidc.NewKeySet(keys)
	if err != nil {
		t.Fatal(err)
	}
	is.sets[org].Store(set)
	return set
}

// verify checks token the way a relying party does: discovery, then JWKS,
// through go-oidc. A fresh provider each time, so its key cache never hides
// what the JWKS currently says.
func verify(t *testing.T, issuerURL, aud string, now time.Time, token string) (*gooidc.IDToken, error) {
	t.Helper()
	p, err := gooidc.NewProvider(t.Context(), issuerURL)
	if err != nil {
		t.Fatalf("discovery for %s: %v", issuerURL, err)
	}
	v := p.Verifier(&gooidc.Config{ClientID: aud, Now: func() time.Time { return now }})
	return v.Verify(t.Context(), token)
}

func claimsFor(issuerURL, org string, now time.Time, aud ...string) oidc.Claims {
	sub, err := oidc.Subject(org, "web", "m1")
	if err != nil {
		panic(err)
	}
	return oidc.Claims{
		Issuer: issuerURL, Subject: sub, Audience: aud,
		IssuedAt: now, Expiry: now.Add(10 * time.Minute), ID: "tok-" + org,
		Org: org, App: "web", MachineID: "mach-123", MachineName: "m1",
		Region: "ams", Image: "registry.example/web:1", ImageDigest: "sha256:abc",
	}
}

func mustSign(t *testing.T, k *oidc.Key, c oidc.Claims) string {
	t.Helper()
	tok, err := oidc.Sign(k, c)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func mustKey(t testing.TB, alg oidc.Alg, now time.Time, prepublish time.Duration) *oidc.Key {
	t.Helper()
	k, err := oidc.GenerateKey(alg, now, prepublish)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestGoOIDCVerifies(t *testing.T) {
	is := newIssuer(t, "a", "b")
	keys := map[string]map[oidc.Alg]*oidc.Key{}
	for _, org := range []string{"a", "b"} {
		keys[org] = map[oidc.Alg]*oidc.Key{}
		var list []*oidc.Key
		for _, alg := range oidc.Algs {
			k := mustKey(t, alg, t0, 0)
			keys[org][alg] = k
			list = append(list, k)
		}
		is.setKeys(t, org, list)
	}

	for _, alg := range oidc.Algs {
		t.Run(string(alg), func(t *testing.T) {
			const aud = "sts.amazonaws.com"
			c := claimsFor(is.url("a"), "a", t0, aud, "vault")
			tok := mustSign(t, keys["a"][alg], c)

			idt, err := verify(t, is.url("a"), aud, t0.Add(time.Minute), tok)
			if err != nil {
				t.Fatalf("verify: %v", err)
			}
			type custom struct {
				JTI         string `json:"jti"`
				Org         string `json:"org"`
				App         string `json:"app"`
				MachineID   string `json:"machine_id"`
				MachineName string `json:"machine_name"`
				Region      string `json:"region"`
				Image       string `json:"image"`
				ImageDigest string `json:"image_digest"`
			}
			var got custom
			if err := idt.Claims(&got); err != nil {
				t.Fatal(err)
			}
			want := custom{c.ID, "a", "web", "mach-123", "m1", "ams", c.Image, c.ImageDigest}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("custom claims (-want +got):\n%s", diff)
			}
			if idt.Issuer != is.url("a") || idt.Subject != "a:web:m1" ||
				!cmp.Equal(idt.Audience, []string{aud, "vault"}) ||
				!idt.Expiry.Equal(c.Expiry) || !idt.IssuedAt.Equal(c.IssuedAt) {
				t.Errorf("standard claims: iss=%q sub=%q aud=%q exp=%v iat=%v", idt.Issuer, idt.Subject, idt.Audience, idt.Expiry, idt.IssuedAt)
			}

			// Each case is a token a relying party must refuse.
			stranger := mustKey(t, alg, t0, 0)
			forged := claimsFor(is.url("b"), "b", t0, aud)
			// want is part of go-oidc's message, to be sure each case fails
			// for its own reason and not an incidental one.
			for _, tc := range []struct {
				name, issuer, aud string
				now               time.Time
				token             string
				want              string
			}{
				{"wrong audience", is.url("a"), "someone-else", t0, tok, "expected audience"},
				// Keys are per org, so org a's token fails at org b on its
				// signature; the issuer check is proven on its own below.
				{"org a token at org b", is.url("b"), aud, t0, tok, "failed to verify signature"},
				{"iss a, signed by org b's key", is.url("b"), aud, t0, mustSign(t, keys["b"][alg], c), "issued by a different provider"},
				{"iss b, signed by org a's key", is.url("b"), aud, t0, mustSign(t, keys["a"][alg], forged), "failed to verify signature"},
				{"expired", is.url("a"), aud, c.Expiry.Add(time.Second), tok, "token is expired"},
				{"key not in JWKS", is.url("a"), aud, t0, mustSign(t, stranger, c), "failed to verify signature"},
			} {
				_, err := verify(t, tc.issuer, tc.aud, tc.now, tc.token)
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Errorf("%s: go-oidc said %v, want an error containing %q", tc.name, err, tc.want)
				}
			}
		})
	}
}

func TestRotation(t *testing.T) {
	const (
		aud        = "aud"
		prepublish = 10 * time.Minute
	)
	is := newIssuer(t, "a")
	old := mustKey(t, oidc.ES256, t0, 0)
	keys := []*oidc.Key{old}
	set := is.setKeys(t, "a", keys)

	signAt := func(set *oidc.KeySet, now time.Time) (*oidc.Key, string) {
		t.Helper()
		k, err := set.Signer(oidc.ES256, now)
		if err != nil {
			t.Fatal(err)
		}
		return k, mustSign(t, k, claimsFor(is.url("a"), "a", now, aud))
	}
	published := func(now time.Time) []string {
		t.Helper()
		is.setClock(now)
		resp, err := http.Get(is.url("a") + oidc.JWKSPath)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var jwks struct{ Keys []struct{ Kid string } }
		if err := json.NewDecoder(resp.Body).Decode(&jwks); err != nil {
			t.Fatal(err)
		}
		var kids []string
		for _, k := range jwks.Keys {
			kids = append(kids, k.Kid)
		}
		return kids
	}

	_, before := signAt(set, t0)

	t1 := t0.Add(time.Minute)
	keys, nk, err := oidc.Rotate(keys, oidc.ES256, t1, prepublish)
	if err != nil {
		t.Fatal(err)
	}
	if old.State != oidc.StateActive || !old.RetiredAt.IsZero() {
		t.Errorf("Rotate modified its input: %+v", old)
	}
	activate := t1.Add(prepublish)
	if !nk.ActivateAt.Equal(activate) || keys[0].State != oidc.StateRetired || !keys[0].RetiredAt.Equal(activate) {
		t.Fatalf("after rotate: new activates %v, old %s at %v; want both at %v", nk.ActivateAt, keys[0].State, keys[0].RetiredAt, activate)
	}
	set = is.setKeys(t, "a", keys)

	// Prepublished: in the JWKS at once, but the old key signs until ActivateAt.
	if diff := cmp.Diff([]string{nk.ID, old.ID}, published(t1)); diff != "" {
		t.Errorf("JWKS right after rotate (-want +got):\n%s", diff)
	}
	for _, now := range []time.Time{t1, activate.Add(-time.Nanosecond)} {
		if k, _ := signAt(set, now); k.ID != old.ID {
			t.Errorf("signer at %v = %s, want old key %s (new one is still pending)", now, k.ID, old.ID)
		}
	}
	_, lastOld := signAt(set, activate.Add(-time.Second))

	// Hand-over: the new key signs from ActivateAt on, and verifies.
	k, fresh := signAt(set, activate)
	if k.ID != nk.ID {
		t.Fatalf("signer at ActivateAt = %s, want new key %s", k.ID, nk.ID)
	}
	if _, err := verify(t, is.url("a"), aud, activate, fresh); err != nil {
		t.Errorf("token of new key: %v", err)
	}

	// Grace: tokens the old key signed keep verifying after it retired.
	is.setClock(activate.Add(5 * time.Minute))
	if _, err := verify(t, is.url("a"), aud, activate.Add(5*time.Minute), lastOld); err != nil {
		t.Errorf("in-flight token of retired key during grace: %v", err)
	}
	if _, err := verify(t, is.url("a"), aud, t0.Add(5*time.Minute), before); err != nil {
		t.Errorf("pre-rotation token during grace: %v", err)
	}

	// After grace the retired key is unpublished and its tokens die, even
	// one whose exp is still ahead.
	gone := activate.Add(grace)
	long := claimsFor(is.url("a"), "a", t0, aud)
	long.Expiry = gone.Add(time.Hour)
	longTok := mustSign(t, old, long)
	if got := published(gone.Add(-time.Nanosecond)); len(got) != 2 {
		t.Errorf("JWKS just before grace ends: %v, want both keys", got)
	}
	if _, err := verify(t, is.url("a"), aud, gone.Add(-time.Second), longTok); err != nil {
		t.Errorf("old key just before grace ends: %v", err)
	}
	if diff := cmp.Diff([]string{nk.ID}, published(gone)); diff != "" {
		t.Errorf("JWKS after grace (-want +got):\n%s", diff)
	}
	if _, err := verify(t, is.url("a"), aud, gone, longTok); err == nil || !strings.Contains(err.Error(), "failed to verify signature") {
		t.Errorf("token of a key retired beyond grace: %v, want a signature failure", err)
	}

	if got := oidc.Prune(keys, gone.Add(-time.Nanosecond), grace); len(got) != 2 {
		t.Errorf("Prune before grace ended kept %d keys, want 2", len(got))
	}
	pruned := oidc.Prune(keys, gone, grace)
	if len(pruned) != 1 || pruned[0].ID != nk.ID {
		t.Errorf("Prune after grace = %v, want only %s", pruned, nk.ID)
	}
	if len(keys) != 2 {
		t.Errorf("Prune modified its input")
	}
}

func TestHandlerErrors(t *testing.T) {
	is := newIssuer(t, "a", "empty")
	is.setKeys(t, "a", []*oidc.Key{mustKey(t, oidc.ES256, t0, 0)})
	for _, tc := range []struct {
		method, path string
		status       int
		code         string
	}{
		{"GET", "/a" + oidc.DiscoveryPath, 200, ""},
		{"HEAD", "/a" + oidc.JWKSPath, 200, ""},
		{"GET", "/nope" + oidc.JWKSPath, 404, "not_found"},
		{"GET", "/empty" + oidc.JWKSPath, 404, "not_found"}, // org without a snapshot yet
		{"GET", "/a/.well-known/other", 404, "not_found"},
		{"GET", "/a/b" + oidc.JWKSPath, 404, "not_found"},
		{"GET", "//.well-known/jwks", 404, "not_found"},
		{"POST", "/a" + oidc.JWKSPath, 405, "method_not_allowed"},
	} {
		req, _ := http.NewRequestWithContext(t.Context(), tc.method, is.srv.URL+tc.path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var body struct{ Code string }
		if tc.method != "HEAD" {
			json.NewDecoder(resp.Body).Decode(&body)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.status || body.Code != tc.code {
			t.Errorf("%s %s = %d %q, want %d %q", tc.method, tc.path, resp.StatusCode, body.Code, tc.status, tc.code)
		}
		if tc.status == 200 {
			if cc := resp.Header.Get("Cache-Control"); cc != "public, max-age=60" {
				t.Errorf("%s %s: Cache-Control %q", tc.method, tc.path, cc)
			}
		}
	}
}

func TestDiscovery(t *testing.T) {
	got, err := json.Marshal(oidc.Discovery("https://id.example/acme"))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	json.Unmarshal(got, &m)
	want := map[string]any{
		"issuer":                                "https://id.example/acme",
		"jwks_uri":                              "https://id.example/acme/.well-known/jwks",
		"response_types_supported":              []any{"id_token"},
		"subject_types_supported":               []any{"public"},
		"id_token_signing_alg_values_supported": []any{"RS256", "ES256"},
		"scopes_supported":                      []any{"openid"},
		"claims_supported": []any{"iss", "sub", "aud", "exp", "nbf", "iat", "jti",
			"org", "app", "machine_id", "machine_name", "region", "image", "image_digest"},
	}
	if diff := cmp.Diff(want, m); diff != "" {
		t.Errorf("discovery (-want +got):\n%s", diff)
	}
}
