package agenttest

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/machinetoken"
	"github.com/wicket-sh/wicket/internal/oidc"
	"github.com/wicket-sh/wicket/internal/spiffe"
)

// The fake's SVID endpoints (docs/spiffe.md, "Issuer endpoints"): GET
// /v1/svids/bundle, POST /v1/svids/x509 and POST /v1/svids/jwt, with the
// real issuer's checks (the copy verified for the svid feature, the ID
// asked for and a JWT-SVID's audiences; the CSR's SAN; the machine's
// namespace; no SVID outliving the copy) and its default lifetimes,
// signed by an in-memory CA of internal/spiffe. The contract
// (issuertest) holds both to the same answers.

// Defaults of a default-config issuer ([spiffe]).
const (
	defaultX509SVIDTTL  = time.Hour
	defaultJWTSVIDTTL   = 5 * time.Minute
	bundleRefreshHint   = 5 * time.Minute
	trustDomainTemplate = "{org}.wicket.internal"
)

// svidState is the fake's SPIFFE side, under Issuer.mu.
type svidState struct {
	ca               *spiffe.CA
	prev             []*spiffe.CA // rotated out, still in the bundle
	jwtKey           *oidc.Key    // JWT-SVIDs' own key, as the issuer's spiffe-jwt family: never in the OIDC JWKS
	x509TTL, jwtTTL  time.Duration
	bundleRefreshFor time.Duration
}

func (is *Issuer) initSVIDs() error {
	td, err := is.trustDomain()
	if err != nil {
		return err
	}
	ca, err := spiffe.NewCA(td, time.Now(), 30*24*time.Hour, 0)
	if err != nil {
		return err
	}
	jwtKey, err := oidc.GenerateKey(oidc.ES256, time.Now(), 0)
	if err != nil {
		return err
	}
	is.svids = svidState{ca: ca, jwtKey: jwtKey, x509TTL: defaultX509SVIDTTL, jwtTTL: defaultJWTSVIDTTL, bundleRefreshFor: bundleRefreshHint}
	return nil
}

// TrustDomain is the registered machine's org's trust domain (the real
// issuer's default template, "{org}.wicket.internal").
func (is *Issuer) TrustDomain() spiffeid.TrustDomain {
	td, _ := is.trustDomain()
	return td
}

func (is *Issuer) trustDomain() (spiffeid.TrustDomain, error) {
	return spiffe.TrustDomainFor(trustDomainTemplate, nil, is.Machine().Org)
}

// SetX509SVIDTTL sets the life of X.509-SVIDs issued from now on (a real
// issuer allows 1m at least; tests may go lower).
func (is *Issuer) SetX509SVIDTTL(d time.Duration) {
	is.mu.Lock()
	defer is.mu.Unlock()
	is.svids.x509TTL = d
}

// SetJWTSVIDTTL sets the life of JWT-SVIDs issued from now on.
func (is *Issuer) SetJWTSVIDTTL(d time.Duration) {
	is.mu.Lock()
	defer is.mu.Unlock()
	is.svids.jwtTTL = d
}

// SetBundleRefreshHint sets the bundle's spiffe_refresh_hint.
func (is *Issuer) SetBundleRefreshHint(d time.Duration) {
	is.mu.Lock()
	defer is.mu.Unlock()
	is.svids.bundleRefreshFor = d
}

// RotateCA replaces the CA: SVIDs issued from now on chain to the new
// one, and the bundle holds both.
func (is *Issuer) RotateCA() error {
	td, err := is.trustDomain()
	if err != nil {
		return err
	}
	ca, err := spiffe.NewCA(td, time.Now(), 30*24*time.Hour, 0)
	if err != nil {
		return err
	}
	is.mu.Lock()
	defer is.mu.Unlock()
	is.svids.prev = append(is.svids.prev, is.svids.ca)
	is.svids.ca = ca
	return nil
}

// CA is the CA that signs now.
func (is *Issuer) CA() *spiffe.CA {
	is.mu.Lock()
	defer is.mu.Unlock()
	return is.svids.ca
}

func (is *Issuer) svidRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/svids/bundle", is.handleSVIDBundle)
	mux.HandleFunc("POST /v1/svids/x509", is.handleX509SVID)
	mux.HandleFunc("POST /v1/svids/jwt", is.handleJWTSVID)
}

