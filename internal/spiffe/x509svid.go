package spiffe

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// ErrCSR is wrapped by every refusal of a CSR; its messages never quote
// the CSR's content.
var ErrCSR = errors.New("spiffe: csr refused")

func csrError(reason string) error { return fmt.Errorf("%w: %s", ErrCSR, reason) }

// MaxCSRLen bounds the CSRs SignX509SVID looks at; a P-256 CSR is about
// 300 bytes, an RSA-4096 one under 2 KiB.
const MaxCSRLen = 8 << 10

// ParseCSR parses and checks a CSR for an X.509-SVID and returns the one
// SPIFFE ID it asks for. Refused: a bad signature; any SAN but exactly
// one URI SAN holding a SPIFFE ID (no DNS names, IP or e-mail addresses,
// no second URI); a key other than ECDSA P-256/P-384 or RSA of 2048 bits
// or more. Other requested extensions are ignored: the certificate is
// built from wicket's template, never from the CSR.
func ParseCSR(der []byte) (*x509.CertificateRequest, spiffeid.ID, error) {
	if len(der) == 0 || len(der) > MaxCSRLen {
		return nil, spiffeid.ID{}, csrError("empty or too long")
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, spiffeid.ID{}, csrError("malformed")
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, spiffeid.ID{}, csrError("bad signature")
	}
	switch pub := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if pub.Curve != elliptic.P256() && pub.Curve != elliptic.P384() {
			return nil, spiffeid.ID{}, csrError("unsupported curve")
		}
	case *rsa.PublicKey:
		if pub.N.BitLen() < 2048 {
			return nil, spiffeid.ID{}, csrError("rsa key shorter than 2048 bits")
		}
	default:
		return nil, spiffeid.ID{}, csrError("unsupported key type")
	}
	if len(csr.DNSNames) > 0 || len(csr.EmailAddresses) > 0 || len(csr.IPAddresses) > 0 {
		return nil, spiffeid.ID{}, csrError("SANs other than the SPIFFE ID")
	}
	if len(csr.URIs) != 1 {
		return nil, spiffeid.ID{}, csrError("want exactly one URI SAN")
	}
	id, err := spiffeid.FromURI(csr.URIs[0])
	if err != nil {
		return nil, spiffeid.ID{}, csrError("URI SAN is not a SPIFFE ID")
	}
	return csr, id, nil
}

// SignX509SVID signs csr (checked by ParseCSR) for id with ca: the
// certificate's only SAN is id's URI SAN, key usage per the X.509-SVID
// specification (digitalSignature, keyEncipherment, keyAgreement; not a
// CA; serverAuth and clientAuth), valid from now (backdated a little)
// until notAfter, capped at the CA's own end. It returns the leaf's DER.
func SignX509SVID(ca *CA, csr *x509.CertificateRequest, id spiffeid.ID, now, notAfter time.Time) ([]byte, time.Time, error) {
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	if !notAfter.After(now) {
		return nil, time.Time{}, errors.New("spiffe: svid would end before it starts")
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{Organization: []string{"wicket"}},
		NotBefore:    now.Add(-backdate),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageKeyAgreement,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		// A leaf: it can sign no certificate.
		BasicConstraintsValid: true,
		IsCA:                  false,
		URIs:                  []*url.URL{id.URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, csr.PublicKey, ca.signer())
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("spiffe: sign svid with CA %s: %w", ca.ID, err)
	}
	return der, notAfter, nil
}
