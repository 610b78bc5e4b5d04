package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/httpapi"
	"github.com/wicket-sh/wicket/internal/machinetoken"
	"github.com/wicket-sh/wicket/internal/oidc"
	"github.com/wicket-sh/wicket/internal/peer"
	"github.com/wicket-sh/wicket/internal/proxy"
	"github.com/wicket-sh/wicket/internal/unixsock"
)

// apiHandler is the guest API. Every request passes, in order: path
// canonicalization, peer policy, body limits, then routing (built-in
// endpoints first, then the proxy allowlist). The policy needs only the
// method, path and peer, so it comes before the body is read: a caller it
// refuses never makes the agent buffer anything. The Host header is
// ignored: the socket is the address.
func (a *Agent) apiHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/health", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(api.HealthReply{Status: api.HealthOK})
	})
	mux.HandleFunc("GET /v1/metadata", a.handleMetadata)
	mux.HandleFunc("GET /v1/metadata/{key}", a.handleMetadataKey)
	mux.HandleFunc("GET /v1/metadata/tags/{name}", a.handleMetadataTag)
	mux.HandleFunc("POST /v1/tokens/oidc", a.handleOIDCToken)

	guard := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, ok := unixsock.PeerFromContext(r.Context())
		if !httpapi.CanonicalPath(r.URL.Path) || httpapi.EncodedSeparator(r) {
			// Refused before the policy, so possibly to a caller it would
			// deny: it keeps no connection either.
			unixsock.CloseAfterReply(w)
			httpapi.BadRequest(w)
			return
		}
		rt := a.rt.Load()
		var d peer.Decision
		if ok {
			d = rt.policy.Decide(p, r.Method, r.URL.Path)
		}
		if !d.Allowed {
			a.deny(w, r, p, ok, d)
			return
		}
		if !unixsock.ReadBody(w, r, a.bodyLimits(), httpapi.WriteBodyError) {
			return
		}
		// Dispatch through the mux itself: only ServeMux.ServeHTTP fills in
		// the request's path values.
		if httpapi.MuxPattern(mux, r) != "" {
			mux.ServeHTTP(w, r)
			return
		}
		if reservedPath(r.URL.Path) {
			// The guest API's own paths never reach the proxy.
			if allow := httpapi.AllowedMethods(mux, r, http.MethodGet, http.MethodPost); allow != "" {
				httpapi.MethodNotAllowed(w, allow)
				return
			}
			httpapi.NotFound(w)
			return
		}
		a.handleProxy(w, r, rt, p)
	})
	return guard
}

// deny answers 403 and closes the connection, so a refused caller holds no
// slot, and logs the denial through the per-uid summary (a denied loop
// cannot flood the log).
func (a *Agent) deny(w http.ResponseWriter, r *http.Request, p unixsock.Peer, havePeer bool, d peer.Decision) {
	a.denied.Add(1)
	reason := "policy"
	switch {
	case !havePeer:
		reason = "no_peer"
	case d.ExeErr != nil:
		reason = "exe_unavailable"
	}
	// The path is caller input: log it quoted by slog, cut short.
	args := []any{"peer_uid", p.UID, "peer_gid", p.GID, "peer_pid", p.PID,
		"method", r.Method, "route", httpapi.Truncate(r.URL.Path, httpapi.MaxLoggedPath), "outcome", "denied", "reason", reason}
	if d.Exe != "" {
		args = append(args, "peer_exe", d.Exe)
	}
	if d.ExeErr != nil {
		// A rule naming exes could not be checked: say why, so an
		// operator on an old kernel learns rules with exes fail closed.
		args = append(args, "exe_error", d.ExeErr.Error())
	}
	a.denials.Deny(r.Context(), p, reason, args...)
	unixsock.CloseAfterReply(w)
	httpapi.Forbidden(w)
}

func reservedPath(p string) bool {
	for _, prefix := range config.AgentReservedPaths {
		if p == prefix || strings.HasPrefix(p, prefix+"/") {
			return true
		}
	}
	return false
}

