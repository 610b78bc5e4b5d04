package workloadapi

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"log/slog"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wicket-sh/wicket/api"
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

// bundleIssuer answers Bundle with reply; X.509 and JWT are not asked.
type bundleIssuer struct{ reply *api.SVIDBundleReply }

func (b *bundleIssuer) Bundle(context.Context) (*api.SVIDBundleReply, error) { return b.reply, nil }
func (b *bundleIssuer) X509(context.Context, string, []byte) (*api.X509SVIDReply, error) {
	return nil, errors.New("not asked")
}
func (b *bundleIssuer) JWT(context.Context, string, []string) (*api.JWTSVIDReply, error) {
	return nil, errors.New("not asked")
}

// A reply whose foreign part is refused still renews the machine's own
// trust domain's bundle, and keeps the foreign bundles held before: a
// foreign domain that goes wrong can neither leave the agent without its
// own bundle nor remove trust already given.
func TestRefreshTrust_BadForeignPartKeepsOwnAndHeldForeign(t *testing.T) {
	own := spiffeid.RequireTrustDomainFromString("dev.wicket.internal")
	foreign := spiffeid.RequireTrustDomainFromString("spire.test")
	iss := &bundleIssuer{}
	reply := func(fed map[string]json.RawMessage) *api.SVIDBundleReply {
		return &api.SVIDBundleReply{TrustDomain: own.Name(), SPIFFEID: "spiffe://dev.wicket.internal/app/web/machine/m1",
			Bundle: bundleDoc(t, own), FederatedBundles: fed}
	}
	c := newCache(iss, time.Now, slog.New(slog.DiscardHandler))
	ctx := context.Background()

	// First reply: the foreign part names the machine's own domain.
	iss.reply = reply(map[string]json.RawMessage{own.Name(): bundleDoc(t, own)})
	if err := c.refreshTrust(ctx); err != nil {
		t.Fatalf("own bundle not taken when the foreign part is bad: %v", err)
	}
	if c.trust == nil || len(c.trust.federated) != 0 {
		t.Fatalf("trust = %+v, want the own bundle and no foreign one", c.trust)
	}
	// A good foreign part is taken.
	good := bundleDoc(t, foreign)
	iss.reply = reply(map[string]json.RawMessage{foreign.Name(): good})
	if err := c.refreshTrust(ctx); err != nil || len(c.trust.federated) != 1 {
		t.Fatalf("good foreign part: err %v, federated %v", err, c.trust.federated)
	}
	held := c.trust.federated[foreign]
	// A bad one again: the own bundle is renewed, the foreign one kept.
	ownDoc := bundleDoc(t, own)
	iss.reply = &api.SVIDBundleReply{TrustDomain: own.Name(), SPIFFEID: "spiffe://dev.wicket.internal/app/web/machine/m1",
		Bundle: ownDoc, FederatedBundles: map[string]json.RawMessage{"Not A Domain": good}}
	if err := c.refreshTrust(ctx); err != nil {
		t.Fatal(err)
	}
	want, _ := spiffebundle.Parse(own, ownDoc)
	if !sameAuthorities(c.trust.bundle, want) {
		t.Error("the own bundle was not renewed")
	}
	if got := c.trust.federated[foreign]; got == nil || !sameAuthorities(got, held) {
		t.Error("the foreign bundle held before was dropped")
	}
	if c.stats().Failures != 2 {
		t.Errorf("failures = %d, want the two refused foreign parts counted", c.stats().Failures)
	}
}
