package spiffe

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// CA key lifecycle, as for the OIDC signing keys: a pending CA is in the
// bundle but signs nothing yet, an active one signs, a retired one stays
// in the bundle (for the grace period) and signs nothing.
const (
	StatePending = "pending"
	StateActive  = "active"
	StateRetired = "retired"
)

// CAAlg is the only CA key algorithm: ECDSA P-256.
const CAAlg = "ES256"

// CA is one certificate authority of a trust domain. Treat it as
// immutable: Rotate returns changed copies.
type CA struct {
	ID         string // random, safe to log
	State      string
	CreatedAt  time.Time
	ActivateAt time.Time // signs from this instant
	RetiredAt  time.Time // zero unless retired; signs nothing from this instant
	Cert       *x509.Certificate
	Key        *ecdsa.PrivateKey
}

// Format prints only the id and the certificate's validity: a CA that
// reaches a log line or an error must not carry its private key.
func (c *CA) Format(f fmt.State, _ rune) {
	fmt.Fprintf(f, "spiffe.CA{ID:%s, State:%s}", c.ID, c.State)
}

// StateAt is the CA's effective state at now.
func (c *CA) StateAt(now time.Time) string {
	switch {
	case !c.RetiredAt.IsZero() && !now.Before(c.RetiredAt):
		return StateRetired
	case now.Before(c.ActivateAt):
		return StatePending
	}
	return StateActive
}

// NewCA creates a self-signed P-256 root for td, valid for ttl from now,
// that signs from now+prepublish (0: at once, for a trust domain's first
// CA, which nobody can trust before it exists).
func NewCA(td spiffeid.TrustDomain, now time.Time, ttl, prepublish time.Duration) (*CA, error) {
	if prepublish < 0 || ttl <= prepublish {
		return nil, errors.New("spiffe: CA ttl must be positive and longer than the prepublish delay")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("spiffe: CA key: %w", err)
	}
	id := rand.Text()[:16]
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{Organization: []string{"wicket"}, CommonName: td.Name() + " CA " + id},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(ttl),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		// It signs leaves only: a stolen SVID key cannot mint more.
		MaxPathLenZero: true,
		URIs:           []*url.URL{td.ID().URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("spiffe: CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("spiffe: CA certificate: %w", err)
	}
	state := StateActive
	if prepublish > 0 {
		state = StatePending
	}
	return &CA{ID: id, State: state, CreatedAt: now, ActivateAt: now.Add(prepublish), Cert: cert, Key: key}, nil
}

// backdate is how far before now certificates start, so a relying party
// whose clock is slightly behind the issuer's accepts them.
const backdate = 10 * time.Second

func serial() *big.Int {
	b := make([]byte, 16)
	rand.Read(b)
	b[0] &= 0x7f // positive
	return new(big.Int).SetBytes(b)
}

// Marshal returns the CA's private key and certificate for sealing:
// a 4-byte length, the PKCS#8 key, the certificate's DER.
func (c *CA) Marshal() ([]byte, error) {
	key, err := x509.MarshalPKCS8PrivateKey(c.Key)
	if err != nil {
		return nil, fmt.Errorf("spiffe: marshal CA %s: %w", c.ID, err)
	}
	out := binary.BigEndian.AppendUint32(nil, uint32(len(key)))
	out = append(out, key...)
	clear(key)
	return append(out, c.Cert.Raw...), nil
}

// UnmarshalCA is the inverse of Marshal for the CA's key and certificate;
// the caller fills in the lifecycle fields from the stored record. The
// key must be the certificate's.
func UnmarshalCA(b []byte) (*ecdsa.PrivateKey, *x509.Certificate, error) {
	if len(b) < 4 || uint64(len(b)-4) < uint64(binary.BigEndian.Uint32(b)) {
		return nil, nil, errors.New("spiffe: malformed CA record")
	}
	n := binary.BigEndian.Uint32(b)
	k, err := x509.ParsePKCS8PrivateKey(b[4 : 4+n])
	if err != nil {
		return nil, nil, fmt.Errorf("spiffe: CA key: %w", err)
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok || key.Curve != elliptic.P256() {
		return nil, nil, errors.New("spiffe: CA key is not ECDSA P-256")
	}
	// The certificate keeps referring to the bytes it was parsed from, and
	// callers wipe b (it held the key): parse a copy.
	cert, err := x509.ParseCertificate(bytes.Clone(b[4+n:]))
	if err != nil {
		return nil, nil, fmt.Errorf("spiffe: CA certificate: %w", err)
	}
	if pub, ok := cert.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(key.Public()) {
		return nil, nil, errors.New("spiffe: CA key does not match its certificate")
	}
	return key, cert, nil
}

// Signer returns the CA that signs at now: the active one created last.
func Signer(cas []*CA, now time.Time) (*CA, error) {
	var best *CA
	for _, c := range cas {
		if c.StateAt(now) == StateActive && now.Before(c.Cert.NotAfter) && (best == nil || c.CreatedAt.After(best.CreatedAt)) {
			best = c
		}
	}
	if best == nil {
		return nil, errors.New("spiffe: no active CA")
	}
	return best, nil
}

// Published returns the CAs that belong in the bundle at now: every CA
// not yet expired, and not retired longer than grace ago.
func Published(cas []*CA, now time.Time, grace time.Duration) []*CA {
	var out []*CA
	for _, c := range cas {
		if !c.Expired(now, grace) {
			out = append(out, c)
		}
	}
	return out
}

// Rotate returns the CAs to store after adding next, a CA for td that
// signs from now+prepublish: every CA still signing then is retired at
// that instant, so the bundle carries the new root before any SVID needs
// it and the old one until the SVIDs it signed have expired.
func Rotate(cas []*CA, td spiffeid.TrustDomain, now time.Time, ttl, prepublish time.Duration) (changed []*CA, next *CA, err error) {
	next, err = NewCA(td, now, ttl, prepublish)
	if err != nil {
		return nil, nil, err
	}
	if prepublish == 0 {
		// Signs at once: nothing to pre-publish to.
		next.State = StateActive
	}
	for _, c := range cas {
		if c.RetiredAt.IsZero() || c.RetiredAt.After(next.ActivateAt) {
			cp := *c
			cp.State, cp.RetiredAt = StateRetired, next.ActivateAt
			changed = append(changed, &cp)
		}
	}
	return append(changed, next), next, nil
}

// Expired reports whether c can be deleted at now: retired longer than
// grace ago, or past its certificate's end.
func (c *CA) Expired(now time.Time, grace time.Duration) bool {
	return !now.Before(c.Cert.NotAfter) || (!c.RetiredAt.IsZero() && !now.Before(c.RetiredAt.Add(grace)))
}

// signer is the CA's key as a crypto.Signer (for x509.CreateCertificate).
func (c *CA) signer() crypto.Signer { return c.Key }
