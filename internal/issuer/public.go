package issuer

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/httpapi"
	"github.com/wicket-sh/wicket/internal/macaroonwire"
	"github.com/wicket-sh/wicket/internal/machinetoken"
	"github.com/wicket-sh/wicket/internal/oidc"
	"github.com/wicket-sh/wicket/internal/store"
)

func (s *Issuer) publicHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/health", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, api.HealthReply{Status: api.HealthOK})
	})
	// Their failures go through httpapi.WriteError: logged with the
	// caller's address, answered with the generic envelope only.
	mux.Handle("POST /v1/tokens/oidc", httpapi.Handle(s.log, s.handleOIDCToken))
	mux.Handle("GET /v1/machines/self", httpapi.Handle(s.log, s.handleSelf))
	mux.Handle("/v1/apps/{app}/", http.HandlerFunc(s.handleGateway))
	s.spiffeRoutes(mux)
	disco := &oidc.Handler{
		PublicURL: s.PublicURL(),
		Keys: func(org string) *oidc.KeySet {
			return s.keys.Load().oidcSets[org]
		},
		// Read on every request: a reload changes them at once.
		Settings: func() oidc.PublishSettings {
			o := s.cfg().OIDC
			return oidc.PublishSettings{Grace: o.Grace.Duration, MaxAge: o.JWKSMaxAge.Duration}
		},
		Now: s.now,
	}
	mux.Handle("GET /{org}/.well-known/", disco)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The gateway forwards paths: the same refusals as the agent's.
		if !httpapi.CanonicalPath(r.URL.Path) || httpapi.EncodedSeparator(r) {
			httpapi.BadRequest(w)
			return
		}
		if httpapi.MuxPattern(mux, r) == "" {
			httpapi.NotFound(w)
			return
		}
		mux.ServeHTTP(w, r) // fills in path values, unlike mux.Handler
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// storeUnavailable is the answer to a request that needs the state store
// while it cannot be reached (cluster mode, etcd down past the cache
// grace): not the caller's fault, and retrying later helps.
func storeUnavailable(cause error) *httpapi.Error {
	return httpapi.UnavailableError("service unavailable", cause)
}

func unauthorized(w http.ResponseWriter) {
	httpapi.Write(w, http.StatusUnauthorized, api.CodeUnauthorized, "unauthorized")
}

// authenticate verifies the request's machine token for feature (and app,
// when set) and returns the registered machine. Every failure gets the same
// 401; the reason goes to the log with the caller's address, never the token.
func (s *Issuer) authenticate(w http.ResponseWriter, r *http.Request, feature machinetoken.Feature, app string) (*store.Machine, *machinetoken.Verified, bool) {
	return s.authenticateFor(w, r, machinetoken.Request{Feature: feature, App: app})
}

// authenticateFor is authenticate for a request whose scope goes beyond
// the feature: an OIDC or JWT-SVID request asking for Audience (nil: the
// default audience), an SVID request asking for SPIFFEID, which a copy
// bound to other audiences or IDs may not get. Now and RemoteAddr are
// filled in here.
func (s *Issuer) authenticateFor(w http.ResponseWriter, r *http.Request, q machinetoken.Request) (*store.Machine, *machinetoken.Verified, bool) {
	remote := remoteAddr(r)
	fail := func(reason error) (*store.Machine, *machinetoken.Verified, bool) {
		s.authFailed.Add(1)
		s.log.Warn("machine token refused", "remote", remote.String(), "path", httpapi.Truncate(r.URL.Path, httpapi.MaxLoggedPath), "reason", reason.Error())
		unauthorized(w)
		return nil, nil, false
	}
	tok, err := machinetoken.ParseHeader(r.Header.Get("Authorization"))
	if err != nil {
		return fail(errors.New("no or malformed Authorization header"))
	}
	kr := s.keys.Load()
	now := s.now()
	q.Now, q.RemoteAddr = now, remote
	ck := verifyKey(tok, q)
	ver := s.verified.get(ck, kr, now)
	if ver == nil {
		v := kr.machineVerifier()
		ver, err = v.Verify(tok, q)
		if err != nil {
			return fail(err)
		}
		s.verified.put(ck, kr, ver, now)
	} else if _, revoked := kr.revoked[ver.TokenID]; revoked {
		return fail(errors.New("token revoked"))
	}
	if err := svidCopyBound(q, ver); err != nil {
		return fail(err)
	}
	m, err := s.requestMachine(r.Context(), ver.MachineID)
	if unavailable(err) {
		// Not the caller's fault: the state store is out of reach past its
		// cache grace. 503 tells agents to keep their cached answers.
		httpapi.WriteError(w, r, s.log, storeUnavailable(fmt.Errorf("machine %s lookup: %w", ver.MachineID, err)))
		return nil, nil, false
	}
	if err != nil {
		return fail(fmt.Errorf("machine %s: %w", ver.MachineID, err))
	}
	if m.Org != ver.Org || m.App != ver.App {
		return fail(fmt.Errorf("token for %s/%s but machine %s is in %s/%s", ver.Org, ver.App, m.ID, m.Org, m.App))
	}
	// The registry's current addresses apply too, so narrowing them takes
	// effect without re-minting tokens.
	if len(m.SourceAddrs) > 0 && !addrAllowed(remote, m.SourceAddrs) {
		return fail(fmt.Errorf("remote %s not in machine %s source addresses", remote, m.ID))
	}
	return m, ver, true
}