// rateLimited applies the per-uid token bucket; when it refuses, it answers
// 429 with Retry-After and returns true.
func (a *Agent) rateLimited(w http.ResponseWriter, rt *runtime, p unixsock.Peer) bool {
	ok, wait := a.limiter.allow(p.UID, rt.cfg.Limits.TokenRate, rt.cfg.Limits.TokenBurst, a.now())
	if ok {
		return false
	}
	a.rateLimitedN.Add(1)
	w.Header().Set("Retry-After", strconv.Itoa(retryAfterSeconds(wait)))
	httpapi.Write(w, http.StatusTooManyRequests, api.CodeRateLimited, "rate limited")
	return true
}

// parseTokenRequest reads the optional body; ok is false if it is invalid.
func parseTokenRequest(r *http.Request) (aud string, ok bool) {
	body, buffered := unixsock.BufferedBody(r)
	if !buffered {
		var err error
		if body, err = io.ReadAll(r.Body); err != nil {
			return "", false
		}
	}
	if a, ok := fastAud(body); ok {
		return a, true
	}
	if len(strings.TrimSpace(string(body))) == 0 {
		return "", true
	}
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	var req api.TokenRequest
	if dec.Decode(&req) != nil || dec.More() {
		return "", false
	}
	if _, err := dec.Token(); err != io.EOF {
		return "", false
	}
	if req.Aud == nil {
		return "", true
	}
	// The issuer's own rule (≤ 256 bytes of printable ASCII, no spaces):
	// refused here, without a round trip and without echoing it.
	if oidc.ValidateAudience([]string{*req.Aud}) != nil {
		return "", false
	}
	return *req.Aud, true
}

// fastAud recognizes the body nearly every client sends, {"aud":"X"} with
// X plain printable ASCII (no escapes), without the JSON decoder; it is
// the hot path of cached token requests. Anything else (whitespace,
// escapes, other fields, invalid audiences) is left to the strict decoder,
// which gives the same answer more slowly.
func fastAud(body []byte) (string, bool) {
	const prefix, suffix = `{"aud":"`, `"}`
	if len(body) < len(prefix)+len(suffix)+1 || string(body[:len(prefix)]) != prefix || string(body[len(body)-len(suffix):]) != suffix {
		return "", false
	}
	v := body[len(prefix) : len(body)-len(suffix)]
	if len(v) > oidc.MaxAudienceLen {
		return "", false
	}
	for _, c := range v {
		if c <= ' ' || c >= 0x7f || c == '"' || c == '\\' {
			return "", false
		}
	}
	return string(v), true
}

// wantsJSON reports whether the Accept header asks for application/json.
func wantsJSON(r *http.Request) bool {
	for _, v := range r.Header.Values("Accept") {
		for _, part := range strings.Split(v, ",") {
			mt, _, err := mime.ParseMediaType(strings.TrimSpace(part))
			if err == nil && mt == "application/json" {
				return true
			}
		}
	}
	return false
}