// decodeStrict decodes a JSON body refusing unknown fields, as the
// issuer's readSVIDBody does.
func decodeStrict(body []byte, v any) error {
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// bundleDoc is the trust domain's SPIFFE bundle: every CA and the
// JWT-SVID key (never the OIDC signing key, as on the issuer).
func (is *Issuer) bundleDoc(td spiffeid.TrustDomain) ([]byte, error) {
	is.mu.Lock()
	cas := append([]*spiffe.CA{is.svids.ca}, is.svids.prev...)
	hint, jwtKey := is.svids.bundleRefreshFor, is.svids.jwtKey
	is.mu.Unlock()
	set, err := oidc.NewKeySet([]*oidc.Key{jwtKey})
	if err != nil {
		return nil, err
	}
	now := time.Now()
	b, err := spiffe.NewBundle(td, cas, set.JWKS(now, time.Hour), hint, uint64(now.Unix()))
	if err != nil {
		return nil, err
	}
	return b.Marshal()
}

func (is *Issuer) handleSVIDBundle(w http.ResponseWriter, r *http.Request) {
	if _, ok := is.verify(w, r, nil, machinetoken.Request{Feature: machinetoken.FeatureSVID, SVIDKind: machinetoken.SVIDBundle}); !ok {
		return
	}
	m := is.Machine()
	td, err := is.trustDomain()
	if err != nil {
		writeError(w, 500, api.CodeInternal, "internal error")
		return
	}
	id, err := spiffe.MachineID(td, m.App, m.MachineName)
	if err != nil {
		writeError(w, 500, api.CodeInternal, "internal error")
		return
	}
	doc, err := is.bundleDoc(td)
	if err != nil {
		writeError(w, 500, api.CodeInternal, "internal error")
		return
	}
	is.BundleCalls.Add(1)
	writeJSON(w, 200, api.SVIDBundleReply{TrustDomain: td.Name(), SPIFFEID: id.String(), Bundle: doc})
}

// authorizeSVID is the issuer's gate: the copy verified for the svid
// feature, id and aud; then the request well formed (reqErr) and id in
// the machine's namespace (400 otherwise). It answers refusals itself.
func (is *Issuer) authorizeSVID(w http.ResponseWriter, r *http.Request, body []byte, kind machinetoken.SVIDKind, id spiffeid.ID, aud []string, reqErr error) (*machinetoken.Verified, bool) {
	q := machinetoken.Request{Feature: machinetoken.FeatureSVID, SVIDKind: kind, Audience: aud}
	if !id.IsZero() {
		q.SPIFFEID = id.String()
	}
	v, ok := is.verify(w, r, body, q)
	if !ok {
		return nil, false
	}
	if reqErr != nil {
		writeError(w, 400, api.CodeBadRequest, "bad request")
		return nil, false
	}
	m := is.Machine()
	td, err := is.trustDomain()
	if err == nil {
		err = spiffe.CheckNamespace(id, td, m.App, m.MachineName)
	}
	if err != nil {
		writeError(w, 400, api.CodeBadRequest, "bad request")
		return nil, false
	}
	return v, true
}

// capAt is the issuer's capAtToken: now+ttl, never past the copy's end;
// ok false (answered 401) when the copy ends now.
func (is *Issuer) capAt(w http.ResponseWriter, v *machinetoken.Verified, now time.Time, ttl time.Duration) (time.Time, bool) {
	exp := now.Add(ttl)
	if v.NotAfter.Before(exp) {
		exp = v.NotAfter
	}
	if !exp.After(now) {
		is.Unauthorized.Add(1)
		writeError(w, http.StatusUnauthorized, api.CodeUnauthorized, "unauthorized")
		return exp, false
	}
	return exp, true
}

func (is *Issuer) handleX509SVID(w http.ResponseWriter, r *http.Request) {
	body := readBody(r)
	var req api.X509SVIDRequest
	reqErr := decodeStrict(body, &req)
	csr, id, csrErr := spiffe.ParseCSR(req.CSR)
	if reqErr == nil {
		reqErr = csrErr
	}
	v, ok := is.authorizeSVID(w, r, body, machinetoken.SVIDX509, id, nil, reqErr)
	if !ok {
		return
	}
	is.mu.Lock()
	ca, ttl := is.svids.ca, is.svids.x509TTL
	is.mu.Unlock()
	now := time.Now()
	exp, ok := is.capAt(w, v, now, ttl)
	if !ok {
		return
	}
	der, end, err := spiffe.SignX509SVID(ca, csr, id, now, exp)
	if err != nil {
		writeError(w, 500, api.CodeInternal, "internal error")
		return
	}
	is.X509SVIDCalls.Add(1)
	writeJSON(w, 200, api.X509SVIDReply{SPIFFEID: id.String(), CertChain: [][]byte{der}, ExpiresAt: end.UTC()})
}

func (is *Issuer) handleJWTSVID(w http.ResponseWriter, r *http.Request) {
	body := readBody(r)
	var req api.JWTSVIDRequest
	reqErr := decodeStrict(body, &req)
	var id spiffeid.ID
	if reqErr == nil {
		id, reqErr = spiffeid.FromString(req.SPIFFEID)
	}
	if reqErr == nil {
		reqErr = oidc.ValidateAudience(req.Audience)
	}
	aud := req.Audience
	if len(aud) == 0 {
		// As the issuer: an audience caveat must not read "none asked"
		// as the default.
		aud = []string{""}
	}
	v, ok := is.authorizeSVID(w, r, body, machinetoken.SVIDJWT, id, aud, reqErr)
	if !ok {
		return
	}
	is.mu.Lock()
	ttl := is.svids.jwtTTL
	is.mu.Unlock()
	now := time.Now()
	exp, ok := is.capAt(w, v, now, ttl)
	if !ok {
		return
	}
	jti := make([]byte, 12)
	rand.Read(jti)
	is.mu.Lock()
	key := is.svids.jwtKey
	is.mu.Unlock()
	tok, err := oidc.SignJWTSVID(key, oidc.JWTSVIDClaims{
		Subject: id.String(), Audience: req.Audience, IssuedAt: now, Expiry: exp, ID: hex.EncodeToString(jti),
	})
	if err != nil {
		writeError(w, 500, api.CodeInternal, "internal error")
		return
	}
	is.JWTSVIDCalls.Add(1)
	writeJSON(w, 200, api.JWTSVIDReply{SPIFFEID: id.String(), Token: tok, ExpiresAt: exp.UTC().Truncate(time.Second)})
}

// readBody reads at most 64 KiB, as the issuer's readSVIDBody.
func readBody(r *http.Request) []byte {
	b, _ := io.ReadAll(io.LimitReader(r.Body, 64<<10))
	return b
}

// Bundle is the trust domain's bundle as GET /v1/svids/bundle serves it:
// what a relying party of the machine's SVIDs trusts.
func (is *Issuer) Bundle(t testing.TB) *spiffebundle.Bundle {
	t.Helper()
	td := is.TrustDomain()
	doc, err := is.bundleDoc(td)
	if err != nil {
		t.Fatal(err)
	}
	b, err := spiffebundle.Parse(td, doc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