func remoteAddr(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// addrAllowed reports whether a is in one of cidrs (one that does not
// parse matches nothing).
func addrAllowed(a netip.Addr, cidrs []string) bool { return macaroonwire.AddrAllowed(cidrs, a) }

func parseAud(raw json.RawMessage) ([]string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var one string
	if err := json.Unmarshal(raw, &one); err == nil {
		return []string{one}, nil
	}
	var many []string
	if err := json.Unmarshal(raw, &many); err != nil {
		return nil, errors.New("aud must be a string or a list of strings")
	}
	return many, nil
}

func (s *Issuer) handleOIDCToken(w http.ResponseWriter, r *http.Request) error {
	// The body is read before the token is checked because the audience it
	// asks for is part of the check (a copy may be bound to one); a bad
	// body is still answered only once the token passes.
	var req api.IssuerTokenRequest
	var reqErr error
	var aud []string
	body, err := readRequestBody(r, 64<<10)
	if one, ok := fastTokenRequest(body); err == nil && ok {
		aud = []string{one}
	} else {
		if err != nil {
			reqErr = err
		} else if len(strings.TrimSpace(string(body))) > 0 {
			dec := json.NewDecoder(strings.NewReader(string(body)))
			dec.DisallowUnknownFields()
			reqErr = dec.Decode(&req)
		}
		if reqErr == nil {
			aud, reqErr = parseAud(req.Aud)
		}
	}
	m, ver, ok := s.authenticateFor(w, r, machinetoken.Request{Feature: machinetoken.FeatureOIDC, Audience: aud})
	if !ok {
		return nil // answered
	}
	if reqErr != nil {
		return httpapi.BadRequestError(fmt.Errorf("token request of machine %s: %w", m.ID, reqErr))
	}
	cfg := s.cfg()
	issuer := oidc.IssuerURL(cfg.Server.PublicURL, m.Org)
	if aud == nil {
		aud = []string{issuer}
	}
	err = oidc.ValidateAudience(aud)
	ttl := cfg.OIDC.TokenTTL.Duration
	if err == nil && req.TTL != "" {
		ttl, err = time.ParseDuration(req.TTL)
		if err == nil && (ttl < time.Minute || ttl > cfg.OIDC.MaxTTL.Duration) {
			err = fmt.Errorf("ttl %s out of range", ttl)
		}
	}
	if err != nil {
		return httpapi.BadRequestError(fmt.Errorf("token request of machine %s: %w", m.ID, err))
	}
	key, herr := s.orgSigner(r.Context(), m.Org)
	if herr != nil {
		return herr
	}
	sub, err := oidc.Subject(m.Org, m.App, m.Name)
	if err != nil {
		return httpapi.InternalError(fmt.Errorf("subject of machine %s: %w", m.ID, err))
	}
	if !s.signing.enter(r.Context()) {
		return nil // the caller went away while queued
	}
	defer s.signing.leave()
	now := s.now()
	exp, capped, ok := s.capAtToken(w, r, ver, now, ttl)
	if !ok {
		return nil // answered
	}
	claims := oidc.Claims{
		Issuer: issuer, Subject: sub, Audience: aud,
		IssuedAt: now, NotBefore: now, Expiry: exp, ID: newJTI(),
		Org: m.Org, App: m.App, MachineID: m.ID, MachineName: m.Name,
		Region: m.Region, Image: m.Image, ImageDigest: m.ImageDigest,
	}
	tok, err := oidc.Sign(key, claims)
	if err != nil {
		return httpapi.InternalError(fmt.Errorf("sign for org %s: %w", m.Org, err))
	}
	s.tokensIssued.Add(1)
	// The audit line; its fields are built only when it is written.
	if s.log.Enabled(r.Context(), slog.LevelInfo) {
		s.log.Info("oidc token issued", "machine_id", m.ID, "org", m.Org, "app", m.App, "aud", strings.Join(aud, ","),
			"kid", key.ID, "jti", claims.ID, "token_id", ver.TokenID, "expires_at", claims.Expiry.UTC().Format(time.RFC3339),
			"capped_at_token_end", capped)
	}
	exp = claims.Expiry.UTC().Truncate(time.Second)
	if !jwsSafe(tok) {
		writeJSON(w, http.StatusOK, api.TokenReply{Token: tok, ExpiresAt: exp})
		return nil
	}
	writeTokenReply(w, tok, exp)
	return nil
}

// orgSigner returns the org's current OIDC signing key, creating the
// org's first key if it has none yet.
func (s *Issuer) orgSigner(ctx context.Context, org string) (*oidc.Key, *httpapi.Error) {
	return s.familySigner(ctx, oidcFamily, org)
}

// familySigner returns the org's current signing key of family f,
// creating the org's first key of it if it has none yet.
func (s *Issuer) familySigner(ctx context.Context, f *jwtKeys, org string) (*oidc.Key, *httpapi.Error) {
	if err := s.ensureJWTKeys(ctx, f, org); err != nil {
		err = fmt.Errorf("org %s %s keys: %w", org, f.kind, err)
		if unavailable(err) {
			return nil, storeUnavailable(err)
		}
		return nil, httpapi.InternalError(err)
	}
	alg := oidc.Alg(s.cfg().OIDC.Alg)
	now := s.now()
	set := f.of(s.keys.Load()).sets[org]
	key, err := set.Signer(alg, now)
	if errors.Is(err, oidc.ErrNoSigningKey) {
		// The org's keys use the other algorithm (alg changed in config):
		// sign with what exists until an operator rotates.
		key, err = set.Signer(otherAlg(alg), now)
	}
	if err != nil {
		return nil, httpapi.InternalError(fmt.Errorf("no %s key for org %s: %w", f.kind, org, err))
	}
	return key, nil
}

// capAtToken returns when a credential asked for with ttl at now ends: it
// never outlives the machine token that bought it, so a copy captured on
// its way here buys at most what is left of the copy. A copy that ends now
// is refused with the same 401 as any bad token (answered: ok false).
func (s *Issuer) capAtToken(w http.ResponseWriter, r *http.Request, ver *machinetoken.Verified, now time.Time, ttl time.Duration) (exp time.Time, capped, ok bool) {
	exp = now.Add(ttl)
	if ver.NotAfter.Before(exp) {
		exp, capped = ver.NotAfter, true
	}
	if !exp.After(now) {
		s.authFailed.Add(1)
		s.log.Warn("machine token refused", "remote", remoteAddr(r).String(), "path", httpapi.Truncate(r.URL.Path, httpapi.MaxLoggedPath), "reason", "token ends now", "token_id", ver.TokenID)
		unauthorized(w)
		return time.Time{}, false, false
	}
	return exp, capped, true
}

func otherAlg(a oidc.Alg) oidc.Alg {
	if a == oidc.RS256 {
		return oidc.ES256
	}
	return oidc.RS256
}

func newJTI() string { return rand.Text() }

// metadataOf is what m learns about itself (GET /v1/machines/self, and so
// the agent's GET /v1/metadata).
func metadataOf(m *store.Machine) api.Metadata {
	tags := m.Tags
	if tags == nil {
		tags = map[string]string{}
	}
	return api.Metadata{MachineID: m.ID, MachineName: m.Name, App: m.App, Org: m.Org, Region: m.Region,
		Image: m.Image, ImageDigest: m.ImageDigest, PrivateIP: m.PrivateIP, Tags: tags}
}

// encodeMetadata returns the JSON body and its ETag, derived from the
// content so every replica computes the same tag for the same state.
func encodeMetadata(m *store.Machine) ([]byte, string) {
	b, _ := json.Marshal(metadataOf(m))
	b = append(b, '\n')
	sum := sha256.Sum256(b)
	return b, `"` + hex.EncodeToString(sum[:12]) + `"`
}

func (s *Issuer) handleSelf(w http.ResponseWriter, r *http.Request) error {
	m, _, ok := s.authenticate(w, r, machinetoken.FeatureMetadata, "")
	if !ok {
		return nil // answered
	}
	q := r.URL.Query()
	body, etag := encodeMetadata(m)
	if q.Get("wait") != "true" {
		writeMetadata(w, body, etag)
		return nil
	}
	wait := api.DefaultWait
	if t := q.Get("timeout"); t != "" {
		d, err := time.ParseDuration(t)
		if err != nil || d < api.MinWait || d > api.MaxWait {
			return httpapi.BadRequestError(nil)
		}
		wait = d
	}
	if want := q.Get("etag"); want != etag {
		writeMetadata(w, body, etag)
		return nil
	}
	s.longPolls.Add(1)
	defer s.longPolls.Add(-1)
	ctx, cancel := context.WithTimeout(r.Context(), wait)
	defer cancel()
	events, err := s.store.WatchMachine(ctx, m.ID)
	if unavailable(err) {
		return storeUnavailable(fmt.Errorf("long poll of machine %s: %w", m.ID, err))
	}
	if err != nil {
		unauthorized(w) // removed in the meantime
		return nil
	}
	for ev := range events {
		if ev.Machine == nil {
			s.log.Info("machine removed during long poll", "machine_id", m.ID)
			unauthorized(w)
			return nil
		}
		b, e := encodeMetadata(ev.Machine)
		if e != etag {
			writeMetadata(w, b, e)
			return nil
		}
	}
	if r.Context().Err() != nil {
		return nil // caller went away
	}
	writeMetadata(w, body, etag)
	return nil
}

func writeMetadata(w http.ResponseWriter, body []byte, etag string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("ETag", etag)
	w.Write(body)
}

// handleGateway verifies the machine token for the app in the path, then
// forwards the request to the operator's platform API with the machine's
// identity in headers and without the token.
func (s *Issuer) handleGateway(w http.ResponseWriter, r *http.Request) {
	cfg := s.cfg()
	gw, fwd := cfg.Gateway, cfg.GatewayHeaders()
	if gw.Upstream == "" {
		httpapi.NotFound(w)
		return
	}
	m, ver, ok := s.authenticate(w, r, machinetoken.FeatureProxy, r.PathValue("app"))
	if !ok {
		return
	}
	up, err := url.Parse(gw.Upstream)
	if err != nil {
		httpapi.WriteError(w, r, s.log, httpapi.InternalError(fmt.Errorf("gateway upstream: %w", err)))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), gw.Timeout.Duration)
	defer cancel()
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(up)
			pr.Out.Host = up.Host
			// The platform API trusts X-Wicket-*: only the allowlisted
			// headers of the machine's request go with them, never one
			// that could pass for them (X_Wicket_App), a credential, or a
			// method, URL or client-address override (proxy.NeverForwarded).
			h := fwd.Filter(pr.In.Header)
			pr.Out.Header = h
			// Trailers are headers sent after the body: none of the
			// caller's are forwarded.
			pr.Out.Trailer = nil
			h.Set("X-Wicket-Machine-Id", m.ID)
			h.Set("X-Wicket-App", m.App)
			h.Set("X-Wicket-Org", m.Org)
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			s.log.Warn("gateway upstream error", "machine_id", m.ID, "token_id", ver.TokenID, "err", err)
			var ne net.Error
			if errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
				httpapi.Write(w, http.StatusGatewayTimeout, api.CodeUpstreamTimeout, "upstream timeout")
				return
			}
			httpapi.Write(w, http.StatusBadGateway, api.CodeBadGateway, "bad gateway")
		},
	}
	rp.ServeHTTP(w, r.WithContext(ctx))
}

// svidCopyBound refuses an SVID request made with a token that is not a
// copy bound to SVID kinds, as every agent sends them (the bundle read
// bound to "bundle", an X.509-SVID's copy to "x509" and its ID, a
// JWT-SVID's to "jwt", its ID and audiences). Without this rule an
// unbound token (the machine token itself, or a copy from an agent that
// predates the caveat) would buy SVIDs of any kind for any ID of the
// machine's namespace: the binding is the issuer's rule, not the
// agent's habit.
func svidCopyBound(q machinetoken.Request, ver *machinetoken.Verified) error {
	if q.Feature == machinetoken.FeatureSVID && ver.SVIDKinds == nil {
		return errors.New("svid request with a token not bound to svid kinds")
	}
	return nil
}
