package oidctoken

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/agent/feature"
	"github.com/wicket-sh/wicket/internal/fastlane"
	"github.com/wicket-sh/wicket/internal/httpapi"
	"github.com/wicket-sh/wicket/internal/machinetoken"
	"github.com/wicket-sh/wicket/internal/oidc"
	"github.com/wicket-sh/wicket/internal/unixsock"
)

// Routes implements feature.Routes.
func (f *Feature) Routes(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/tokens/oidc", f.handleOIDCToken)
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
	v, ok := fastAudBytes(body)
	return string(v), ok
}

// fastAudBytes is fastAud without the string: the audience's bytes in
// body.
func fastAudBytes(body []byte) ([]byte, bool) {
	const prefix, suffix = `{"aud":"`, `"}`
	if len(body) < len(prefix)+len(suffix)+1 || string(body[:len(prefix)]) != prefix || string(body[len(body)-len(suffix):]) != suffix {
		return nil, false
	}
	v := body[len(prefix) : len(body)-len(suffix)]
	if len(v) > oidc.MaxAudienceLen {
		return nil, false
	}
	for _, c := range v {
		if c <= ' ' || c >= 0x7f || c == '"' || c == '\\' {
			return nil, false
		}
	}
	return v, true
}

// wantsJSON reports whether the Accept header asks for application/json.
// A value without "json" in it (*/*, application/jwt: nearly every one)
// cannot, and is not parsed.
func wantsJSON(r *http.Request) bool {
	for _, v := range r.Header.Values("Accept") {
		if !containsFoldJSON(v) {
			continue
		}
		for _, part := range strings.Split(v, ",") {
			mt, _, err := mime.ParseMediaType(strings.TrimSpace(part))
			if err == nil && mt == "application/json" {
				return true
			}
		}
	}
	return false
}

// containsFoldJSON reports whether s contains "json" in any case: a media
// type ParseMediaType reads as application/json has it.
func containsFoldJSON[T string | []byte](s T) bool {
	for i := 0; i+4 <= len(s); i++ {
		if (s[i]|0x20) == 'j' && (s[i+1]|0x20) == 's' && (s[i+2]|0x20) == 'o' && (s[i+3]|0x20) == 'n' {
			return true
		}
	}
	return false
}

// Header values shared by every reply: net/http only reads them, and each
// has len == cap, so an Add elsewhere would copy rather than write into it.
var (
	hdrJWT  = []string{"application/jwt"}
	hdrJSON = []string{"application/json"}
)

// logIssue writes the audit line of one token request. A cached token
// handed again to the same process is counted, not logged (the caller
// passes logged false): the audit trail keeps one line per process and
// token, and a hot loop cannot flood the log or slow the socket down.
func (f *Feature) logIssue(p unixsock.Peer, outcome, aud string, tok issued, err error) {
	args := []any{"peer_uid", p.UID, "peer_gid", p.GID, "peer_pid", p.PID, "aud", aud, "outcome", outcome}
	if tok.ID != "" {
		args = append(args, "jti", tok.ID, "expires_at", tok.Expires.Format(time.RFC3339))
	}
	if err != nil {
		args = append(args, "err", err.Error())
		f.log.Warn("oidc token", args...)
		return
	}
	f.log.Info("oidc token", args...)
}

