package workloadapi

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func bundleDoc(t *testing.T, td spiffeid.TrustDomain) json.RawMessage {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: td.Name()}, NotBefore: time.Now(),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
		URIs: []*url.URL{td.ID().URL()}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	b := spiffebundle.New(td)
	b.AddX509Authority(cert)
	doc, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

// The agent takes foreign bundles only for foreign domains: a reply that
// names the machine's own trust domain as federated, or a name that is
// not a trust domain, is refused whole.
func TestParseFederated_Refusals(t *testing.T) {
	own := spiffeid.RequireTrustDomainFromString("dev.wicket.internal")
	foreign := spiffeid.RequireTrustDomainFromString("spire.test")
	got, err := parseFederated(own, map[string]json.RawMessage{foreign.Name(): bundleDoc(t, foreign)})
	if err != nil || len(got) != 1 || got[foreign] == nil {
		t.Fatalf("a foreign bundle: %v, %v", got, err)
	}
	for name, docs := range map[string]map[string]json.RawMessage{
		"own domain":      {own.Name(): bundleDoc(t, own), foreign.Name(): bundleDoc(t, foreign)},
		"trust domain ID": {foreign.IDString(): bundleDoc(t, foreign)},
		"uppercase":       {"Spire.test": bundleDoc(t, foreign)},
		"not a bundle":    {foreign.Name(): json.RawMessage(`{"keys":"x"}`)},
	} {
		if got, err := parseFederated(own, docs); err == nil {
			t.Errorf("%s: accepted %v", name, got)
		}
	}
	many := map[string]json.RawMessage{}
	for i := range maxFederated + 1 {
		many[strings.Repeat("a", i+1)+".test"] = bundleDoc(t, foreign)
	}
	if _, err := parseFederated(own, many); err == nil {
		t.Error("more than maxFederated bundles accepted")
	}
}
