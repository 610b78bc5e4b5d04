package issuer

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/sockettest"
	"github.com/wicket-sh/wicket/internal/spiffe"
	"github.com/wicket-sh/wicket/internal/wait"
)

var spireTD = spiffeid.RequireTrustDomainFromString("spire.test")

// foreignEndpoint is a stand-in for another SPIFFE system's bundle
// endpoint: it serves whatever document and status it is told to.
type foreignEndpoint struct {
	srv    *httptest.Server
	doc    atomic.Pointer[[]byte]
	status atomic.Int32
	cert   atomic.Pointer[tls.Certificate] // https_spiffe: the SVID it serves with
	hits   atomic.Int64
}

func newForeignEndpoint(t *testing.T, spiffeTLS bool) *foreignEndpoint {
	t.Helper()
	e := &foreignEndpoint{}
	e.status.Store(http.StatusOK)
	e.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.hits.Add(1)
		if st := int(e.status.Load()); st != http.StatusOK {
			w.WriteHeader(st)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(*e.doc.Load())
	}))
	e.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are the point
	if spiffeTLS {
		// Serve with the SVID of the moment, whatever the client asks
		// (httptest's own certificate would win for an IP without SNI).
		e.srv.Listener = tls.NewListener(e.srv.Listener, &tls.Config{
			GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return e.cert.Load(), nil }})
		e.srv.Start()
		e.srv.URL = "https://" + e.srv.Listener.Addr().String()
	} else {
		e.srv.StartTLS()
	}
	t.Cleanup(e.srv.Close)
	return e
}