func (f *Feature) handleOIDCToken(w http.ResponseWriter, r *http.Request) {
	p, _ := unixsock.PeerFromContext(r.Context())
	if f.host.RateLimited(w, p) {
		f.logIssue(p, "rate_limited", "", issued{}, nil)
		return
	}
	aud, ok := parseTokenRequest(r)
	if !ok {
		f.logIssue(p, "bad_request", "", issued{}, nil)
		httpapi.BadRequest(w)
		return
	}
	if f.cache == nil {
		f.logIssue(p, "unavailable", aud, issued{}, errNoIssuer)
		httpapi.Write(w, http.StatusServiceUnavailable, api.CodeUpstreamUnavailable, "token unavailable")
		return
	}
	// One lookup under the cache's lock: the token, its reply bytes and
	// whether this process was handed it before.
	h, err := f.cache.serve(r.Context(), aud, servedProc{p.UID, p.PID})
	switch {
	case errors.Is(err, errBadAudience):
		f.logIssue(p, "bad_request", aud, issued{}, err)
		httpapi.BadRequest(w)
		return
	case r.Context().Err() != nil:
		f.logIssue(p, "canceled", aud, issued{}, nil)
		return
	case err != nil:
		f.logIssue(p, "unavailable", aud, issued{}, err)
		httpapi.Write(w, http.StatusServiceUnavailable, api.CodeUpstreamUnavailable, "token unavailable")
		return
	}
	f.served.Add(1)
	if h.src != SourceCache || h.first {
		f.logIssue(p, h.src, aud, h.tok, nil)
	}
	hdr := w.Header()
	httpapi.SetPrivateReply(hdr)
	if wantsJSON(r) {
		hdr["Content-Type"] = hdrJSON
		// Whole seconds, as the JWT's exp.
		json.NewEncoder(w).Encode(api.TokenReply{Token: h.tok.JWT, ExpiresAt: h.tok.Expires.Truncate(time.Second)})
		return
	}
	if h.body != nil {
		setJWTHeaders(hdr, h.bodyLen)
		w.Write(h.body)
		return
	}
	setJWTHeaders(hdr, []string{strconv.Itoa(len(h.tok.JWT))})
	io.WriteString(w, h.tok.JWT)
}

// setJWTHeaders sets the headers of a token's reply as application/jwt;
// its length is set, not left to net/http, so the handler's header and
// the fast lane's (jwtReply) are the same.
func setJWTHeaders(h http.Header, length []string) {
	httpapi.SetPrivateReply(h)
	h["Content-Type"] = hdrJWT
	h["Content-Length"] = length
}

// jwtReply is the header of a token's reply as net/http writes it, built
// once per token for the fast lane.
func jwtReply(length []string) []byte {
	h := http.Header{}
	setJWTHeaders(h, length)
	return fastlane.HeaderBytes(h)
}

// FastRoutes implements feature.FastRoutes: a cached token for the body
// nearly every client sends ({"aud":"X"}, or none), to a caller not
// asking for JSON, is served by the fast lane.
func (f *Feature) FastRoutes() []feature.FastRoute {
	return []feature.FastRoute{{Method: http.MethodPost, Path: "/v1/tokens/oidc", Serve: f.fastToken}}
}

// fastToken is handleOIDCToken for a cache hit, in the same order: the
// rate limit, the audience, the cache, the audit line of a token's first
// serve to a process. It declines what the handler answers otherwise
// (JSON, another body, a miss, a refusal), having changed nothing: a
// token it took from the caller's bucket is given back.
func (f *Feature) fastToken(p unixsock.Peer, r *fastlane.Request) (fastlane.Reply, bool) {
	if f.cache == nil || r.Accepts > 1 || r.Accepts == 1 && containsFoldJSON(r.Accept) {
		return fastlane.Reply{}, false
	}
	var aud []byte
	if len(r.Body) > 0 {
		var ok bool
		if aud, ok = fastAudBytes(r.Body); !ok {
			return fastlane.Reply{}, false
		}
	}
	if !f.host.TakeRate(p) {
		return fastlane.Reply{}, false
	}
	h, ok := f.cache.serveCached(aud, servedProc{p.UID, p.PID})
	if !ok {
		f.host.ReturnRate(p)
		return fastlane.Reply{}, false
	}
	f.served.Add(1)
	if h.first {
		f.logIssue(p, h.src, string(aud), h.tok, nil)
	}
	return fastlane.Reply{Header: h.reply, Body: h.body}, true
}

