package issuer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/httpapi"
	"github.com/wicket-sh/wicket/internal/machinetoken"
	"github.com/wicket-sh/wicket/internal/oidc"
	"github.com/wicket-sh/wicket/internal/spiffe"
	"github.com/wicket-sh/wicket/internal/store"
)

// caKind is the store kind of an org's SPIFFE CAs: each org is its own
// trust domain with its own roots.
func caKind(org string) string { return store.KindSPIFFECA + "/" + org }

// caFromRecord rebuilds a CA from its stored record and unsealed bytes.
func caFromRecord(k *store.SealedKey, plain []byte) (*spiffe.CA, error) {
	key, cert, err := spiffe.UnmarshalCA(plain)
	if err != nil {
		return nil, fmt.Errorf("spiffe CA %s: %w", k.ID, err)
	}
	return &spiffe.CA{ID: k.ID, State: k.State, CreatedAt: k.CreatedAt, ActivateAt: k.ActivateAt, RetiredAt: k.RetiredAt,
		Cert: cert, Key: key}, nil
}

func (s *Issuer) putCA(ctx context.Context, org string, ca *spiffe.CA) error {
	plain, err := ca.Marshal()
	if err != nil {
		return err
	}
	defer clear(plain)
	return s.putSealed(ctx, caKind(org), ca.ID, spiffe.CAAlg, ca.State, ca.CreatedAt, ca.ActivateAt, ca.RetiredAt, plain)
}

// trustDomain is org's SPIFFE trust domain, from [spiffe] trust_domains or
// the trust_domain template.
func (s *Issuer) trustDomain(org string) (spiffeid.TrustDomain, error) {
	c := s.cfg().SPIFFE
	return spiffe.TrustDomainFor(c.TrustDomain, c.TrustDomains, org)
}

// ensureOrgCA gives an org its first CA, signing at once: nobody can trust
// a trust domain's bundle before it exists, so there is nothing to
// pre-publish to.
func (s *Issuer) ensureOrgCA(ctx context.Context, org string, td spiffeid.TrustDomain) error {
	return s.ensureOrg(ctx, func(kr *keyring) bool { return len(kr.cas[org]) > 0 }, func() error {
		ca, err := spiffe.NewCA(td, s.now(), s.cfg().SPIFFE.CATTL.Duration, 0)
		if err != nil {
			return err
		}
		if err := s.putCA(ctx, org, ca); err != nil {
			return err
		}
		s.log.Info("created org spiffe ca", "org", org, "trust_domain", td.Name(), "ca_id", ca.ID, "not_after", ca.Cert.NotAfter.UTC().Format(time.RFC3339))
		return nil
	})
}

// RotateOrgCA adds a CA for org that is in the bundle at once and signs
// after [spiffe] ca_prepublish; the current CA is retired at that moment
// and stays in the bundle for ca_grace.
func (s *Issuer) RotateOrgCA(ctx context.Context, org string) (*api.KeyInfo, error) {
	td, err := s.trustDomain(org)
	if err != nil {
		return nil, err
	}
	s.rotateMu.Lock()
	defer s.rotateMu.Unlock()
	cfg := s.cfg().SPIFFE
	cas, ok := s.keys.Load().cas[org]
	if !ok {
		return nil, errUnknownOrg
	}
	changed, next, err := spiffe.Rotate(cas, td, s.now(), cfg.CATTL.Duration, cfg.CAPrepublish.Duration)
	if err != nil {
		return nil, err
	}
	for _, ca := range changed {
		if err := s.putCA(ctx, org, ca); err != nil {
			return nil, err
		}
	}
	if err := s.refreshKeys(ctx); err != nil {
		return nil, err
	}
	s.log.Info("rotated org spiffe ca", "org", org, "ca_id", next.ID, "activate_at", next.ActivateAt.UTC().Format(time.RFC3339))
	return &api.KeyInfo{Kind: store.KindSPIFFECA, Org: org, ID: next.ID, Alg: spiffe.CAAlg, State: next.StateAt(s.now()),
		CreatedAt: next.CreatedAt, ActivateAt: next.ActivateAt}, nil
}

