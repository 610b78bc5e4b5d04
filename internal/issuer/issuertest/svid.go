package issuertest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/machinetoken"
)

// The SVID endpoints (docs/spiffe.md, "Issuer endpoints") as the agent's
// SPIFFE feature relies on them: the bundle names the machine's ID in its
// trust domain; SVIDs are signed only for IDs in the machine's namespace,
// only on a copy for the svid feature bound to that ID (and a JWT-SVID's
// audiences), and never outlive the copy.

// svidScope is the copy the agent sends for one SVID request: bound to
// the X.509 kind and the ID, or (with audiences) to the JWT kind, the ID
// and the audiences.
func svidScope(id string, aud ...string) machinetoken.Scope {
	kind := machinetoken.SVIDX509
	if len(aud) > 0 {
		kind = machinetoken.SVIDJWT
	}
	return machinetoken.Scope{Features: []machinetoken.Feature{machinetoken.FeatureSVID}, SVIDKinds: []machinetoken.SVIDKind{kind},
		SPIFFEIDs: []string{id}, Audiences: aud}
}

// kindScope is a copy bound to one kind of SVID request and nothing
// more: the issuer takes none from a token not bound to kinds, so the
// cases where only the namespace and request rules stand in the way use
// it (an agent that asks for what it must not).
func kindScope(kind machinetoken.SVIDKind) machinetoken.Scope {
	return machinetoken.Scope{Features: []machinetoken.Feature{machinetoken.FeatureSVID}, SVIDKinds: []machinetoken.SVIDKind{kind}}
}

// bundleScope is the copy the agent reads the bundle with.
var bundleScope = machinetoken.Scope{Features: []machinetoken.Feature{machinetoken.FeatureSVID}, SVIDKinds: []machinetoken.SVIDKind{machinetoken.SVIDBundle}}

// svidTrust is what GET /v1/svids/bundle says.
type svidTrust struct {
	td        spiffeid.TrustDomain
	machineID spiffeid.ID
	bundle    *spiffebundle.Bundle
}

// workload is the ID of the machine's workload name: the machine's ID
// is spiffe://<td>/app/<app>/machine/<name>.
func (s svidTrust) workload(t *testing.T, name string) spiffeid.ID {
	t.Helper()
	segs := strings.Split(strings.TrimPrefix(s.machineID.Path(), "/"), "/")
	if len(segs) != 4 || segs[0] != "app" || segs[2] != "machine" {
		t.Fatalf("machine id %s is not spiffe://<td>/app/<app>/machine/<name>", s.machineID)
	}
	return spiffeid.RequireFromSegments(s.td, "app", segs[1], "workload", name)
}

func svidBundle(t *testing.T, tg *Target, token string) svidTrust {
	t.Helper()
	r := do(t, "GET", tg.URL+"/v1/svids/bundle", token, "", nil)
	expect(t, "svid bundle", r, 200, "")
	if r.status != 200 {
		t.FailNow()
	}
	var out api.SVIDBundleReply
	if err := json.Unmarshal([]byte(r.body), &out); err != nil {
		t.Fatalf("bundle reply: %v", err)
	}
	td, err := spiffeid.TrustDomainFromString(out.TrustDomain)
	if err != nil {
		t.Fatalf("trust domain %q: %v", out.TrustDomain, err)
	}
	id, err := spiffeid.FromString(out.SPIFFEID)
	if err != nil {
		t.Fatalf("spiffe id %q: %v", out.SPIFFEID, err)
	}
	b, err := spiffebundle.Parse(td, out.Bundle)
	if err != nil {
		t.Fatalf("bundle document: %v", err)
	}
	return svidTrust{td: td, machineID: id, bundle: b}
}

// CSR is a certificate request for the URI SANs ids (none, one, or more:
// the malformed cases), with a new P-256 key.
func CSR(t *testing.T, ids ...string) ([]byte, *ecdsa.PrivateKey) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.CertificateRequest{}
	for _, id := range ids {
		u, err := url.Parse(id)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, u)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return der, key
}

func x509SVID(t *testing.T, tg *Target, token string, csr []byte) reply {
	t.Helper()
	b, _ := json.Marshal(api.X509SVIDRequest{CSR: csr})
	return do(t, "POST", tg.URL+"/v1/svids/x509", token, string(b), nil)
}

