package spiffe

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

var (
	t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	td = spiffeid.RequireTrustDomainFromString("acme.test")
	me = spiffeid.RequireFromString("spiffe://acme.test/app/web/machine/web-1")
)

func newCSR(t *testing.T, key crypto.Signer, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func p256(t *testing.T) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// An SVID the CA signs verifies with go-spiffe against the CA's bundle,
// names only the SPIFFE ID, and has the X.509-SVID key usage.
func TestSignX509SVID_VerifiesWithGoSPIFFE(t *testing.T) {
	ca, err := NewCA(td, t0, 24*time.Hour, 0)
	if err != nil {
		t.Fatal(err)
	}
	key := p256(t)
	csr, id, err := ParseCSR(newCSR(t, key, &x509.CertificateRequest{URIs: []*url.URL{me.URL()}}))
	if err != nil || id != me {
		t.Fatalf("ParseCSR = %s, %v", id, err)
	}
	der, end, err := SignX509SVID(ca, csr, id, t0, t0.Add(time.Hour))
	if err != nil || !end.Equal(t0.Add(time.Hour)) {
		t.Fatalf("SignX509SVID = %v, %v", end, err)
	}
	leaf, _ := x509.ParseCertificate(der)
	bundle := x509bundle.FromX509Authorities(td, []*x509.Certificate{ca.Cert})
	gotID, _, err := x509svid.Verify([]*x509.Certificate{leaf}, bundle, x509svid.WithTime(t0.Add(time.Minute)))
	if err != nil || gotID != me {
		t.Fatalf("x509svid.Verify = %s, %v", gotID, err)
	}
	if leaf.IsCA || leaf.KeyUsage&x509.KeyUsageCertSign != 0 || leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0 {
		t.Errorf("key usage %v, IsCA %v", leaf.KeyUsage, leaf.IsCA)
	}
	if len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 || len(leaf.URIs) != 1 {
		t.Errorf("SANs beyond the SPIFFE ID: %v %v %v %v", leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses, leaf.URIs)
	}
	if !leaf.PublicKey.(*ecdsa.PublicKey).Equal(key.Public()) {
		t.Error("leaf is not for the CSR's key")
	}
	// Capped at the CA's end.
	_, end, err = SignX509SVID(ca, csr, id, t0, t0.Add(48*time.Hour))
	if err != nil || !end.Equal(ca.Cert.NotAfter) {
		t.Errorf("SVID beyond the CA: end %v, CA ends %v (%v)", end, ca.Cert.NotAfter, err)
	}
}

func TestParseCSR_Refusals(t *testing.T) {
	key := p256(t)
	other := spiffeid.RequireFromString("spiffe://acme.test/app/web/workload/x")
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	good := newCSR(t, key, &x509.CertificateRequest{URIs: []*url.URL{me.URL()}})
	tampered := append([]byte(nil), good...)
	tampered[len(tampered)-1] ^= 1
	for name, der := range map[string][]byte{
		"dns san":       newCSR(t, key, &x509.CertificateRequest{URIs: []*url.URL{me.URL()}, DNSNames: []string{"web.example"}}),
		"ip san":        newCSR(t, key, &x509.CertificateRequest{URIs: []*url.URL{me.URL()}, IPAddresses: []net.IP{net.IPv4(10, 0, 0, 1)}}),
		"email san":     newCSR(t, key, &x509.CertificateRequest{URIs: []*url.URL{me.URL()}, EmailAddresses: []string{"a@example.com"}}),
		"two uris":      newCSR(t, key, &x509.CertificateRequest{URIs: []*url.URL{me.URL(), other.URL()}}),
		"no uri":        newCSR(t, key, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "web"}}),
		"https uri":     newCSR(t, key, &x509.CertificateRequest{URIs: []*url.URL{{Scheme: "https", Host: "acme.test", Path: "/x"}}}),
		"rsa 1024":      newCSR(t, small, &x509.CertificateRequest{URIs: []*url.URL{me.URL()}}),
		"bad signature": tampered,
		"garbage":       []byte("not a csr"),
		"empty":         nil,
	} {
		if _, _, err := ParseCSR(der); !errors.Is(err, ErrCSR) {
			t.Errorf("%s: ParseCSR = %v, want ErrCSR", name, err)
		}
	}
}