// maintainCAs deletes CAs out of the bundle for good (retired longer than
// ca_grace, or expired) and rotates CAs that are ca_rotate_every old, or
// that would otherwise expire before a successor could be pre-published.
func (s *Issuer) maintainCAs(ctx context.Context, now time.Time) (changed bool, err error) {
	cfg := s.cfg().SPIFFE
	for org, cas := range s.keys.Load().cas {
		var newest *spiffe.CA
		for _, ca := range cas {
			if ca.Expired(now, cfg.CAGrace.Duration) {
				if err := s.store.DeleteKey(ctx, caKind(org), ca.ID); err != nil {
					return changed, fmt.Errorf("prune spiffe ca %s: %w", ca.ID, err)
				}
				s.log.Info("pruned retired spiffe ca", "org", org, "ca_id", ca.ID)
				changed = true
				continue
			}
			if newest == nil || ca.CreatedAt.After(newest.CreatedAt) {
				newest = ca
			}
		}
		if newest == nil {
			continue
		}
		due := cfg.CARotateEvery.Duration > 0 && now.Sub(newest.CreatedAt) >= cfg.CARotateEvery.Duration
		// SVIDs are capped at their CA's end: rotate well before it.
		ending := newest.Cert.NotAfter.Sub(now) <= cfg.CAPrepublish.Duration+cfg.CAGrace.Duration
		if due || ending {
			if _, err := s.RotateOrgCA(ctx, org); err != nil {
				return changed, fmt.Errorf("scheduled spiffe ca rotation for %s: %w", org, err)
			}
		}
	}
	return changed, nil
}

func (s *Issuer) spiffeRoutes(mux *http.ServeMux) {
	mux.Handle("POST /v1/svids/x509", httpapi.Handle(s.log, s.handleX509SVID))
	mux.Handle("POST /v1/svids/jwt", httpapi.Handle(s.log, s.handleJWTSVID))
	mux.Handle("GET /v1/svids/bundle", httpapi.Handle(s.log, s.handleSVIDBundle))
	// The SPIFFE bundle endpoint (https_web profile) of the org's trust
	// domain: public, like the JWKS.
	mux.Handle("GET /{org}/.well-known/spiffe-bundle", httpapi.Handle(s.log, s.handleBundleEndpoint))
}

// svidOrg resolves the trust domain of the machine's org and makes sure it
// has a CA and signing keys; a failure is the issuer's, not the caller's.
func (s *Issuer) svidOrg(ctx context.Context, m *store.Machine) (spiffeid.TrustDomain, *httpapi.Error) {
	td, err := s.trustDomain(m.Org)
	if err != nil {
		return spiffeid.TrustDomain{}, httpapi.InternalError(fmt.Errorf("machine %s: %w", m.ID, err))
	}
	if err := s.ensureOrgCA(ctx, m.Org, td); err != nil {
		err = fmt.Errorf("org %s spiffe ca: %w", m.Org, err)
		if unavailable(err) {
			return td, storeUnavailable(err)
		}
		return td, httpapi.InternalError(err)
	}
	return td, nil
}

