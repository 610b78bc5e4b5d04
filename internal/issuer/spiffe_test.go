package issuer

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

	gooidc "github.com/coreos/go-oidc/v3/oidc"
	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/issuer/issuertest"
	"github.com/wicket-sh/wicket/internal/machinetoken"
	"github.com/wicket-sh/wicket/internal/sockettest"
)

// svidCopy attenuates tok the way the agent does for one SVID request: an
// X.509-SVID's copy without aud, a JWT-SVID's with.
func svidCopy(t *testing.T, tok string, now time.Time, ttl time.Duration, id string, aud ...string) string {
	t.Helper()
	kind := machinetoken.SVIDX509
	if aud != nil {
		kind = machinetoken.SVIDJWT
	}
	c, err := machinetoken.RestrictScope(tok, now, ttl, machinetoken.Scope{
		Features: []machinetoken.Feature{machinetoken.FeatureSVID}, SVIDKinds: []machinetoken.SVIDKind{kind},
		SPIFFEIDs: []string{id}, Audiences: aud})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// kindCopy binds tok to one kind of SVID request and nothing more: the
// issuer takes no SVID request from a token that is not bound to kinds
// (the machine token itself included), so tests that mean "only the
// namespace rule stands in the way" use this.
func kindCopy(t *testing.T, tok string, kind machinetoken.SVIDKind) string {
	t.Helper()
	// Valid for days around now: tests move the issuer's clock.
	c, err := machinetoken.RestrictScope(tok, time.Now().Add(-24*time.Hour), 7*24*time.Hour, machinetoken.Scope{
		Features: []machinetoken.Feature{machinetoken.FeatureSVID}, SVIDKinds: []machinetoken.SVIDKind{kind}})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func csrFor(t *testing.T, uris ...string) []byte {
	t.Helper()
	der, _ := issuertest.CSR(t, uris...)
	return der
}

func x509Body(csr []byte) string {
	b, _ := json.Marshal(api.X509SVIDRequest{CSR: csr})
	return string(b)
}

func (ti *testIssuer) svidBundle(t *testing.T, tok string) (api.SVIDBundleReply, *spiffebundle.Bundle) {
	t.Helper()
	r := ti.call(t, "GET", "/v1/svids/bundle", kindCopy(t, tok, machinetoken.SVIDBundle), "")
	if r.status != 200 {
		t.Fatalf("bundle: %d %s", r.status, r.body)
	}
	var out api.SVIDBundleReply
	if err := json.Unmarshal([]byte(r.body), &out); err != nil {
		t.Fatal(err)
	}
	b, err := spiffebundle.Parse(spiffeid.RequireTrustDomainFromString(out.TrustDomain), out.Bundle)
	if err != nil {
		t.Fatalf("bundle: %v", err)
	}
	return out, b
}

func x509Reply(t *testing.T, r resp) *x509.Certificate {
	t.Helper()
	if r.status != 200 {
		t.Fatalf("x509 svid: %d %s", r.status, r.body)
	}
	var out api.X509SVIDReply
	if err := json.Unmarshal([]byte(r.body), &out); err != nil || len(out.CertChain) != 1 {
		t.Fatalf("x509 svid reply %s: %v", r.body, err)
	}
	c, err := x509.ParseCertificate(out.CertChain[0])
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// An X.509-SVID signed from a CSR verifies with go-spiffe against the
// bundle the issuer publishes, for the machine's own ID, for 1 h by default.
func TestX509SVID_VerifiesAgainstPublishedBundle(t *testing.T) {
	ti := startIssuer(t, shortDir(t), nil)
	_, tok := ti.addMachine(t, devSpec)
	info, bundle := ti.svidBundle(t, tok)
	if info.TrustDomain != "dev.wicket.internal" || info.SPIFFEID != "spiffe://dev.wicket.internal/app/dev-app/machine/m1" {
		t.Fatalf("bundle reply %+v", info)
	}
	now := ti.clock.Now()
	cp := svidCopy(t, tok, now, 2*time.Hour, info.SPIFFEID)
	leaf := x509Reply(t, ti.call(t, "POST", "/v1/svids/x509", cp, x509Body(csrFor(t, info.SPIFFEID))))
	id, _, err := x509svid.Verify([]*x509.Certificate{leaf}, bundle)
	if err != nil || id.String() != info.SPIFFEID {
		t.Fatalf("x509svid.Verify = %s, %v", id, err)
	}
	if d := leaf.NotAfter.Sub(now); d < 59*time.Minute || d > time.Hour {
		t.Errorf("svid lives %s, want the default 1h", d)
	}
	// The public bundle endpoint serves the same trust domain's roots.
	r := ti.call(t, "GET", "/dev/.well-known/spiffe-bundle", "", "")
	pub, err := spiffebundle.Parse(spiffeid.RequireTrustDomainFromString("dev.wicket.internal"), []byte(r.body))
	if r.status != 200 || err != nil {
		t.Fatalf("bundle endpoint: %d %v", r.status, err)
	}
	if _, _, err := x509svid.Verify([]*x509.Certificate{leaf}, pub); err != nil {
		t.Errorf("svid does not verify against the public bundle: %v", err)
	}
	if _, ok := pub.RefreshHint(); !ok {
		t.Error("no spiffe_refresh_hint")
	}
	if _, ok := pub.SequenceNumber(); !ok {
		t.Error("no spiffe_sequence")
	}
	if r := ti.call(t, "GET", "/nope/.well-known/spiffe-bundle", "", ""); r.status != 404 {
		t.Errorf("bundle of an org without a CA: %d", r.status)
	}
	logs := ti.logs.String()
	if !strings.Contains(logs, "x509 svid issued") || !strings.Contains(logs, "spiffe_id="+info.SPIFFEID) {
		t.Errorf("no audit line for the issuance:\n%s", logs)
	}
}

// The issuer refuses any SVID outside the presenting machine's namespace
// and any CSR with SANs beyond the SPIFFE ID, whatever the agent asks.
func TestX509SVID_OutOfNamespaceAndExtraSANsRefused(t *testing.T) {
	ti := startIssuer(t, shortDir(t), nil)
	_, tok := ti.addMachine(t, devSpec)
	other := devSpec
	other.Name = "m2"
	ti.addMachine(t, other)
	const td = "spiffe://dev.wicket.internal"
	for name, csr := range map[string][]byte{
		"another machine":       csrFor(t, td+"/app/dev-app/machine/m2"),
		"another app":           csrFor(t, td+"/app/other/machine/m1"),
		"another app workload":  csrFor(t, td+"/app/other/workload/w"),
		"another trust domain":  csrFor(t, "spiffe://other.example/app/dev-app/machine/m1"),
		"the trust domain":      csrFor(t, td),
		"two ids":               csrFor(t, td+"/app/dev-app/machine/m1", td+"/app/dev-app/workload/w"),
		"no id":                 csrFor(t),
		"extra uri of a scheme": csrFor(t, td+"/app/dev-app/machine/m1", "https://web.example"),
	} {
		// A copy bound only to the kind: only the namespace rule stands in
		// the way.
		if r := ti.call(t, "POST", "/v1/svids/x509", kindCopy(t, tok, machinetoken.SVIDX509), x509Body(csr)); r.status != 400 || !strings.Contains(r.body, api.CodeBadRequest) {
			t.Errorf("%s: %d %s, want 400", name, r.status, r.body)
		}
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse(td + "/app/dev-app/machine/m1")
	dns, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}, DNSNames: []string{"m1.example"}}, key)
	if r := ti.call(t, "POST", "/v1/svids/x509", kindCopy(t, tok, machinetoken.SVIDX509), x509Body(dns)); r.status != 400 {
		t.Errorf("CSR with a DNS SAN: %d %s, want 400", r.status, r.body)
	}
	// A workload of the machine's own app is in its namespace.
	leaf := x509Reply(t, ti.call(t, "POST", "/v1/svids/x509", kindCopy(t, tok, machinetoken.SVIDX509), x509Body(csrFor(t, td+"/app/dev-app/workload/frontend"))))
	if leaf.URIs[0].String() != td+"/app/dev-app/workload/frontend" {
		t.Errorf("workload svid for %s", leaf.URIs[0])
	}
	if !strings.Contains(ti.Metrics()[0].Name, "wicket_") || ti.svidsRefused.Load() != 9 {
		t.Errorf("svids_refused = %d, want 9", ti.svidsRefused.Load())
	}
}

// A copy captured on its way to the issuer buys at most an SVID for the
// ID it names, expiring no later than the copy; OIDC copies get no SVID
// and SVID copies no OIDC token.
func TestSVID_CapturedCopyBound(t *testing.T) {
	ti := startIssuer(t, shortDir(t), nil)
	_, tok := ti.addMachine(t, devSpec)
	info, _ := ti.svidBundle(t, tok)
	wl := "spiffe://dev.wicket.internal/app/dev-app/workload/frontend"
	now := ti.clock.Now()
	cp := svidCopy(t, tok, now, 2*time.Minute, info.SPIFFEID)
	if r := ti.call(t, "POST", "/v1/svids/x509", cp, x509Body(csrFor(t, wl))); r.status != 401 {
		t.Errorf("copy for the machine's id, CSR for a workload id: %d, want 401", r.status)
	}
	leaf := x509Reply(t, ti.call(t, "POST", "/v1/svids/x509", cp, x509Body(csrFor(t, info.SPIFFEID))))
	if end := now.Add(2 * time.Minute); leaf.NotAfter.After(end) {
		t.Errorf("copy valid until %s bought an svid until %s", end, leaf.NotAfter)
	}
	jwtCopy := svidCopy(t, tok, now, 2*time.Minute, info.SPIFFEID, "db")
	for name, tc := range map[string]struct{ path, body, tok string }{
		"jwt copy, other audience": {"/v1/svids/jwt", `{"spiffe_id":"` + info.SPIFFEID + `","aud":["other"]}`, jwtCopy},
		"jwt copy, other id":       {"/v1/svids/jwt", `{"spiffe_id":"` + wl + `","aud":["db"]}`, jwtCopy},
		"jwt copy, x509 svid":      {"/v1/svids/x509", x509Body(csrFor(t, info.SPIFFEID)), jwtCopy},
		"x509 copy, jwt svid":      {"/v1/svids/jwt", `{"spiffe_id":"` + info.SPIFFEID + `","aud":["db"]}`, cp},
		"svid copy, oidc token":    {"/v1/tokens/oidc", `{"aud":"db"}`, cp},
		"svid copy, metadata":      {"/v1/machines/self", "", cp},
		"svid copy, bundle read":   {"/v1/svids/bundle", "", cp},
		"oidc copy, x509 svid":     {"/v1/svids/x509", x509Body(csrFor(t, info.SPIFFEID)), agentCopy(t, tok, now, time.Minute, "db")},
		"oidc copy, jwt svid":      {"/v1/svids/jwt", `{"spiffe_id":"` + info.SPIFFEID + `","aud":["db"]}`, agentCopy(t, tok, now, time.Minute, "db")},
		"expired copy, x509 svid":  {"/v1/svids/x509", x509Body(csrFor(t, info.SPIFFEID)), svidCopy(t, tok, now.Add(-time.Hour), time.Minute, info.SPIFFEID)},
	} {
		method := "POST"
		if tc.path == "/v1/machines/self" || tc.path == "/v1/svids/bundle" {
			method = "GET"
		}
		if r := ti.call(t, method, tc.path, tc.tok, tc.body); r.status != 401 {
			t.Errorf("%s: %d %s, want 401", name, r.status, r.body)
		}
	}
	if r := ti.call(t, "POST", "/v1/svids/jwt", jwtCopy, `{"spiffe_id":"`+info.SPIFFEID+`","aud":["db"]}`); r.status != 200 {
		t.Errorf("jwt copy for its own id and audience: %d %s", r.status, r.body)
	}
}

// Each copy the agent sends is bound to the one kind of SVID request it
// was made for: captured, the bundle read's copy (no SPIFFE ID caveat)
// buys no SVID for any ID, and an X.509-SVID's copy no JWT-SVID for its
// ID, whatever the audience. A token without the kinds caveat (the
// machine token itself) keeps every kind.
func TestSVID_CapturedCopyBoundToKind(t *testing.T) {
	ti := startIssuer(t, shortDir(t), nil)
	_, tok := ti.addMachine(t, devSpec)
	info, _ := ti.svidBundle(t, tok)
	wl := "spiffe://dev.wicket.internal/app/dev-app/workload/frontend"
	now := ti.clock.Now()
	bundleCopy, err := machinetoken.RestrictScope(tok, now, time.Minute, machinetoken.Scope{
		Features: []machinetoken.Feature{machinetoken.FeatureSVID}, SVIDKinds: []machinetoken.SVIDKind{machinetoken.SVIDBundle}})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := ti.svidBundle(t, bundleCopy); got.SPIFFEID != info.SPIFFEID {
		t.Errorf("bundle copy read %+v", got)
	}
	x509Copy := svidCopy(t, tok, now, time.Hour, wl)
	jwtCopy := svidCopy(t, tok, now, 5*time.Minute, wl, "db")
	jwt := func(id, aud string) string { return `{"spiffe_id":"` + id + `","aud":["` + aud + `"]}` }
	for name, tc := range map[string]struct{ method, path, body, tok string }{
		"bundle copy, x509 svid of the machine":  {"POST", "/v1/svids/x509", x509Body(csrFor(t, info.SPIFFEID)), bundleCopy},
		"bundle copy, x509 svid of a workload":   {"POST", "/v1/svids/x509", x509Body(csrFor(t, wl)), bundleCopy},
		"bundle copy, jwt svid of the machine":   {"POST", "/v1/svids/jwt", jwt(info.SPIFFEID, "db"), bundleCopy},
		"bundle copy, jwt svid of a workload":    {"POST", "/v1/svids/jwt", jwt(wl, "db"), bundleCopy},
		"x509 copy, jwt svid of its id":          {"POST", "/v1/svids/jwt", jwt(wl, "db"), x509Copy},
		"x509 copy, jwt svid of its id, any aud": {"POST", "/v1/svids/jwt", jwt(wl, "https://attacker.example"), x509Copy},
		"x509 copy, bundle read":                 {"GET", "/v1/svids/bundle", "", x509Copy},
		"jwt copy, x509 svid of its id":          {"POST", "/v1/svids/x509", x509Body(csrFor(t, wl)), jwtCopy},
		"jwt copy, bundle read":                  {"GET", "/v1/svids/bundle", "", jwtCopy},
	} {
		if r := ti.call(t, tc.method, tc.path, tc.tok, tc.body); r.status != 401 {
			t.Errorf("%s: %d %s, want 401", name, r.status, r.body)
		}
	}
	// Each copy still does what it was made for; the token itself (no
	// kinds caveat: what an agent that predates the caveat would send)
	// gets no SVID request of any kind.
	x509Reply(t, ti.call(t, "POST", "/v1/svids/x509", x509Copy, x509Body(csrFor(t, wl))))
	if r := ti.call(t, "POST", "/v1/svids/jwt", jwtCopy, jwt(wl, "db")); r.status != 200 {
		t.Errorf("jwt copy, jwt svid: %d %s", r.status, r.body)
	}
	for name, req := range map[string][3]string{
		"bundle": {"GET", "/v1/svids/bundle", ""},
		"x509":   {"POST", "/v1/svids/x509", x509Body(csrFor(t, wl))},
		"jwt":    {"POST", "/v1/svids/jwt", jwt(wl, "db")},
	} {
		if r := ti.call(t, req[0], req[1], tok, req[2]); r.status != 401 {
			t.Errorf("machine token, %s: %d %s, want 401", name, r.status, r.body)
		}
	}
	x509Reply(t, ti.call(t, "POST", "/v1/svids/x509", kindCopy(t, tok, machinetoken.SVIDX509), x509Body(csrFor(t, wl))))
}

// A JWT-SVID validates with go-spiffe against the issuer's bundle: sub is
// the SPIFFE ID, aud what was asked; aud is required.
func TestJWTSVID_ValidatesWithGoSPIFFE(t *testing.T) {
	ti := startIssuer(t, shortDir(t), nil)
	_, tok := ti.addMachine(t, devSpec)
	info, bundle := ti.svidBundle(t, tok)
	r := ti.call(t, "POST", "/v1/svids/jwt", kindCopy(t, tok, machinetoken.SVIDJWT), `{"spiffe_id":"`+info.SPIFFEID+`","aud":["db","cache"]}`)
	if r.status != 200 {
		t.Fatalf("jwt svid: %d %s", r.status, r.body)
	}
	var out api.JWTSVIDReply
	json.Unmarshal([]byte(r.body), &out)
	sv, err := jwtsvid.ParseAndValidate(out.Token, bundle, []string{"db"})
	if err != nil || sv.ID.String() != info.SPIFFEID {
		t.Fatalf("jwtsvid.ParseAndValidate = %v, %v", sv, err)
	}
	if d := time.Until(sv.Expiry); d > 5*time.Minute+time.Second {
		t.Errorf("jwt svid lives %s, want at most the default 5m", d)
	}
	if _, err := jwtsvid.ParseAndValidate(out.Token, bundle, []string{"other"}); err == nil {
		t.Error("validated for an audience it was not issued for")
	}
	for _, body := range []string{`{"spiffe_id":"` + info.SPIFFEID + `"}`, `{"spiffe_id":"` + info.SPIFFEID + `","aud":[]}`} {
		if r := ti.call(t, "POST", "/v1/svids/jwt", kindCopy(t, tok, machinetoken.SVIDJWT), body); r.status != 400 {
			t.Errorf("%s: %d, want 400 (aud required)", body, r.status)
		}
	}
	if !strings.Contains(ti.logs.String(), "jwt svid issued") {
		t.Error("no audit line")
	}
}

// CA rotation pre-publishes the next CA before it signs and keeps the
// old one in the bundle, so SVIDs of either verify throughout.
func TestSPIFFECA_RotationPrepublishes(t *testing.T) {
	ti := startIssuer(t, shortDir(t), nil)
	_, tok := ti.addMachine(t, devSpec)
	info, _ := ti.svidBundle(t, tok)
	before := x509Reply(t, ti.call(t, "POST", "/v1/svids/x509", kindCopy(t, tok, machinetoken.SVIDX509), x509Body(csrFor(t, info.SPIFFEID))))
	next, err := ti.RotateOrgCA(t.Context(), "dev")
	if err != nil {
		t.Fatal(err)
	}
	if next.State != "pending" {
		t.Errorf("new CA state %s, want pending", next.State)
	}
	_, b := ti.svidBundle(t, tok)
	if n := len(b.X509Authorities()); n != 2 {
		t.Fatalf("bundle has %d CAs during prepublish, want 2", n)
	}
	during := x509Reply(t, ti.call(t, "POST", "/v1/svids/x509", kindCopy(t, tok, machinetoken.SVIDX509), x509Body(csrFor(t, info.SPIFFEID))))
	if string(during.AuthorityKeyId) != string(before.AuthorityKeyId) {
		t.Error("the pending CA signed before its prepublish delay")
	}
	ti.clock.Advance(time.Hour + time.Minute)
	after := x509Reply(t, ti.call(t, "POST", "/v1/svids/x509", kindCopy(t, tok, machinetoken.SVIDX509), x509Body(csrFor(t, info.SPIFFEID))))
	if string(after.AuthorityKeyId) == string(before.AuthorityKeyId) {
		t.Error("the old CA still signs after the new one activated")
	}
	_, b = ti.svidBundle(t, tok)
	for name, c := range map[string]*x509.Certificate{"before": before, "after": after} {
		// The old CA's last SVID, in its last second, and the new CA's.
		if _, _, err := x509svid.Verify([]*x509.Certificate{c}, b, x509svid.WithTime(c.NotAfter.Add(-time.Second))); err != nil {
			t.Errorf("svid signed %s the rotation does not verify: %v", name, err)
		}
	}
	if err := ti.maintainKeys(t.Context()); err != nil {
		t.Fatal(err)
	}
	ti.clock.Advance(25 * time.Hour)
	if err := ti.maintainKeys(t.Context()); err != nil {
		t.Fatal(err)
	}
	_, b = ti.svidBundle(t, tok)
	if n := len(b.X509Authorities()); n != 1 {
		t.Errorf("bundle has %d CAs after the grace period, want 1", n)
	}
}

func (ti *testIssuer) jwtSVID(t *testing.T, tok, id, aud string) string {
	t.Helper()
	r := ti.call(t, "POST", "/v1/svids/jwt", kindCopy(t, tok, machinetoken.SVIDJWT), `{"spiffe_id":"`+id+`","aud":["`+aud+`"]}`)
	if r.status != 200 {
		t.Fatalf("jwt svid: %d %s", r.status, r.body)
	}
	var out api.JWTSVIDReply
	if err := json.Unmarshal([]byte(r.body), &out); err != nil {
		t.Fatal(err)
	}
	return out.Token
}

// oidcJWKSKids is every kid in the org's OIDC JWKS, found through its
// discovery document as a relying party finds it.
func (ti *testIssuer) oidcJWKSKids(t *testing.T, org string) map[string]bool {
	t.Helper()
	r := ti.call(t, "GET", "/"+org+"/.well-known/openid-configuration", "", "")
	var disc struct {
		JWKSURI string `json:"jwks_uri"`
	}
	if err := json.Unmarshal([]byte(r.body), &disc); err != nil || !strings.HasPrefix(disc.JWKSURI, ti.url) {
		t.Fatalf("discovery %d %s: %v", r.status, r.body, err)
	}
	r = ti.call(t, "GET", strings.TrimPrefix(disc.JWKSURI, ti.url), "", "")
	var set jose.JSONWebKeySet
	if err := json.Unmarshal([]byte(r.body), &set); err != nil || len(set.Keys) == 0 {
		t.Fatalf("jwks %d %s: %v", r.status, r.body, err)
	}
	kids := map[string]bool{}
	for _, k := range set.Keys {
		kids[k.KeyID] = true
	}
	return kids
}

// A JWT-SVID is no OIDC token of the org: its signing key is one of the
// org's JWT-SVID keys, which are in its SPIFFE bundle and never in its
// OIDC JWKS, so go-oidc (a relying party trusting the org's issuer)
// refuses it even when told to skip the issuer check; and it carries
// none of an OIDC token's claims but sub, aud, exp, iat and jti.
func TestJWTSVID_NotAnOIDCToken(t *testing.T) {
	ti := startIssuer(t, shortDir(t), nil)
	_, tok := ti.addMachine(t, devSpec)
	info, bundle := ti.svidBundle(t, tok)
	ti.oidcToken(t, tok, `{"aud":"db"}`) // the org's OIDC keys exist and are published
	svid := ti.jwtSVID(t, tok, info.SPIFFEID, "db")
	ctx := t.Context()
	provider, err := gooidc.NewProvider(ctx, ti.url+"/dev")
	if err != nil {
		t.Fatalf("discovery: %v", err)
	}
	for name, cfg := range map[string]*gooidc.Config{
		"as is":               {ClientID: "db"},
		"issuer check off":    {ClientID: "db", SkipIssuerCheck: true},
		"every check but sig": {ClientID: "db", SkipIssuerCheck: true, SkipExpiryCheck: true, SkipClientIDCheck: true},
	} {
		if _, err := provider.Verifier(cfg).Verify(ctx, svid); err == nil {
			t.Errorf("go-oidc (%s) accepted a jwt-svid as an oidc token of the org", name)
		}
	}
	var disc struct {
		JWKSURI string `json:"jwks_uri"`
	}
	provider.Claims(&disc)
	if _, err := gooidc.NewRemoteKeySet(ctx, disc.JWKSURI).VerifySignature(ctx, svid); err == nil {
		t.Error("the jwt-svid's signature verifies against the org's oidc jwks")
	}
	kid := kidOf(t, svid)
	oidcKids := ti.oidcJWKSKids(t, "dev")
	if oidcKids[kid] {
		t.Errorf("the jwt-svid's kid %s is in the org's oidc jwks", kid)
	}
	bundleKids := map[string]bool{}
	for k := range bundle.JWTAuthorities() {
		bundleKids[k] = true
		if oidcKids[k] {
			t.Errorf("bundle jwt-svid key %s is in the org's oidc jwks", k)
		}
	}
	if !bundleKids[kid] {
		t.Errorf("the jwt-svid's kid %s is not in the bundle (%v)", kid, bundleKids)
	}
	for k := range oidcKids {
		if bundleKids[k] {
			t.Errorf("oidc key %s is in the spiffe bundle", k)
		}
	}
	// The claims: a JWT-SVID's and nothing of an OIDC token's.
	sv, err := jwtsvid.ParseAndValidate(svid, bundle, []string{"db"})
	if err != nil {
		t.Fatalf("jwtsvid.ParseAndValidate: %v", err)
	}
	var names []string
	for k := range sv.Claims {
		names = append(names, k)
	}
	slices.Sort(names)
	if want := []string{"aud", "exp", "iat", "jti", "sub"}; !slices.Equal(names, want) {
		t.Errorf("jwt-svid claims %v, want %v", names, want)
	}
	// The public bundle endpoint publishes the same JWT-SVID keys.
	r := ti.call(t, "GET", "/dev/.well-known/spiffe-bundle", "", "")
	pub, err := spiffebundle.Parse(spiffeid.RequireTrustDomainFromString(info.TrustDomain), []byte(r.body))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := pub.FindJWTAuthority(kid); !ok {
		t.Error("the public bundle lacks the jwt-svid's key")
	}
}

// Rotating an org's JWT-SVID key (kind spiffe-jwt) pre-publishes the new
// key in the bundle before it signs and keeps the old one there for the
// grace; neither ever reaches the OIDC JWKS, and the OIDC key does not
// rotate with it. The key is sealed at rest under its own record.
func TestJWTSVIDKey_RotationPrepublishes(t *testing.T) {
	ti := startIssuer(t, shortDir(t), nil)
	_, tok := ti.addMachine(t, devSpec)
	info, _ := ti.svidBundle(t, tok)
	before := ti.jwtSVID(t, tok, info.SPIFFEID, "db")
	oidcBefore := kidOf(t, ti.oidcToken(t, tok, `{"aud":"db"}`))
	r := sockettest.Do(ti.adminSock, "POST", "/v1/keys/rotate", `{"kind":"spiffe-jwt","org":"dev"}`, nil)
	if r.Status != 200 {
		t.Fatalf("rotate spiffe-jwt: %d %s", r.Status, r.Body)
	}
	var next api.KeyInfo
	json.Unmarshal([]byte(r.Body), &next)
	if next.Kind != "spiffe-jwt" || next.State != "pending" || next.Org != "dev" {
		t.Fatalf("rotated key %+v, want a pending spiffe-jwt key of dev", next)
	}
	_, b := ti.svidBundle(t, tok)
	if _, ok := b.FindJWTAuthority(next.ID); !ok || len(b.JWTAuthorities()) != 2 {
		t.Fatalf("bundle during prepublish has %d jwt keys, the new one %v", len(b.JWTAuthorities()), ok)
	}
	if during := ti.jwtSVID(t, tok, info.SPIFFEID, "db"); kidOf(t, during) != kidOf(t, before) {
		t.Error("the pending jwt-svid key signed before its prepublish delay")
	}
	ti.clock.Advance(16 * time.Minute) // past [oidc] prepublish (15m)
	after := ti.jwtSVID(t, tok, info.SPIFFEID, "db")
	if kidOf(t, after) != next.ID {
		t.Errorf("after the prepublish delay the jwt-svid is signed by %s, want %s", kidOf(t, after), next.ID)
	}
	_, b = ti.svidBundle(t, tok)
	for _, kid := range []string{kidOf(t, before), next.ID} {
		if _, ok := b.FindJWTAuthority(kid); !ok {
			t.Errorf("bundle lacks jwt-svid key %s during the grace", kid)
		}
	}
	oidcKids := ti.oidcJWKSKids(t, "dev")
	if oidcKids[next.ID] || oidcKids[kidOf(t, before)] {
		t.Error("a jwt-svid key is in the oidc jwks")
	}
	if got := kidOf(t, ti.oidcToken(t, tok, `{"aud":"db"}`)); got != oidcBefore {
		t.Errorf("the oidc key changed (%s → %s) with the jwt-svid key's rotation", oidcBefore, got)
	}
	// Listed under its own kind, never with private material.
	keys := sockettest.Do(ti.adminSock, "GET", "/v1/keys", "", nil)
	if !strings.Contains(keys.Body, `"spiffe-jwt"`) || strings.Contains(keys.Body, "PRIVATE") {
		t.Errorf("keys list: %s", keys.Body)
	}
}

// [spiffe] jwt_rotate_every rotates each org's JWT-SVID key on schedule,
// with the same prepublish as a manual rotation, and not its OIDC key.
func TestJWTSVIDKey_ScheduledRotation(t *testing.T) {
	ti := startIssuer(t, shortDir(t), func(c *config.Issuer) { c.SPIFFE.JWTRotateEvery = config.Duration{Duration: 3 * time.Hour} })
	_, tok := ti.addMachine(t, devSpec)
	info, _ := ti.svidBundle(t, tok)
	oidcKid := kidOf(t, ti.oidcToken(t, tok, `{"aud":"db"}`))
	svidKid := kidOf(t, ti.jwtSVID(t, tok, info.SPIFFEID, "db"))
	ti.clock.Advance(3*time.Hour + time.Minute)
	if err := ti.maintainKeys(t.Context()); err != nil {
		t.Fatal(err)
	}
	_, b := ti.svidBundle(t, tok)
	if n := len(b.JWTAuthorities()); n != 2 {
		t.Fatalf("bundle has %d jwt-svid keys after the scheduled rotation, want 2 (old and pending)", n)
	}
	if got := kidOf(t, ti.jwtSVID(t, tok, info.SPIFFEID, "db")); got != svidKid {
		t.Error("the scheduled key signed before its prepublish delay")
	}
	if got := kidOf(t, ti.oidcToken(t, tok, `{"aud":"db"}`)); got != oidcKid {
		t.Error("the oidc key rotated on the jwt-svid schedule")
	}
}
