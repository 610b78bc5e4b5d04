package oidc_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/wicket-sh/wicket/internal/oidc"
)

func TestGenerateKey(t *testing.T) {
	for _, alg := range oidc.Algs {
		k := mustKey(t, alg, t0, time.Minute)
		if !regexp.MustCompile(`^[A-Za-z0-9_-]{20,}$`).MatchString(k.ID) {
			t.Errorf("%s: kid %q is not a long URL-safe token", alg, k.ID)
		}
		if k.Alg != alg || k.State != oidc.StatePending || !k.CreatedAt.Equal(t0) || !k.ActivateAt.Equal(t0.Add(time.Minute)) {
			t.Errorf("%s: got %+v", alg, k)
		}
		if mustKey(t, alg, t0, 0).State != oidc.StateActive {
			t.Errorf("%s: a key without prepublish delay should be active", alg)
		}
	}
	if _, err := oidc.GenerateKey("HS256", t0, 0); err == nil {
		t.Error("HS256 key generated")
	}
	if _, err := oidc.GenerateKey(oidc.ES256, t0, -time.Second); err == nil {
		t.Error("negative prepublish accepted")
	}
}

func TestMarshalPrivateRoundtrip(t *testing.T) {
	for _, alg := range oidc.Algs {
		k := mustKey(t, alg, t0, 0)
		der, err := k.MarshalPrivate()
		if err != nil {
			t.Fatal(err)
		}
		priv, err := oidc.UnmarshalPrivate(der)
		if err != nil {
			t.Fatalf("%s: %v", alg, err)
		}
		if !priv.(interface{ Equal(crypto.PrivateKey) bool }).Equal(k.Private) {
			t.Fatalf("%s: roundtrip changed the key", alg)
		}
		// The restored key signs tokens the original public key verifies.
		restored := *k
		restored.Private = priv
		tok := mustSign(t, &restored, claimsFor("https://id.example/a", "a", t0, "aud"))
		jws, err := jose.ParseSigned(tok, []jose.SignatureAlgorithm{jose.SignatureAlgorithm(alg)})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := jws.Verify(k.Private.Public()); err != nil {
			t.Errorf("%s: token from restored key: %v", alg, err)
		}
	}
}

func TestUnmarshalPrivate_ForeignKeysRefused(t *testing.T) {
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsa1024, _ := rsa.GenerateKey(rand.Reader, 1024)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	for name, key := range map[string]any{"P-384": p384, "RSA-1024": rsa1024, "Ed25519": ed} {
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := oidc.UnmarshalPrivate(der); err == nil {
			t.Errorf("%s key accepted", name)
		}
	}
	if _, err := oidc.UnmarshalPrivate([]byte("not a key")); err == nil {
		t.Error("garbage accepted")
	}
}