// Rotation pre-publishes the next CA before it signs and keeps the old one
// published for the grace period, as the JWT keys do.
func TestRotate_PrepublishAndGrace(t *testing.T) {
	first, err := NewCA(td, t0, 30*24*time.Hour, 0)
	if err != nil {
		t.Fatal(err)
	}
	cas, next, err := Rotate([]*CA{first}, td, t0.Add(time.Hour), 30*24*time.Hour, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	const grace = 24 * time.Hour
	at := func(d time.Duration) (signer string, published []string) {
		now := t0.Add(d)
		s, err := Signer(cas, now)
		if err == nil {
			signer = s.ID
		}
		for _, c := range Published(cas, now, grace) {
			published = append(published, c.ID)
		}
		return signer, published
	}
	if s, p := at(90 * time.Minute); s != first.ID || len(p) != 2 {
		t.Errorf("during prepublish: signer %s, published %v; want the old CA signing and both published", s, p)
	}
	if s, p := at(2*time.Hour + time.Second); s != next.ID || len(p) != 2 {
		t.Errorf("after activation: signer %s, published %v; want the new CA signing and both published", s, p)
	}
	if s, p := at(2*time.Hour + grace); s != next.ID || fmt.Sprint(p) != fmt.Sprint([]string{next.ID}) {
		t.Errorf("after grace: signer %s, published %v; want only the new CA", s, p)
	}
}

func TestCA_MarshalRoundTripAndNeverPrintsKey(t *testing.T) {
	ca, err := NewCA(td, t0, time.Hour, 0)
	if err != nil {
		t.Fatal(err)
	}
	b, err := ca.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	key, cert, err := UnmarshalCA(b)
	if err != nil || !key.Equal(ca.Key) || !cert.Equal(ca.Cert) {
		t.Fatalf("UnmarshalCA: %v", err)
	}
	other, _ := NewCA(td, t0, time.Hour, 0)
	keyPart := b[:len(b)-len(ca.Cert.Raw)]
	mixed := append(append([]byte(nil), keyPart...), other.Cert.Raw...)
	if _, _, err := UnmarshalCA(mixed); err == nil {
		t.Error("a key with another CA's certificate was accepted")
	}
	d := ca.Key.D.Text(16)
	for _, verb := range []string{"%v", "%+v", "%s", "%#v"} {
		if s := fmt.Sprintf(verb, ca); strings.Contains(s, d) || strings.Contains(s, ca.Key.D.String()) {
			t.Fatalf("%s prints the CA key: %s", verb, s)
		}
	}
}

// The bundle is in the SPIFFE bundle format and go-spiffe parses it back.
func TestNewBundle_Format(t *testing.T) {
	ca, _ := NewCA(td, t0, time.Hour, 0)
	jk := p256(t)
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: jk.Public(), KeyID: "k1", Algorithm: "ES256"}}}
	b, err := NewBundle(td, []*CA{ca}, set, 5*time.Minute, 42)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Keys []struct {
			Use string   `json:"use"`
			Kid string   `json:"kid"`
			X5c []string `json:"x5c"`
		} `json:"keys"`
		Hint int    `json:"spiffe_refresh_hint"`
		Seq  uint64 `json:"spiffe_sequence"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	if doc.Hint != 300 || doc.Seq != 42 || len(doc.Keys) != 2 {
		t.Fatalf("bundle %s", raw)
	}
	uses := map[string]bool{}
	for _, k := range doc.Keys {
		uses[k.Use] = true
		if k.Use == "x509-svid" && len(k.X5c) != 1 || k.Use == "jwt-svid" && k.Kid != "k1" {
			t.Errorf("key %+v", k)
		}
	}
	if !uses["x509-svid"] || !uses["jwt-svid"] {
		t.Errorf("uses %v", uses)
	}
	back, err := spiffebundle.Parse(td, raw)
	if err != nil || !back.HasX509Authority(ca.Cert) || !back.HasJWTAuthority("k1") {
		t.Fatalf("spiffebundle.Parse: %v", err)
	}
}