// fetch is the token cache's call to the issuer, for a cache key (see
// cacheKey): an audience, and a life when a token file sets ttl.
func (f *Feature) fetch(ctx context.Context, key string) (issued, error) {
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
	copyTTL := From(f.host.Config()).TTL.Duration
	if fileTTL > 0 {
		copyTTL, req.TTL = fileTTL, fileTTL.String()
	}
	body, _ := json.Marshal(req)
	scope := machinetoken.Scope{Features: []machinetoken.Feature{machinetoken.FeatureOIDC}, Audiences: []string{aud}}
	rep, err := f.host.Issuer().Call(ctx, http.MethodPost, "/v1/tokens/oidc", nil, body, copyTTL, scope)
	if err != nil {
		f.host.UpstreamError()
		return issued{}, err
	}
	switch {
	case rep.Status == http.StatusBadRequest:
		return issued{}, errBadAudience
	case rep.Status != http.StatusOK:
		f.host.UpstreamError()
		return issued{}, errors.New("issuer answered " + strconv.Itoa(rep.Status) + " " + rep.Code())
	}
	tok, err := parseTokenReply(rep.Body, f.host.Now())
	if err != nil {
		f.host.UpstreamError()
		return issued{}, err
	}
	f.issued.Add(1)
	return tok, nil
}

// tokenFileStaleWaitMax bounds how long a file refresh waits for the
// cache's renewal under way (see FreshToken).
const tokenFileStaleWaitMax = 2 * time.Second

// FreshToken implements feature.TokenSource: aud's token of life ttl (0:
// the guest API's, [tokens] ttl) through the cache the guest API uses, so
// a file and the API's callers share one issuer call per renewal, and
// files of one audience and ttl share theirs (cacheKey).
//
// A cached token past the cache's own refresh point (tokens.refresh_at)
// means a renewal is under way: the cache's timer or this very lookup
// started one. With both at their defaults (80%) a file's refresh lands
// just after the cache's, so writing the cached token would leave the file
// with the least life left until its next round. Wait briefly for the new
// one instead, and settle for the cached one (still valid) if it is late.
func (f *Feature) FreshToken(ctx context.Context, aud string, ttl time.Duration) (feature.Token, string, error) {
	key := cacheKey(aud, ttl)
	tok, src, err := f.get(ctx, key)
	if err != nil {
		return issued{}, "", err
	}
	iat, ok := jwtIssuedAt(tok.JWT)
	if !ok || !tok.Expires.After(iat) {
		return tok, src, nil
	}
	renewAt := iat.Add(time.Duration(float64(tok.Expires.Sub(iat)) * From(f.host.Config()).RefreshAt))
	now := f.host.Now()
	if now.Before(renewAt) {
		return tok, src, nil
	}
	// A few more lookups, spaced out: each can start an issuer call when
	// the renewal failed, and a file must not hammer an issuer in trouble.
	budget, step := min(tokenFileStaleWaitMax, tok.Expires.Sub(now)/4), 50*time.Millisecond
	for budget > 0 {
		d := min(step, budget)
		budget, step = budget-d, step*3
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return tok, src, nil
		case <-t.C:
		}
		next, nsrc, err := f.get(ctx, key)
		if err == nil && next.Expires.After(tok.Expires) {
			return next, nsrc, nil
		}
	}
	return tok, src, nil
}

// jwtIssuedAt returns a compact JWT's iat claim.
func jwtIssuedAt(tok string) (time.Time, bool) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return time.Time{}, false
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return time.Time{}, false
	}
	var c struct {
		IssuedAt *json.Number `json:"iat"`
	}
	if json.Unmarshal(payload, &c) != nil || c.IssuedAt == nil {
		return time.Time{}, false
	}
	sec, err := c.IssuedAt.Float64()
	if err != nil || sec <= 0 {
		return time.Time{}, false
	}
	return time.Unix(int64(sec), 0), true
}