func TestNewKeySet_Invalid(t *testing.T) {
	es := mustKey(t, oidc.ES256, t0, 0)
	with := func(f func(k *oidc.Key)) *oidc.Key {
		c := *es
		f(&c)
		return &c
	}
	for name, keys := range map[string][]*oidc.Key{
		"duplicate kid":           {es, with(func(k *oidc.Key) {})},
		"empty kid":               {with(func(k *oidc.Key) { k.ID = "" })},
		"alg label mismatch":      {with(func(k *oidc.Key) { k.Alg = oidc.RS256 })},
		"unknown state":           {with(func(k *oidc.Key) { k.State = "revoked" })},
		"retired without time":    {with(func(k *oidc.Key) { k.State = oidc.StateRetired })},
		"active with retire time": {with(func(k *oidc.Key) { k.RetiredAt = t0 })},
		"no private key":          {with(func(k *oidc.Key) { k.Private = nil })},
	} {
		if _, err := oidc.NewKeySet(keys); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestKeySet_IsASnapshot(t *testing.T) {
	k := mustKey(t, oidc.ES256, t0, 0)
	set, err := oidc.NewKeySet([]*oidc.Key{k})
	if err != nil {
		t.Fatal(err)
	}
	k.ID, k.ActivateAt = "changed", t0.Add(time.Hour)
	got, err := set.Signer(oidc.ES256, t0)
	if err != nil || got.ID == "changed" {
		t.Errorf("caller's change reached the snapshot: %v %v", got, err)
	}
}

// A copied Key with a changed kid must not sign with the cached signer's kid.
func TestSign_CopiedKeyUsesItsOwnKid(t *testing.T) {
	set, err := oidc.NewKeySet([]*oidc.Key{mustKey(t, oidc.ES256, t0, 0)})
	if err != nil {
		t.Fatal(err)
	}
	k, err := set.Signer(oidc.ES256, t0) // carries the cached signer
	if err != nil {
		t.Fatal(err)
	}
	c := *k
	c.ID = "other"
	jws, err := jose.ParseSigned(mustSign(t, &c, claimsFor("https://x/a", "a", t0, "aud")), []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		t.Fatal(err)
	}
	if kid := jws.Signatures[0].Protected.KeyID; kid != "other" {
		t.Errorf("kid = %q, want other", kid)
	}
}

func TestSigner(t *testing.T) {
	active := mustKey(t, oidc.RS256, t0, 0)
	newer := mustKey(t, oidc.RS256, t0.Add(time.Minute), 0)
	pending := mustKey(t, oidc.ES256, t0, time.Hour)
	set, err := oidc.NewKeySet([]*oidc.Key{active, pending, newer})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		alg  oidc.Alg
		now  time.Time
		want *oidc.Key // nil: ErrNoSigningKey
	}{
		{oidc.RS256, t0, active}, // newer is not active yet
		{oidc.RS256, t0.Add(time.Minute), newer},
		{oidc.ES256, t0.Add(time.Hour - time.Nanosecond), nil}, // never before ActivateAt
		{oidc.ES256, t0.Add(time.Hour), pending},               // promoted by time
		{"PS256", t0, nil},
	} {
		got, err := set.Signer(tc.alg, tc.now)
		switch {
		case tc.want == nil && !errors.Is(err, oidc.ErrNoSigningKey):
			t.Errorf("Signer(%s, %v) = %v, %v; want ErrNoSigningKey", tc.alg, tc.now, got, err)
		case tc.want != nil && (err != nil || got.ID != tc.want.ID):
			t.Errorf("Signer(%s, %v) = %v, %v; want key %s", tc.alg, tc.now, got, err, tc.want.ID)
		}
	}
}

// Rotating again while a key is still pending must leave exactly one signer
// at every instant, and pull forward retirements the shorter delay overtakes.
func TestRotate_Twice(t *testing.T) {
	a := mustKey(t, oidc.ES256, t0, 0)
	rs := mustKey(t, oidc.RS256, t0, time.Minute) // other alg: untouched but relabelled
	keys, b, err := oidc.Rotate([]*oidc.Key{a, rs}, oidc.ES256, t0, 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	keys, c, err := oidc.Rotate(keys, oidc.ES256, t0.Add(2*time.Minute), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	byID := map[string]*oidc.Key{}
	for _, k := range keys {
		byID[k.ID] = k
	}
	if got := byID[a.ID].RetiredAt; !got.Equal(c.ActivateAt) {
		t.Errorf("a retires at %v, want pulled forward to %v", got, c.ActivateAt)
	}
	if got := byID[b.ID]; got.State != oidc.StateRetired || !got.RetiredAt.Equal(c.ActivateAt) {
		t.Errorf("b = %s at %v, want retired at %v", got.State, got.RetiredAt, c.ActivateAt)
	}
	if got := byID[rs.ID]; got.State != oidc.StateActive || !got.RetiredAt.IsZero() {
		t.Errorf("RS256 key = %s at %v, want relabelled active, not retired", got.State, got.RetiredAt)
	}
	set, err := oidc.NewKeySet(keys)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		now  time.Time
		want string
	}{
		{t0.Add(2 * time.Minute), a.ID},
		{c.ActivateAt.Add(-time.Nanosecond), a.ID},
		{c.ActivateAt, c.ID},
		{t0.Add(time.Hour), c.ID}, // b, though activating later, never signs
	} {
		if k, err := set.Signer(oidc.ES256, tc.now); err != nil || k.ID != tc.want {
			t.Errorf("signer at %v = %v, %v; want %s", tc.now, k, err, tc.want)
		}
	}
}

func TestJWKS_NoPrivateMaterial(t *testing.T) {
	var keys []*oidc.Key
	for _, alg := range oidc.Algs {
		keys = append(keys, mustKey(t, alg, t0, 0))
	}
	keys, _, err := oidc.Rotate(keys, oidc.RS256, t0, time.Minute) // adds a pending key, retires one
	if err != nil {
		t.Fatal(err)
	}
	set, err := oidc.NewKeySet(keys)
	if err != nil {
		t.Fatal(err)
	}
	jwks := set.JWKS(t0.Add(time.Minute), time.Hour)
	if len(jwks.Keys) != 3 {
		t.Fatalf("JWKS has %d keys, want 3 (pending, active, retired in grace)", len(jwks.Keys))
	}
	raw, err := json.Marshal(jwks)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct{ Keys []map[string]any }
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	for _, k := range doc.Keys {
		for _, f := range []string{"d", "p", "q", "dp", "dq", "qi", "oth", "k"} {
			if _, ok := k[f]; ok {
				t.Errorf("key %v publishes private field %q", k["kid"], f)
			}
		}
		for _, f := range []string{"kty", "kid", "alg", "use"} {
			if _, ok := k[f]; !ok {
				t.Errorf("key %v lacks %q", k["kid"], f)
			}
		}
	}
	for _, k := range jwks.Keys {
		if !k.IsPublic() {
			t.Errorf("key %s is not public", k.KeyID)
		}
	}
	if !slices.ContainsFunc(doc.Keys, func(k map[string]any) bool { return k["kty"] == "EC" }) {
		t.Error("no EC key published")
	}
}

// KeySet and cached signers are shared by every request; run under -race.
func TestKeySet_ConcurrentUse(t *testing.T) {
	var keys []*oidc.Key
	for _, alg := range oidc.Algs {
		keys = append(keys, mustKey(t, alg, t0, 0))
	}
	set, err := oidc.NewKeySet(keys)
	if err != nil {
		t.Fatal(err)
	}
	c := claimsFor("https://id.example/a", "a", t0, "aud")
	t.Run("group", func(t *testing.T) {
		for i := range 8 {
			t.Run("", func(t *testing.T) {
				t.Parallel()
				alg := oidc.Algs[i%len(oidc.Algs)]
				for range 20 {
					k, err := set.Signer(alg, t0)
					if err != nil {
						t.Error(err)
						return
					}
					if _, err := oidc.Sign(k, c); err != nil {
						t.Error(err)
					}
					set.JWKS(t0, time.Hour)
				}
			})
		}
	})
}

func TestKey_StringHidesMaterial(t *testing.T) {
	k := mustKey(t, oidc.RS256, t0, 0)
	got := fmt.Sprintf("%v %+v %s", k, k, k)
	if want := "RS256 key " + k.ID + " (active)"; !strings.HasPrefix(got, want) {
		t.Errorf("%%v = %q, want %q", got, want)
	}
	if n := k.Private.(*rsa.PrivateKey).D.String(); strings.Contains(got, n[:20]) {
		t.Error("private exponent printed")
	}
}