// caFile writes the endpoint's web PKI certificate where ca_file reads it.
func (e *foreignEndpoint) caFile(t *testing.T, dir string) string {
	p := filepath.Join(dir, "foreign-ca.pem")
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: e.srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func newForeignCA(t *testing.T, td spiffeid.TrustDomain) *spiffe.CA {
	t.Helper()
	ca, err := spiffe.NewCA(td, time.Now(), 24*time.Hour, 0)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// foreignDoc is td's bundle document with cas, a 1 s refresh hint and seq.
func foreignDoc(t *testing.T, td spiffeid.TrustDomain, seq uint64, cas ...*spiffe.CA) []byte {
	t.Helper()
	b, err := spiffe.NewBundle(td, cas, jose.JSONWebKeySet{}, time.Second, seq)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

func foreignSVID(t *testing.T, ca *spiffe.CA, id spiffeid.ID) *tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
	if err != nil {
		t.Fatal(err)
	}
	csr, _, err := spiffe.ParseCSR(csrDER)
	if err != nil {
		t.Fatal(err)
	}
	der, _, err := spiffe.SignX509SVID(ca, csr, id, time.Now(), time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// federatedCAs is what the issuer hands a machine for spire.test: the
// serial numbers of the bundle's CAs, nil when the domain is absent.
func federatedCAs(t *testing.T, ti *testIssuer, tok string) []string {
	t.Helper()
	info, _ := ti.svidBundle(t, tok)
	doc, ok := info.FederatedBundles[spireTD.Name()]
	if !ok {
		return nil
	}
	b, err := spiffebundle.Parse(spireTD, doc)
	if err != nil {
		t.Fatalf("federated bundle: %v", err)
	}
	var out []string
	for _, c := range b.X509Authorities() {
		out = append(out, c.SerialNumber.String())
	}
	return out
}

func serials(cas ...*spiffe.CA) []string {
	var out []string
	for _, c := range cas {
		out = append(out, c.Cert.SerialNumber.String())
	}
	return out
}

func sameList(a, b []string) bool { return strings.Join(a, ",") == strings.Join(b, ",") }

type fedStatus struct {
	Counters map[string]uint64         `json:"counters"`
	Fed      map[string]map[string]any `json:"spiffe_federation"`
}

func (ti *testIssuer) fedStatus(t *testing.T) fedStatus {
	t.Helper()
	var st fedStatus
	if err := json.Unmarshal([]byte(sockettest.Do(ti.adminSock, "GET", "/v1/status", "", nil).Body), &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// A foreign bundle reaches the machines of the orgs that federate with
// its domain and no others; a new one replaces it; a failed fetch, or a
// bundle of another domain, keeps the last good one and is counted.
func TestFederation_HTTPSWebBundleToListedOrgs(t *testing.T) {
	dir := shortDir(t)
	ep := newForeignEndpoint(t, false)
	ca1 := newForeignCA(t, spireTD)
	doc := foreignDoc(t, spireTD, 1, ca1)
	ep.doc.Store(&doc)
	ti := startIssuerWith(t, dir, func(c *config.Issuer) {
		c.SPIFFE.Federation = []config.SPIFFEFederation{{TrustDomain: spireTD.Name(), BundleEndpointURL: ep.srv.URL + "/bundle",
			Profile: config.ProfileHTTPSWeb, CAFile: ep.caFile(t, dir), Orgs: []string{"dev"}}}
	}, func(o *Options) {
		o.FederationRefreshMin, o.FederationRefreshMax = time.Millisecond, 20*time.Millisecond
	})
	_, dev := ti.addMachine(t, devSpec)
	other := devSpec
	other.Org = "acme"
	_, acme := ti.addMachine(t, other)

	wait.Eventually(t, 30*time.Second, func() bool { return sameList(federatedCAs(t, ti, dev), serials(ca1)) }, "dev's machine gets spire.test's bundle")
	if got := federatedCAs(t, ti, acme); got != nil {
		t.Fatalf("acme, which does not federate with spire.test, got its bundle: %v", got)
	}

	// The foreign domain rotates: the next fetch hands agents both CAs.
	ca2 := newForeignCA(t, spireTD)
	doc2 := foreignDoc(t, spireTD, 2, ca1, ca2)
	ep.doc.Store(&doc2)
	wait.Eventually(t, 30*time.Second, func() bool { return sameList(federatedCAs(t, ti, dev), serials(ca1, ca2)) }, "the rotated bundle reaches dev")

	// The endpoint fails: the last good bundle stays, the failures are
	// counted and shown.
	ep.status.Store(http.StatusInternalServerError)
	wait.Eventually(t, 30*time.Second, func() bool {
		st := ti.fedStatus(t)
		return st.Counters["federated_bundle_failures"] >= 2 && st.Fed[spireTD.Name()]["failures_in_a_row"].(float64) >= 2
	}, "failed fetches counted")
	if got := federatedCAs(t, ti, dev); !sameList(got, serials(ca1, ca2)) {
		t.Fatalf("after failed fetches the bundle is %v, want the last good one", got)
	}
	// An endpoint that serves another domain's bundle is refused too.
	ep.status.Store(http.StatusOK)
	otherDoc := foreignDoc(t, spiffeid.RequireTrustDomainFromString("other.test"), 3, newForeignCA(t, spiffeid.RequireTrustDomainFromString("other.test")))
	ep.doc.Store(&otherDoc)
	before := ti.fedStatus(t).Counters["federated_bundle_failures"]
	wait.Eventually(t, 30*time.Second, func() bool { return ti.fedStatus(t).Counters["federated_bundle_failures"] > before }, "another domain's bundle refused")
	if got := federatedCAs(t, ti, dev); !sameList(got, serials(ca1, ca2)) {
		t.Fatalf("another domain's bundle replaced spire.test's: %v", got)
	}
	st := ti.fedStatus(t).Fed[spireTD.Name()]
	if st["last_success"] == nil || !strings.Contains(st["last_error"].(string), "names trust domain other.test") || st["sequence"].(float64) != 2 {
		t.Errorf("status = %v", st)
	}
	m := sockettest.Do(ti.adminSock, "GET", "/metrics", "", nil).Body
	for _, want := range []string{`wicket_spiffe_federated_bundle_sequence{trust_domain="spire.test"} 2`,
		`wicket_spiffe_federated_bundle_last_success_timestamp_seconds{trust_domain="spire.test"}`,
		`wicket_spiffe_federated_bundle_failing{trust_domain="spire.test"}`, "wicket_spiffe_federated_bundle_updates_total 2"} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if !strings.Contains(ti.logs.String(), "spiffe federation: bundle fetch failed") {
		t.Error("fetch failures not logged")
	}
}

// https_spiffe: the endpoint is authenticated with the domain's current
// bundle (bundle_file at first), and each fetched bundle becomes the one
// the next fetch authenticates with, so the issuer follows the domain
// through a CA rotation; an endpoint whose SVID the current bundle does
// not vouch for is refused.
func TestFederation_HTTPSSPIFFEFollowsRotation(t *testing.T) {
	dir := shortDir(t)
	ep := newForeignEndpoint(t, true)
	serverID := spiffeid.RequireFromString("spiffe://spire.test/spire/server")
	ca1 := newForeignCA(t, spireTD)
	ep.cert.Store(foreignSVID(t, ca1, serverID))
	doc1 := foreignDoc(t, spireTD, 1, ca1)
	bundleFile := filepath.Join(dir, "spire.bundle.json")
	if err := os.WriteFile(bundleFile, doc1, 0o600); err != nil {
		t.Fatal(err)
	}
	ca2 := newForeignCA(t, spireTD)
	doc12 := foreignDoc(t, spireTD, 2, ca1, ca2)
	ep.doc.Store(&doc12)
	ti := startIssuerWith(t, dir, func(c *config.Issuer) {
		c.SPIFFE.Federation = []config.SPIFFEFederation{{TrustDomain: spireTD.Name(), BundleEndpointURL: ep.srv.URL,
			Profile: config.ProfileHTTPSSPIFFE, EndpointSPIFFEID: serverID.String(), BundleFile: bundleFile, Orgs: []string{"dev"}}}
	}, func(o *Options) {
		o.FederationRefreshMin, o.FederationRefreshMax = time.Millisecond, 20*time.Millisecond
	})
	_, dev := ti.addMachine(t, devSpec)
	// Before any fetch the machine has bundle_file's bundle; then the
	// endpoint's, which adds ca2.
	if got := federatedCAs(t, ti, dev); !sameList(got, serials(ca1)) && !sameList(got, serials(ca1, ca2)) {
		t.Fatalf("federated bundle %v, want bundle_file's or the fetched one", got)
	}
	wait.Eventually(t, 30*time.Second, func() bool { return sameList(federatedCAs(t, ti, dev), serials(ca1, ca2)) }, "fetched bundle with ca2")

	// The domain retires ca1: its endpoint now serves with an SVID of ca2,
	// which only the fetched bundle (not bundle_file) vouches for.
	ep.cert.Store(foreignSVID(t, ca2, serverID))
	doc2 := foreignDoc(t, spireTD, 3, ca2)
	ep.doc.Store(&doc2)
	wait.Eventually(t, 30*time.Second, func() bool { return sameList(federatedCAs(t, ti, dev), serials(ca2)) }, "bundle after ca1 retired")

	// An endpoint whose SVID no CA of the current bundle signed: refused.
	rogue := newForeignCA(t, spireTD)
	ep.cert.Store(foreignSVID(t, rogue, serverID))
	docRogue := foreignDoc(t, spireTD, 4, rogue)
	ep.doc.Store(&docRogue)
	before := ti.fedStatus(t).Counters["federated_bundle_failures"]
	wait.Eventually(t, 30*time.Second, func() bool { return ti.fedStatus(t).Counters["federated_bundle_failures"] > before }, "rogue endpoint refused")
	if got := federatedCAs(t, ti, dev); !sameList(got, serials(ca2)) {
		t.Fatalf("a rogue endpoint's bundle was taken: %v", got)
	}
	// The same for an SVID of the right CA but another ID.
	ep.cert.Store(foreignSVID(t, ca2, spiffeid.RequireFromString("spiffe://spire.test/not-the-server")))
	before = ti.fedStatus(t).Counters["federated_bundle_failures"]
	wait.Eventually(t, 30*time.Second, func() bool { return ti.fedStatus(t).Counters["federated_bundle_failures"] > before }, "endpoint with another ID refused")
	if got := federatedCAs(t, ti, dev); !sameList(got, serials(ca2)) {
		t.Fatalf("an endpoint with another ID was believed: %v", got)
	}
}

// What the federation config names is read at start: a ca_file without a
// certificate or a bundle_file that is missing or not a bundle stops the
// issuer there, not at the first fetch.
func TestFederation_FilesCheckedAtStart(t *testing.T) {
	dir := shortDir(t)
	junk := filepath.Join(dir, "junk")
	if err := os.WriteFile(junk, []byte("not pem, not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		f    config.SPIFFEFederation
		want string
	}{
		"ca_file without a certificate": {config.SPIFFEFederation{Profile: config.ProfileHTTPSWeb, CAFile: junk}, "holds no PEM certificate"},
		"ca_file missing":               {config.SPIFFEFederation{Profile: config.ProfileHTTPSWeb, CAFile: filepath.Join(dir, "none")}, "ca_file"},
		"bundle_file missing": {config.SPIFFEFederation{Profile: config.ProfileHTTPSSPIFFE, EndpointSPIFFEID: "spiffe://spire.test/s",
			BundleFile: filepath.Join(dir, "none")}, "bundle_file"},
		"bundle_file not a bundle": {config.SPIFFEFederation{Profile: config.ProfileHTTPSSPIFFE, EndpointSPIFFEID: "spiffe://spire.test/s",
			BundleFile: junk}, "bundle_file"},
	} {
		t.Run(name, func(t *testing.T) {
			f := tc.f
			f.TrustDomain, f.BundleEndpointURL, f.Orgs = spireTD.Name(), "https://127.0.0.1:1/", []string{"dev"}
			c := config.DefaultIssuer()
			c.SPIFFE.Federation = []config.SPIFFEFederation{f}
			if err := c.Validate(); err != nil {
				t.Fatalf("config refused before the issuer saw it: %v", err)
			}
			if _, err := newFederation(c.SPIFFE); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("newFederation: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// Before a domain's first good fetch (https_web) its machines get no
// bundle of it, and the status says so; SVIDs are issued as ever.
func TestFederation_AbsentBeforeFirstFetch(t *testing.T) {
	dir := shortDir(t)
	ep := newForeignEndpoint(t, false)
	ep.status.Store(http.StatusServiceUnavailable)
	ti := startIssuerWith(t, dir, func(c *config.Issuer) {
		c.SPIFFE.Federation = []config.SPIFFEFederation{{TrustDomain: spireTD.Name(), BundleEndpointURL: ep.srv.URL,
			Profile: config.ProfileHTTPSWeb, CAFile: ep.caFile(t, dir), Orgs: []string{"dev"}}}
	}, nil)
	_, dev := ti.addMachine(t, devSpec)
	wait.Eventually(t, 30*time.Second, func() bool { return ti.fedStatus(t).Counters["federated_bundle_failures"] >= 1 }, "a failed first fetch")
	info, _ := ti.svidBundle(t, dev)
	if info.FederatedBundles != nil {
		t.Fatalf("federated_bundles before any good fetch: %v", info.FederatedBundles)
	}
	st := ti.fedStatus(t).Fed[spireTD.Name()]
	if st["have_bundle"] != false || st["fetched"] != false || st["last_error"] == nil {
		t.Errorf("status before a good fetch: %v", st)
	}
	if r := ti.call(t, "POST", "/v1/svids/x509", svidCopy(t, dev, time.Now(), time.Minute, info.SPIFFEID), x509Body(csrFor(t, info.SPIFFEID))); r.status != 200 {
		t.Errorf("x509 svid while the foreign endpoint fails: %d %s", r.status, r.body)
	}
}
