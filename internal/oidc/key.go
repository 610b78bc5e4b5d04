// Package oidc holds the mechanics of wicket's per-org OIDC providers: signing
// keys and their rotation, JWT signing, and the JWKS and discovery documents.
//
// It keeps no state of its own. The issuer persists keys (metadata fields plus
// the sealed output of [Key.MarshalPrivate]), builds an immutable [KeySet]
// snapshot from them, and swaps snapshots atomically when keys change.
package oidc

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

// Alg is a JWS signing algorithm wicket signs with.
type Alg string

// Supported algorithms: RS256 because every relying party accepts it, ES256
// because it is small and fast.
const (
	RS256 Alg = "RS256"
	ES256 Alg = "ES256"
)

// Algs lists the supported algorithms, in the order discovery advertises them.
var Algs = []Alg{RS256, ES256}

// KeyState is the stored lifecycle label of a key. Transitions take effect by
// time (ActivateAt, RetiredAt); see [Key.StateAt].
type KeyState string

// Key lifecycle: pending keys are published but do not sign yet, active keys
// sign, retired keys are published (for a grace period) but do not sign.
const (
	StatePending KeyState = "pending"
	StateActive  KeyState = "active"
	StateRetired KeyState = "retired"
)

// Key is one signing key of an org. Treat a Key as immutable once built:
// [Rotate] returns modified copies rather than changing keys in place, because
// keys are shared by KeySet snapshots that are read concurrently.
type Key struct {
	ID         string // kid: random, URL-safe
	Alg        Alg
	State      KeyState
	CreatedAt  time.Time
	ActivateAt time.Time     // CreatedAt + prepublish delay; never signs before this
	RetiredAt  time.Time     // zero unless State is retired; stops signing at this instant
	Private    crypto.Signer // *rsa.PrivateKey (RS256, >= 2048 bits) or *ecdsa.PrivateKey (ES256, P-256)

	// signer caches the key ready to sign (set by NewKeySet on its own
	// copy): its protected header encoded once, so minting a token does
	// not encode it again.
	signer *cachedSigner
}

type cachedSigner struct {
	id   string
	alg  Alg
	priv crypto.Signer
	s    *jwsKey
}

// GenerateKey creates a pending key for alg that signs from now+prepublish.
// The delay lets relying parties fetch the new JWKS before any token needs it;
// a zero delay (bootstrapping an org's first key) makes the key active at once.
func GenerateKey(alg Alg, now time.Time, prepublish time.Duration) (*Key, error) {
	if prepublish < 0 {
		return nil, fmt.Errorf("oidc: negative prepublish delay %v", prepublish)
	}
	var priv crypto.Signer
	var err error
	switch alg {
	case RS256:
		priv, err = rsa.GenerateKey(rand.Reader, 2048)
	case ES256:
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	default:
		return nil, fmt.Errorf("oidc: unsupported algorithm %q", alg)
	}
	if err != nil {
		return nil, fmt.Errorf("oidc: generate %s key: %w", alg, err)
	}
	k := &Key{
		ID:         rand.Text(), // 26 chars of base32: random and URL-safe
		Alg:        alg,
		State:      StatePending,
		CreatedAt:  now,
		ActivateAt: now.Add(prepublish),
		Private:    priv,
	}
	if prepublish == 0 {
		k.State = StateActive
	}
	return k, nil
}

// StateAt reports the key's effective state at now. Time decides, so that
// every replica sharing the stored keys switches signer at the same instant
// without a coordinated write: a key is pending before ActivateAt (whatever
// its label), retired from RetiredAt on, and active in between.
func (k *Key) StateAt(now time.Time) KeyState {
	switch {
	case k.State == StateRetired && !now.Before(k.RetiredAt):
		return StateRetired
	case now.Before(k.ActivateAt):
		return StatePending
	default:
		return StateActive
	}
}

// String names the key without its material, so a Key that reaches a log
// line or an error through %v prints as its id.
func (k *Key) String() string {
	return fmt.Sprintf("%s key %s (%s)", k.Alg, k.ID, k.State)
}

// MarshalPrivate returns the private key as PKCS#8 DER. The caller seals it
// before it touches storage.
func (k *Key) MarshalPrivate() ([]byte, error) {
	if _, err := algOf(k.Private); err != nil {
		return nil, fmt.Errorf("oidc: marshal key %s: %w", k.ID, err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k.Private)
	if err != nil {
		return nil, fmt.Errorf("oidc: marshal key %s: %w", k.ID, err)
	}
	return der, nil
}

// UnmarshalPrivate parses PKCS#8 DER from [Key.MarshalPrivate]. It accepts only
// key types wicket signs with, so a tampered or foreign key fails here rather
// than at the first token.
func UnmarshalPrivate(der []byte) (crypto.Signer, error) {
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("oidc: parse private key: %w", err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("oidc: parse private key: unsupported type %T", k)
	}
	if _, err := algOf(s); err != nil {
		return nil, fmt.Errorf("oidc: parse private key: %w", err)
	}
	return s, nil
}

// algOf returns the algorithm a private key signs with, rejecting anything
// outside RSA >= 2048 and P-256.
func algOf(priv crypto.Signer) (Alg, error) {
	switch p := priv.(type) {
	case *rsa.PrivateKey:
		if p.N == nil || p.N.BitLen() < 2048 {
			return "", errors.New("RSA key shorter than 2048 bits")
		}
		return RS256, nil
	case *ecdsa.PrivateKey:
		if p.Curve != elliptic.P256() {
			return "", errors.New("ECDSA key not on P-256")
		}
		return ES256, nil
	default:
		return "", fmt.Errorf("unsupported private key type %T", priv)
	}
}

// validate checks that the key's fields agree with each other, so a corrupt
// stored key is refused when a snapshot is built, not when it signs.
func (k *Key) validate() error {
	if k.ID == "" {
		return errors.New("oidc: key without id")
	}
	switch k.State {
	case StatePending, StateActive:
		if !k.RetiredAt.IsZero() {
			return fmt.Errorf("oidc: key %s: %s with a retirement time", k.ID, k.State)
		}
	case StateRetired:
		if k.RetiredAt.IsZero() {
			return fmt.Errorf("oidc: key %s: retired without a retirement time", k.ID)
		}
	default:
		return fmt.Errorf("oidc: key %s: unknown state %q", k.ID, k.State)
	}
	return k.checkPrivate()
}

// checkPrivate checks that Private is a key wicket signs with, for Alg.
func (k *Key) checkPrivate() error {
	alg, err := algOf(k.Private)
	if err != nil {
		return fmt.Errorf("oidc: key %s: %w", k.ID, err)
	}
	if alg != k.Alg {
		return fmt.Errorf("oidc: key %s: %s key labelled %q", k.ID, alg, k.Alg)
	}
	return nil
}

// prepare builds and caches the key's signer.
func (k *Key) prepare() error {
	s, err := newJWSKey(k)
	if err != nil {
		return err
	}
	k.signer = &cachedSigner{id: k.ID, alg: k.Alg, priv: k.Private, s: s}
	return nil
}

// jws returns the cached signer if it still matches the key's fields (a
// caller may have copied the Key and changed one), else builds a fresh one.
func (k *Key) jws() (*jwsKey, error) {
	// Comparing priv is safe: the cached dynamic type is a pointer, and
	// interfaces of different dynamic types compare unequal without panicking.
	if c := k.signer; c != nil && c.id == k.ID && c.alg == k.Alg && c.priv == k.Private {
		return c.s, nil
	}
	return newJWSKey(k)
}
