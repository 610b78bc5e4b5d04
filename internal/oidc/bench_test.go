package oidc_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"strings"
	"testing"

	"github.com/go-jose/go-jose/v4"

	"github.com/wicket-sh/wicket/internal/oidc"
)

// BenchmarkSign measures minting a token the way the issuer does: signer from
// the snapshot, claims encoded, signed, serialized. Compare with
// BenchmarkBareSign (the minting target is 0.85x its rate for ES256, docs/performance.md).
func BenchmarkSign(b *testing.B) {
	for _, alg := range oidc.Algs {
		b.Run(string(alg), func(b *testing.B) {
			set, err := oidc.NewKeySet([]*oidc.Key{mustKey(b, alg, t0, 0)})
			if err != nil {
				b.Fatal(err)
			}
			c := claimsFor("https://id.example/acme", "acme", t0, "sts.amazonaws.com")
			b.ReportAllocs()
			for b.Loop() {
				k, err := set.Signer(alg, t0)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := oidc.Sign(k, c); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkBareSign is the reference: go-jose signing the same payload with a
// prebuilt signer and the same headers, and nothing else.
func BenchmarkBareSign(b *testing.B) {
	for _, alg := range oidc.Algs {
		b.Run(string(alg), func(b *testing.B) {
			k := mustKey(b, alg, t0, 0)
			tok, err := oidc.Sign(k, claimsFor("https://id.example/acme", "acme", t0, "sts.amazonaws.com"))
			if err != nil {
				b.Fatal(err)
			}
			jws, err := jose.ParseSigned(tok, []jose.SignatureAlgorithm{jose.SignatureAlgorithm(alg)})
			if err != nil {
				b.Fatal(err)
			}
			payload := jws.UnsafePayloadWithoutVerification()
			s, err := jose.NewSigner(
				jose.SigningKey{Algorithm: jose.SignatureAlgorithm(alg), Key: jose.JSONWebKey{Key: k.Private, KeyID: k.ID}},
				(&jose.SignerOptions{}).WithType("JWT"),
			)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				jws, err := s.Sign(payload)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := jws.CompactSerialize(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkRawSign is the floor under both: the standard library's
// signature of the same signing input's SHA-256, nothing else.
func BenchmarkRawSign(b *testing.B) {
	for _, alg := range oidc.Algs {
		b.Run(string(alg), func(b *testing.B) {
			k := mustKey(b, alg, t0, 0)
			tok, err := oidc.Sign(k, claimsFor("https://id.example/acme", "acme", t0, "sts.amazonaws.com"))
			if err != nil {
				b.Fatal(err)
			}
			input := tok[:strings.LastIndexByte(tok, '.')]
			b.ReportAllocs()
			for b.Loop() {
				d := sha256.Sum256([]byte(input))
				switch p := k.Private.(type) {
				case *ecdsa.PrivateKey:
					_, err = ecdsa.SignASN1(rand.Reader, p, d[:])
				case *rsa.PrivateKey:
					_, err = rsa.SignPKCS1v15(rand.Reader, p, crypto.SHA256, d[:])
				}
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