func jwtSVID(t *testing.T, tg *Target, token, id string, aud ...string) reply {
	t.Helper()
	b, _ := json.Marshal(api.JWTSVIDRequest{SPIFFEID: id, Audience: aud})
	return do(t, "POST", tg.URL+"/v1/svids/jwt", token, string(b), nil)
}

// testSVIDBundle: the bundle names the machine's own ID, in its trust
// domain, with X.509 and JWT authorities; other features' copies get 401.
func testSVIDBundle(t *testing.T, tg *Target) {
	s := svidBundle(t, tg, restrict(t, tg.Token, time.Minute, bundleScope))
	want := "/app/" + tg.App + "/machine/" + tg.Name
	if !s.machineID.MemberOf(s.td) || s.machineID.Path() != want {
		t.Errorf("machine id %s, want spiffe://%s%s", s.machineID, s.td.Name(), want)
	}
	if len(s.bundle.X509Authorities()) == 0 || len(s.bundle.JWTAuthorities()) == 0 {
		t.Errorf("bundle has %d x509 and %d jwt authorities, want both", len(s.bundle.X509Authorities()), len(s.bundle.JWTAuthorities()))
	}
	md := restrict(t, tg.Token, time.Minute, features(machinetoken.FeatureMetadata))
	expect(t, "bundle with a metadata copy", do(t, "GET", tg.URL+"/v1/svids/bundle", md, "", nil), 401, "unauthorized")
	expect(t, "bundle without a token", do(t, "GET", tg.URL+"/v1/svids/bundle", "", "", nil), 401, "unauthorized")
	// No SVID endpoint takes a token that is not bound to SVID kinds:
	// neither a copy for the svid feature alone nor the machine token.
	unbound := restrict(t, tg.Token, time.Minute, features(machinetoken.FeatureSVID))
	for name, tok := range map[string]string{"svid copy without kinds": unbound, "the machine token": tg.Token} {
		expect(t, "bundle with "+name, do(t, "GET", tg.URL+"/v1/svids/bundle", tok, "", nil), 401, "unauthorized")
		csr, _ := CSR(t, s.machineID.String())
		expect(t, "x509 svid with "+name, x509SVID(t, tg, tok, csr), 401, "unauthorized")
		expect(t, "jwt svid with "+name, jwtSVID(t, tg, tok, s.machineID.String(), "db"), 401, "unauthorized")
	}
}

// testX509SVID: a CSR for the machine's ID or one of its workloads, on a
// copy bound to that ID, is signed: the leaf is for the CSR's key, its
// only SAN the ID, it chains to the bundle and ends no later than the
// copy. Anything else is refused.
func testX509SVID(t *testing.T, tg *Target) {
	s := svidBundle(t, tg, restrict(t, tg.Token, time.Minute, bundleScope))
	for _, id := range []spiffeid.ID{s.machineID, s.workload(t, "backend")} {
		start := time.Now()
		copy := restrict(t, tg.Token, 3*time.Minute, svidScope(id.String()))
		csr, key := CSR(t, id.String())
		r := x509SVID(t, tg, copy, csr)
		expect(t, "x509 svid for "+id.String(), r, 200, "")
		if r.status != 200 {
			continue
		}
		var out api.X509SVIDReply
		if err := json.Unmarshal([]byte(r.body), &out); err != nil || len(out.CertChain) == 0 {
			t.Fatalf("x509 reply: %v (%d certificates)", err, len(out.CertChain))
		}
		leaf, err := x509.ParseCertificate(out.CertChain[0])
		if err != nil {
			t.Fatalf("leaf: %v", err)
		}
		if out.SPIFFEID != id.String() || len(leaf.URIs) != 1 || leaf.URIs[0].String() != id.String() || len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 {
			t.Errorf("svid %s with SANs %v %v, want only the URI SAN %s", out.SPIFFEID, leaf.URIs, leaf.DNSNames, id)
		}
		if pub, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(key.Public()) {
			t.Error("leaf is not for the CSR's key")
		}
		if _, _, err := x509svid.Verify([]*x509.Certificate{leaf}, s.bundle); err != nil {
			t.Errorf("svid does not chain to the bundle: %v", err)
		}
		if end := start.Add(3*time.Minute + time.Second); leaf.NotAfter.After(end) || !out.ExpiresAt.Equal(leaf.NotAfter) {
			t.Errorf("svid ends %s (expires_at %s), the copy by %s", leaf.NotAfter, out.ExpiresAt, end)
		}
	}
	backend := s.workload(t, "backend").String()
	bound := restrict(t, tg.Token, time.Minute, svidScope(backend))
	other, _ := CSR(t, s.workload(t, "frontend").String())
	expect(t, "x509, copy bound to another id", x509SVID(t, tg, bound, other), 401, "unauthorized")
	md := restrict(t, tg.Token, time.Minute, features(machinetoken.FeatureMetadata))
	mine, _ := CSR(t, backend)
	expect(t, "x509, metadata copy", x509SVID(t, tg, md, mine), 401, "unauthorized")
	outside := []string{
		"spiffe://" + s.td.Name() + "/app/not-" + tg.App + "/workload/x",
		"spiffe://" + s.td.Name() + "/app/" + tg.App + "/machine/not-" + tg.Name,
		"spiffe://other.example/app/" + tg.App + "/workload/x",
		"spiffe://" + s.td.Name() + "/something/else",
	}
	anyX509 := restrict(t, tg.Token, time.Minute, kindScope(machinetoken.SVIDX509))
	for _, id := range outside {
		csr, _ := CSR(t, id)
		expect(t, "x509 for "+id, x509SVID(t, tg, anyX509, csr), 400, "bad_request")
	}
	two, _ := CSR(t, backend, s.machineID.String())
	expect(t, "x509, two URI SANs", x509SVID(t, tg, anyX509, two), 400, "bad_request")
	expect(t, "x509, no csr", do(t, "POST", tg.URL+"/v1/svids/x509", anyX509, `{}`, nil), 400, "bad_request")
	expect(t, "x509, unknown field", do(t, "POST", tg.URL+"/v1/svids/x509", anyX509, `{"csr":"","x":1}`, nil), 400, "bad_request")
}