// readSVIDBody decodes a small JSON body strictly. It is read before the
// token is checked because the ID it asks for is part of the check (a copy
// is bound to one); a bad body is answered only once the token passes.
func readSVIDBody(r *http.Request, v any) error {
	body, err := io.ReadAll(io.LimitReader(r.Body, 64<<10))
	if err != nil {
		return err
	}
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// refuseSVID answers an SVID request the machine may not have: a CSR or
// ID outside its namespace is the caller's fault (400), logged with why.
func (s *Issuer) refuseSVID(m *store.Machine, ver *machinetoken.Verified, kind machinetoken.SVIDKind, cause error) error {
	s.svidsRefused.Add(1)
	return httpapi.BadRequestError(fmt.Errorf("%s svid request of machine %s (token %s): %w", kind, m.ID, ver.TokenID, cause))
}

// errAnswered says the request has had its reply (the token's 401).
var errAnswered = errors.New("answered")

// answered turns errAnswered into the nil a handler returns once it has
// replied itself.
func answered(err error) error {
	if errors.Is(err, errAnswered) {
		return nil
	}
	return err
}

// authorizeSVID is the one gate of SVID issuance: the copy must pass for
// the svid feature, the kind of SVID (an SVID-kinds caveat binds a copy
// to one), the SPIFFE ID asked for and (JWT) its audiences; then the
// request must be well formed (reqErr) and the ID in the machine's
// namespace, or it is refused whatever the copy says.
func (s *Issuer) authorizeSVID(w http.ResponseWriter, r *http.Request, kind machinetoken.SVIDKind, id spiffeid.ID, aud []string, reqErr error) (*store.Machine, *machinetoken.Verified, error) {
	q := machinetoken.Request{Feature: machinetoken.FeatureSVID, SVIDKind: kind, Audience: aud}
	if !id.IsZero() {
		q.SPIFFEID = id.String()
	}
	m, ver, ok := s.authenticateFor(w, r, q)
	if !ok {
		return nil, nil, errAnswered
	}
	if reqErr != nil {
		return nil, nil, s.refuseSVID(m, ver, kind, reqErr)
	}
	td, herr := s.svidOrg(r.Context(), m)
	if herr != nil {
		return nil, nil, herr
	}
	if err := spiffe.CheckNamespace(id, td, m.App, m.Name); err != nil {
		return nil, nil, s.refuseSVID(m, ver, kind, err)
	}
	return m, ver, nil
}

func (s *Issuer) handleX509SVID(w http.ResponseWriter, r *http.Request) error {
	var req api.X509SVIDRequest
	reqErr := readSVIDBody(r, &req)
	csr, id, csrErr := spiffe.ParseCSR(req.CSR)
	if reqErr == nil {
		reqErr = csrErr
	}
	m, ver, err := s.authorizeSVID(w, r, machinetoken.SVIDX509, id, nil, reqErr)
	if err != nil {
		return answered(err)
	}
	if !s.signing.enter(r.Context()) {
		return nil // the caller went away while queued
	}
	defer s.signing.leave()
	now := s.now()
	exp, capped, ok := s.capAtToken(w, r, ver, now, s.cfg().SPIFFE.X509SVIDTTL.Duration)
	if !ok {
		return nil
	}
	ca, err := spiffe.Signer(s.keys.Load().cas[m.Org], now)
	if err != nil {
		return httpapi.InternalError(fmt.Errorf("org %s: %w", m.Org, err))
	}
	der, end, err := spiffe.SignX509SVID(ca, csr, id, now, exp)
	if err != nil {
		return httpapi.InternalError(err)
	}
	s.x509SVIDsIssued.Add(1)
	s.log.Info("x509 svid issued", "machine_id", m.ID, "org", m.Org, "app", m.App, "spiffe_id", id.String(),
		"ca_id", ca.ID, "token_id", ver.TokenID, "expires_at", end.UTC().Format(time.RFC3339), "capped_at_token_end", capped && !end.Before(exp))
	writeJSON(w, http.StatusOK, api.X509SVIDReply{SPIFFEID: id.String(), CertChain: [][]byte{der}, ExpiresAt: end.UTC()})
	return nil
}

func (s *Issuer) handleJWTSVID(w http.ResponseWriter, r *http.Request) error {
	var req api.JWTSVIDRequest
	reqErr := readSVIDBody(r, &req)
	var id spiffeid.ID
	if reqErr == nil {
		id, reqErr = spiffeid.FromString(req.SPIFFEID)
	}
	if reqErr == nil {
		reqErr = oidc.ValidateAudience(req.Audience)
	}
	aud := req.Audience
	if len(aud) == 0 {
		// An audience caveat must not read "none asked" as the default.
		aud = []string{""}
	}
	m, ver, err := s.authorizeSVID(w, r, machinetoken.SVIDJWT, id, aud, reqErr)
	if err != nil {
		return answered(err)
	}
	key, herr := s.familySigner(r.Context(), svidFamily, m.Org)
	if herr != nil {
		return herr
	}
	if !s.signing.enter(r.Context()) {
		return nil // the caller went away while queued
	}
	defer s.signing.leave()
	now := s.now()
	// Never longer than an OIDC token: JWT-SVID keys stay in the bundle
	// for oidc.grace (≥ oidc.max_ttl) after they retire, as OIDC keys do.
	exp, capped, ok := s.capAtToken(w, r, ver, now, min(s.cfg().SPIFFE.JWTSVIDTTL.Duration, s.cfg().OIDC.MaxTTL.Duration))
	if !ok {
		return nil
	}
	// Signed with the org's JWT-SVID keys, which are in its SPIFFE bundle
	// and in no JWKS, and with none of an OIDC token's claims (no iss, no
	// org/app/machine): a relying party that trusts the org's OIDC issuer
	// can neither verify it nor mistake it for the machine's OIDC token.
	claims := oidc.JWTSVIDClaims{Subject: id.String(), Audience: req.Audience, IssuedAt: now, Expiry: exp, ID: newJTI()}
	tok, err := oidc.SignJWTSVID(key, claims)
	if err != nil {
		return httpapi.InternalError(fmt.Errorf("sign jwt svid for org %s: %w", m.Org, err))
	}
	s.jwtSVIDsIssued.Add(1)
	s.log.Info("jwt svid issued", "machine_id", m.ID, "org", m.Org, "app", m.App, "spiffe_id", id.String(),
		"aud", strings.Join(req.Audience, ","), "kid", key.ID, "jti", claims.ID, "token_id", ver.TokenID,
		"expires_at", exp.UTC().Format(time.RFC3339), "capped_at_token_end", capped)
	writeJSON(w, http.StatusOK, api.JWTSVIDReply{SPIFFEID: id.String(), Token: tok, ExpiresAt: exp.UTC().Truncate(time.Second)})
	return nil
}

// handleSVIDBundle tells the machine its trust domain, its own SPIFFE ID,
// the trust domain's bundle and the foreign bundles its org trusts.
func (s *Issuer) handleSVIDBundle(w http.ResponseWriter, r *http.Request) error {
	m, _, ok := s.authenticateFor(w, r, machinetoken.Request{Feature: machinetoken.FeatureSVID, SVIDKind: machinetoken.SVIDBundle})
	if !ok {
		return nil
	}
	td, herr := s.svidOrg(r.Context(), m)
	if herr != nil {
		return herr
	}
	id, err := spiffe.MachineID(td, m.App, m.Name)
	if err != nil {
		return httpapi.InternalError(fmt.Errorf("spiffe id of machine %s: %w", m.ID, err))
	}
	if _, herr := s.familySigner(r.Context(), svidFamily, m.Org); herr != nil {
		return herr // the bundle's JWT-SVID keys: the org's first one if need be
	}
	doc, err := s.bundleDoc(m.Org, td)
	if err != nil {
		return httpapi.InternalError(err)
	}
	writeJSON(w, http.StatusOK, api.SVIDBundleReply{TrustDomain: td.Name(), SPIFFEID: id.String(), Bundle: doc,
		FederatedBundles: s.fed.bundlesFor(m.Org)})
	return nil
}

// handleBundleEndpoint serves the org's SPIFFE bundle to anyone: it holds
// public keys only. An org that has no CA yet has no bundle (404), so the
// endpoint creates nothing for a name nobody registered.
func (s *Issuer) handleBundleEndpoint(w http.ResponseWriter, r *http.Request) error {
	org := r.PathValue("org")
	kr := s.keys.Load()
	if len(kr.cas[org]) == 0 {
		return httpapi.NotFoundError(nil)
	}
	td, err := s.trustDomain(org)
	if err != nil {
		return httpapi.NotFoundError(err)
	}
	doc, err := s.bundleDoc(org, td)
	if err != nil {
		return httpapi.InternalError(err)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", fmt.Sprintf("public, max-age=%d", int(s.cfg().SPIFFE.BundleRefreshHint.Seconds())))
	w.Write(doc)
	return nil
}

// bundleDoc is org's SPIFFE bundle document at the issuer's now: the CAs
// and JWT-SVID keys published then (never the org's OIDC keys, which are
// its JWKS's). spiffe_sequence is the issuer's clock in
// seconds, which grows with every change (and, harmlessly, without one).
func (s *Issuer) bundleDoc(org string, td spiffeid.TrustDomain) ([]byte, error) {
	cfg := s.cfg()
	now := s.now()
	kr := s.keys.Load()
	cas := spiffe.Published(kr.cas[org], now, cfg.SPIFFE.CAGrace.Duration)
	b, err := spiffe.NewBundle(td, cas, jwksOf(svidFamily.of(kr).sets[org], now, cfg.OIDC.Grace.Duration), cfg.SPIFFE.BundleRefreshHint.Duration, uint64(max(now.Unix(), 0)))
	if err != nil {
		return nil, err
	}
	return b.Marshal()
}

// jwksOf is a family's published keys of one org; none before its first key.
func jwksOf(set *oidc.KeySet, now time.Time, grace time.Duration) jose.JSONWebKeySet {
	if set == nil {
		return jose.JSONWebKeySet{}
	}
	return set.JWKS(now, grace)
}