func (a *Agent) handleOIDCToken(w http.ResponseWriter, r *http.Request) {
	p, _ := unixsock.PeerFromContext(r.Context())
	rt := a.rt.Load()
	logIssue := func(outcome, aud string, tok issued, err error) {
		// A cached token handed again to the same process is counted, not
		// logged: the audit trail keeps one line per process and token,
		// and a hot loop cannot flood the log or slow the socket down.
		if outcome == srcCache && err == nil && !a.firstServe(p, tok.jti) {
			return
		}
		args := []any{"peer_uid", p.UID, "peer_gid", p.GID, "peer_pid", p.PID, "aud", aud, "outcome", outcome}
		if tok.jti != "" {
			args = append(args, "jti", tok.jti, "expires_at", tok.expires.Format(time.RFC3339))
		}
		if err != nil {
			args = append(args, "err", err.Error())
			a.log.Warn("oidc token", args...)
			return
		}
		a.log.Info("oidc token", args...)
	}
	if a.rateLimited(w, rt, p) {
		logIssue("rate_limited", "", issued{}, nil)
		return
	}
	aud, ok := parseTokenRequest(r)
	if !ok {
		logIssue("bad_request", "", issued{}, nil)
		httpapi.BadRequest(w)
		return
	}
	if a.tokens == nil {
		logIssue("unavailable", aud, issued{}, errors.New("no issuer configured"))
		httpapi.Write(w, http.StatusServiceUnavailable, api.CodeUpstreamUnavailable, "token unavailable")
		return
	}
	tok, src, err := a.tokens.get(r.Context(), aud)
	switch {
	case errors.Is(err, errBadAudience):
		logIssue("bad_request", aud, issued{}, err)
		httpapi.BadRequest(w)
		return
	case r.Context().Err() != nil:
		logIssue("canceled", aud, issued{}, nil)
		return
	case err != nil:
		logIssue("unavailable", aud, issued{}, err)
		httpapi.Write(w, http.StatusServiceUnavailable, api.CodeUpstreamUnavailable, "token unavailable")
		return
	}
	a.tokensServed.Add(1)
	logIssue(src, aud, tok, nil)
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	if wantsJSON(r) {
		h.Set("Content-Type", "application/json")
		// Whole seconds, as the JWT's exp.
		json.NewEncoder(w).Encode(api.TokenReply{Token: tok.token, ExpiresAt: tok.expires.Truncate(time.Second)})
		return
	}
	h.Set("Content-Type", "application/jwt")
	w.Write([]byte(tok.token))
}

// fetchToken is the token cache's call to the issuer.
func (a *Agent) fetchToken(ctx context.Context, key string) (issued, error) {
	aud, fileTTL := splitCacheKey(key)
	var req api.IssuerTokenRequest
	if aud != "" {
		req.Aud, _ = json.Marshal(aud)
	}
	// The copy lives as long as the JWT should (the issuer never lets a
	// JWT outlive it, so the cache stays useful) and is bound to aud: a
	// copy captured upstream buys at most a JWT for this audience,
	// expiring no later than the copy. "" asks for, and binds to, the
	// issuer's default audience. A token file with its own ttl asks for
	// that life, and its copy lives as long.
	copyTTL := a.rt.Load().cfg.Tokens.TTL.Duration
	if fileTTL > 0 {
		copyTTL, req.TTL = fileTTL, fileTTL.String()
	}
	body, _ := json.Marshal(req)
	scope := machinetoken.Scope{Features: []machinetoken.Feature{machinetoken.FeatureOIDC}, Audiences: []string{aud}}
	rep, err := a.issuer.callScoped(ctx, http.MethodPost, "/v1/tokens/oidc", nil, body, copyTTL, scope)
	if err != nil {
		a.upstreamErrors.Add(1)
		return issued{}, err
	}
	switch {
	case rep.status == http.StatusBadRequest:
		return issued{}, errBadAudience
	case rep.status != http.StatusOK:
		a.upstreamErrors.Add(1)
		return issued{}, errors.New("issuer answered " + strconv.Itoa(rep.status) + " " + rep.code())
	}
	tok, err := parseTokenReply(rep.body, a.now())
	if err != nil {
		a.upstreamErrors.Add(1)
		return issued{}, err
	}
	a.tokensIssued.Add(1)
	return tok, nil
}