// testJWTSVID: a JWT-SVID for an ID of the machine, on a copy bound to it
// and its audiences, has sub = the ID and the audiences asked for,
// verifies against the bundle's JWT authorities and ends no later than
// the copy; other audiences, IDs or features are refused.
func testJWTSVID(t *testing.T, tg *Target) {
	s := svidBundle(t, tg, restrict(t, tg.Token, time.Minute, bundleScope))
	id := s.workload(t, "backend").String()
	start := time.Now()
	copy := restrict(t, tg.Token, 2*time.Minute, svidScope(id, "db", "cache"))
	r := jwtSVID(t, tg, copy, id, "db", "cache")
	expect(t, "jwt svid", r, 200, "")
	if r.status == 200 {
		var out api.JWTSVIDReply
		if err := json.Unmarshal([]byte(r.body), &out); err != nil {
			t.Fatalf("jwt reply: %v", err)
		}
		sv, err := jwtsvid.ParseAndValidate(out.Token, s.bundle, []string{"db"})
		if err != nil {
			t.Fatalf("jwt svid does not validate against the bundle: %v", err)
		}
		if sv.ID.String() != id || out.SPIFFEID != id || !slices.Equal(sv.Audience, []string{"db", "cache"}) {
			t.Errorf("jwt svid for %s (reply %s), aud %v", sv.ID, out.SPIFFEID, sv.Audience)
		}
		if end := start.Add(2*time.Minute + time.Second); sv.Expiry.After(end) || !out.ExpiresAt.Equal(sv.Expiry) {
			t.Errorf("jwt svid ends %s (expires_at %s), the copy by %s", sv.Expiry, out.ExpiresAt, end)
		}
	}
	expect(t, "jwt, other audience", jwtSVID(t, tg, copy, id, "other"), 401, "unauthorized")
	expect(t, "jwt, other id", jwtSVID(t, tg, copy, s.workload(t, "frontend").String(), "db"), 401, "unauthorized")
	md := restrict(t, tg.Token, time.Minute, features(machinetoken.FeatureMetadata))
	expect(t, "jwt, metadata copy", jwtSVID(t, tg, md, id, "db"), 401, "unauthorized")
	anyJWT := restrict(t, tg.Token, time.Minute, kindScope(machinetoken.SVIDJWT))
	expect(t, "jwt, no audience", jwtSVID(t, tg, anyJWT, id), 400, "bad_request")
	expect(t, "jwt, outside the namespace", jwtSVID(t, tg, anyJWT, "spiffe://"+s.td.Name()+"/app/not-"+tg.App+"/workload/x", "db"), 400, "bad_request")
	expect(t, "jwt, not an id", jwtSVID(t, tg, anyJWT, "not an id", "db"), 400, "bad_request")
}
