package oidc

import (
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// claimsCases are payloads whose encoding must match json.Marshal's:
// every escape encoding/json makes, one audience and several, optional
// claims present and absent.
var claimsCases = []wireClaims{
	wireFor("https://id.example/acme", []string{"sts.amazonaws.com"}, "acme", "web", "m1", "ams", "registry.example/web:1", "sha256:abc"),
	wireFor("https://id.example/acme", []string{"a", "b", "c"}, "acme", "web", "m1", "", "", ""),
	wireFor(`q"uote\back<>&`, []string{"\x00\x01\b\f\n\r\t\x1f\x7f"}, "é日本", "\u2028\u2029", "\xff\xfe bad utf8 \xc3", "tab\there", "", "x"),
	{Issuer: "i", Subject: "s"},
}

func wireFor(iss string, aud []string, org, app, name, region, image, digest string) wireClaims {
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	return wireClaims{
		Issuer: iss, Subject: org + ":" + app + ":" + name, Audience: jwt.Audience(aud),
		Expiry: jwt.NewNumericDate(now.Add(10 * time.Minute)), NotBefore: jwt.NewNumericDate(now), IssuedAt: jwt.NewNumericDate(now),
		ID: "jti-1", Org: org, App: app, MachineID: "mach-1", MachineName: name,
		Region: region, Image: image, ImageDigest: digest,
	}
}

func TestAppendClaims_SameAsJSONMarshal(t *testing.T) {
	for i, w := range claimsCases {
		want, err := json.Marshal(w)
		if err != nil {
			t.Fatal(err)
		}
		if got := appendClaims(nil, &w); string(got) != string(want) {
			t.Errorf("case %d:\n got %s\nwant %s", i, got, want)
		}
	}
}

// FuzzAppendClaims holds the hand-written encoder to json.Marshal, byte for
// byte, for any string in any claim.
func FuzzAppendClaims(f *testing.F) {
	for _, w := range claimsCases {
		var aud string
		if len(w.Audience) > 0 {
			aud = w.Audience[0]
		}
		f.Add(w.Issuer, aud, w.Org, w.Region, int64(1893553445))
	}
	f.Fuzz(func(t *testing.T, a, b, c, d string, n int64) {
		w := wireFor(a, []string{b}, c, d, a+b, d, c, b)
		w.Expiry = (*jwt.NumericDate)(&n)
		for _, aud := range [][]string{{b}, {a, b, c}} {
			w.Audience = aud
			want, err := json.Marshal(w)
			if err != nil {
				t.Fatal(err)
			}
			if got := appendClaims(nil, &w); string(got) != string(want) {
				t.Fatalf("\n got %s\nwant %s", got, want)
			}
		}
	})
}

func TestJWSHeader_AsGoJoseWritesIt(t *testing.T) {
	for _, alg := range Algs {
		k, err := GenerateKey(alg, time.Now(), 0)
		if err != nil {
			t.Fatal(err)
		}
		s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.SignatureAlgorithm(alg), Key: jose.JSONWebKey{Key: k.Private, KeyID: k.ID}},
			(&jose.SignerOptions{}).WithType("JWT"))
		if err != nil {
			t.Fatal(err)
		}
		jws, err := s.Sign([]byte("{}"))
		if err != nil {
			t.Fatal(err)
		}
		ref, err := jws.CompactSerialize()
		if err != nil {
			t.Fatal(err)
		}
		j, err := newJWSKey(k)
		if err != nil {
			t.Fatal(err)
		}
		if want, _, _ := strings.Cut(ref, "."); string(j.header) != want {
			t.Errorf("%s header %s, go-jose writes %s", alg, j.header, want)
		}
	}
}

// Every signature go-jose can verify, whatever the lengths of r and s: a
// few thousand P-256 signatures include r or s with leading zero bytes.
func TestJWSSign_ES256VerifiesForAnyRS(t *testing.T) {
	k, err := GenerateKey(ES256, time.Now(), 0)
	if err != nil {
		t.Fatal(err)
	}
	j, err := newJWSKey(k)
	if err != nil {
		t.Fatal(err)
	}
	n := 3000
	if testing.Short() {
		n = 300
	}
	pub := k.Private.Public().(*ecdsa.PublicKey)
	for i := range n {
		payload := []byte(`{"n":` + big.NewInt(int64(i)).String() + `}`)
		tok, err := j.sign(payload)
		if err != nil {
			t.Fatal(err)
		}
		parts := strings.Split(tok, ".")
		sig, err := base64.RawURLEncoding.DecodeString(parts[2])
		if err != nil || len(sig) != es256SigLen {
			t.Fatalf("signature %q: %v, %d bytes", parts[2], err, len(sig))
		}
		digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
		r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
		if !ecdsa.Verify(pub, digest[:], r, s) {
			t.Fatalf("token %d does not verify", i)
		}
		if i%100 == 0 {
			parsed, err := jose.ParseSigned(tok, []jose.SignatureAlgorithm{jose.ES256})
			if err != nil {
				t.Fatal(err)
			}
			if got, err := parsed.Verify(pub); err != nil || string(got) != string(payload) {
				t.Fatalf("go-jose: %v, payload %s", err, got)
			}
		}
	}
}

func TestDERToRS(t *testing.T) {
	der := func(r, s *big.Int) []byte {
		b, err := asn1.Marshal(struct{ R, S *big.Int }{r, s})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	max := new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 256), big.NewInt(1))
	for _, tc := range []struct {
		r, s *big.Int
	}{
		{big.NewInt(1), big.NewInt(2)},
		{max, max},
		{new(big.Int).Lsh(big.NewInt(1), 255), big.NewInt(0x80)}, // a leading 0x00 in DER
		{new(big.Int).Lsh(big.NewInt(1), 200), max},
	} {
		var rs [64]byte
		if !derToRS(der(tc.r, tc.s), rs[:]) {
			t.Fatalf("r=%x s=%x refused", tc.r, tc.s)
		}
		if new(big.Int).SetBytes(rs[:32]).Cmp(tc.r) != 0 || new(big.Int).SetBytes(rs[32:]).Cmp(tc.s) != 0 {
			t.Errorf("r=%x s=%x gave %x", tc.r, tc.s, rs)
		}
	}
	tooBig := new(big.Int).Lsh(big.NewInt(1), 256)
	good := der(big.NewInt(5), big.NewInt(6))
	for name, bad := range map[string][]byte{
		"empty":          nil,
		"not a sequence": append([]byte{0x31}, good[1:]...),
		"wrong length":   append(append([]byte{}, good...), 0),
		"r over 32":      der(tooBig, big.NewInt(1)),
		"negative":       der(big.NewInt(-1), big.NewInt(1)),
		"one integer":    {0x30, 0x03, 0x02, 0x01, 0x05},
		"truncated":      good[:len(good)-1],
	} {
		var rs [64]byte
		if derToRS(bad, rs[:]) {
			t.Errorf("%s: accepted %x", name, bad)
		}
	}
}