// handleProxy forwards a request that matches an allowlisted route; any
// other request gets 404 without a byte going upstream.
func (a *Agent) handleProxy(w http.ResponseWriter, r *http.Request, rt *runtime, p unixsock.Peer) {
	var vars proxy.Vars
	snap := a.meta.cur.Load()
	if snap != nil {
		vars = snap.vars
	}
	route, ok := rt.routes.Lookup(r.Method, r.URL.Path, vars)
	if !ok {
		if snap == nil && rt.routes.UsesVars() {
			// {self} and {app} are unknown until the first metadata
			// fetch: the caller should retry, not conclude "no route".
			httpapi.Write(w, http.StatusServiceUnavailable, api.CodeUpstreamUnavailable, "upstream unavailable")
			return
		}
		httpapi.NotFound(w)
		return
	}
	if a.rateLimited(w, rt, p) {
		a.log.Warn("proxy request", "peer_uid", p.UID, "peer_gid", p.GID, "peer_pid", p.PID,
			"route", route.Name(), "outcome", "rate_limited")
		return
	}
	base := route.Upstream()
	if base == nil {
		base = a.issuerURL
	}
	if base == nil || a.token.IsZero() {
		httpapi.Write(w, http.StatusServiceUnavailable, api.CodeUpstreamUnavailable, "upstream unavailable")
		return
	}
	scope := machinetoken.Scope{Features: route.Features()}
	if !issuerGateway(base, a.issuerURL) {
		// Not the issuer: that upstream gets a copy wicket refuses, so a
		// copy it leaks or reflects back is worth nothing here.
		scope.External = base.Scheme + "://" + base.Host
	}
	tok, err := a.token.restrictScope(time.Now(), attenuatedTTL, scope)
	if err != nil {
		httpapi.WriteError(w, r, a.log, httpapi.InternalError(fmt.Errorf("attenuate machine token: %w", err)))
		return
	}
	start := time.Now()
	res := a.forwarder.Forward(w, r, route, base, api.AuthScheme+" "+tok)
	a.proxied.Add(1)
	args := []any{"peer_uid", p.UID, "peer_gid", p.GID, "peer_pid", p.PID, "method", r.Method,
		"route", route.Name(), "upstream", base.Host, "status", res.Status, "outcome", string(res.Outcome),
		"duration_ms", time.Since(start).Milliseconds()}
	if res.Err != nil {
		args = append(args, "err", res.Err.Error())
	}
	if res.Outcome != proxy.OutcomeOK && res.Outcome != proxy.OutcomeCanceled && res.Outcome != proxy.OutcomeBadRequest {
		a.upstreamErrors.Add(1)
		a.proxyErrors.Add(1)
		a.log.Warn("proxy request", args...)
		return
	}
	a.log.Info("proxy request", args...)
}

// servedKey identifies a token handed to one process.
type servedKey struct {
	uid uint32
	pid int32
	jti string
}

// maxServed bounds the memory of which process got which token.
const maxServed = 8192

// firstServe reports whether tok (by jti) is handed to this process for the
// first time.
func (a *Agent) firstServe(p unixsock.Peer, jti string) bool {
	k := servedKey{p.UID, p.PID, jti}
	a.servedMu.Lock()
	defer a.servedMu.Unlock()
	if _, seen := a.served[k]; seen {
		return false
	}
	if a.served == nil || len(a.served) >= maxServed {
		a.served = make(map[servedKey]struct{}, 64)
	}
	a.served[k] = struct{}{}
	return true
}

// issuerGateway reports whether upstream is the issuer's gateway: the
// issuer URL itself (same scheme, host and port, and path), which is what
// a route without its own upstream uses. Anything else, the issuer's host
// under another path included, is an external upstream.
func issuerGateway(upstream, issuer *url.URL) bool {
	if upstream == nil || issuer == nil {
		return false
	}
	return strings.EqualFold(upstream.Scheme, issuer.Scheme) &&
		strings.EqualFold(hostPort(upstream), hostPort(issuer)) &&
		strings.TrimRight(upstream.Path, "/") == strings.TrimRight(issuer.Path, "/")
}

// hostPort returns u's host with the scheme's default port made explicit.
func hostPort(u *url.URL) string {
	if u.Port() != "" {
		return u.Host
	}
	port := "80"
	if strings.EqualFold(u.Scheme, "https") {
		port = "443"
	}
	return net.JoinHostPort(u.Hostname(), port)
}
