// Package agenttest runs an issuer for agent tests: a real HTTP server on
// loopback that implements docs/issuer-api.md (machine-authenticated
// metadata with long polls, OIDC tokens, the /v1/apps gateway) with the real
// machinetoken verifier and real OIDC signing, and that tests can stop,
// restart, slow down, count and change.
//
// The fake is held to the real issuer's behaviour by the issuer-API
// contract (internal/issuer/issuertest), which runs against both. Its
// knobs (SetTokenTTL, SetTokenDelay) go beyond what a real issuer's config
// allows, so that agent tests can be fast; everything else a default-config
// issuer does, the fake does.
package agenttest

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/superfly/macaroon"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/machinetoken"
	"github.com/wicket-sh/wicket/internal/oidc"
	"github.com/wicket-sh/wicket/internal/proxy"
)

// DefaultMachine is the machine a new Issuer registers, as GET
// /v1/machines/self reports it: the wire type itself, so the test issuer's
// body cannot drift from the real one's.
func DefaultMachine() api.Metadata {
	return api.Metadata{
		MachineID: "m-0123abcd", MachineName: "web-1", App: "web", Org: "acme",
		Region: "ams", Image: "registry.example/web:1", ImageDigest: "sha256:abc123",
		PrivateIP: "fdaa::2", Tags: map[string]string{"role": "frontend"},
	}
}

// Seen is one authenticated request as the issuer saw it.
type Seen struct {
	Method, Path, RawQuery string
	Header                 http.Header // as received, Authorization included
	Token                  string      // the token from Authorization
	Verified               *machinetoken.Verified
	Body                   []byte
}

// Issuer is a running test issuer.
type Issuer struct {
	URL      string // base URL, also the tokens' location
	Key      machinetoken.Key
	Verifier *machinetoken.Verifier
	oidcKey  *oidc.Key
	addr     string

	mu        sync.Mutex
	machine   api.Metadata
	changed   chan struct{} // closed on every machine change
	srv       *http.Server
	gateway   http.Handler
	seen      []Seen
	tokenTTL  time.Duration
	tokenWait time.Duration
	svids     svidState
	removed   bool
	revoked   map[string]bool // token ids

	// Counters.
	TokenCalls     atomic.Int64 // POST /v1/tokens/oidc answered 200
	SelfCalls      atomic.Int64 // GET /v1/machines/self, all
	LongPolls      atomic.Int64 // long polls in flight now
	MaxLongPolls   atomic.Int64 // most long polls in flight at once
	GatewayCalls   atomic.Int64 // gateway requests verified
	Unauthorized   atomic.Int64 // 401s
	TokenCallsSeen atomic.Int64 // POST /v1/tokens/oidc received, any outcome
	X509SVIDCalls  atomic.Int64 // POST /v1/svids/x509 answered 200
	JWTSVIDCalls   atomic.Int64 // POST /v1/svids/jwt answered 200
	BundleCalls    atomic.Int64 // GET /v1/svids/bundle answered 200
}

// New starts an issuer on 127.0.0.1 and stops it when the test ends.
func New(t testing.TB) *Issuer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	is := &Issuer{
		URL:      "http://" + ln.Addr().String(),
		addr:     ln.Addr().String(),
		Key:      machinetoken.NewKey(),
		machine:  DefaultMachine(),
		changed:  make(chan struct{}),
		tokenTTL: 10 * time.Minute,
		revoked:  map[string]bool{},
	}
	is.Verifier = &machinetoken.Verifier{
		Location: is.URL,
		Keys: func(id []byte) (macaroon.SigningKey, bool) {
			if string(id) == string(is.Key.ID) {
				return is.Key.Secret, true
			}
			return nil, false
		},
		Revoked: func(id string) bool {
			is.mu.Lock()
			defer is.mu.Unlock()
			return is.revoked[id]
		},
	}
	is.oidcKey, err = oidc.GenerateKey(oidc.ES256, time.Now(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := is.initSVIDs(); err != nil {
		t.Fatal(err)
	}
	is.serve(ln)
	t.Cleanup(is.Stop)
	return is
}

// MachineToken mints a token for the registered machine with features
// (all when none), valid for a day.
func (is *Issuer) MachineToken(t testing.TB, features ...machinetoken.Feature) string {
	t.Helper()
	if len(features) == 0 {
		features = machinetoken.AllFeatures()
	}
	m := is.Machine()
	tok, _, err := machinetoken.Mint(is.Key, is.URL, machinetoken.Claims{
		Org: m.Org, App: m.App, MachineID: m.MachineID, Features: features,
		NotAfter: time.Now().Add(24 * time.Hour),
	})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func (is *Issuer) serve(ln net.Listener) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/health", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, api.HealthReply{Status: api.HealthOK})
	})
	mux.HandleFunc("POST /v1/tokens/oidc", is.handleToken)
	mux.HandleFunc("GET /v1/machines/self", is.handleSelf)
	mux.HandleFunc("/v1/apps/{app}/", is.handleGateway)
	is.svidRoutes(mux)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	is.mu.Lock()
	is.srv = srv
	is.mu.Unlock()
	go srv.Serve(ln)
}

// Stop closes the listener and every connection, long polls included.
func (is *Issuer) Stop() {
	is.mu.Lock()
	srv := is.srv
	is.srv = nil
	is.mu.Unlock()
	if srv != nil {
		srv.Close()
	}
}

// Start serves again on the same address after Stop.
func (is *Issuer) Start(t testing.TB) {
	t.Helper()
	var ln net.Listener
	var err error
	for i := 0; i < 50; i++ {
		if ln, err = net.Listen("tcp", is.addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("restart issuer on %s: %v", is.addr, err)
	}
	is.serve(ln)
}

// Machine returns the registered machine.
func (is *Issuer) Machine() api.Metadata {
	is.mu.Lock()
	defer is.mu.Unlock()
	m := is.machine
	m.Tags = cloneTags(m.Tags)
	return m
}

// SetTags replaces the machine's tags, waking its long polls.
func (is *Issuer) SetTags(tags map[string]string) {
	is.mu.Lock()
	defer is.mu.Unlock()
	is.machine.Tags = cloneTags(tags)
	close(is.changed)
	is.changed = make(chan struct{})
}

// Revoke revokes token, and with it every copy of it, as the issuer's
// admin revoke does by the token's id: requests carrying it get 401 from
// now on.
func (is *Issuer) Revoke(t testing.TB, token string) {
	t.Helper()
	v, err := is.Verifier.Verify(token, machinetoken.Request{Feature: machinetoken.FeatureMetadata})
	if err != nil {
		t.Fatalf("revoke: not a token of this issuer: %v", err)
	}
	is.mu.Lock()
	defer is.mu.Unlock()
	is.revoked[v.TokenID] = true
}

// Remove unregisters the machine: its tokens get 401 from now on.
func (is *Issuer) Remove() {
	is.mu.Lock()
	defer is.mu.Unlock()
	is.removed = true
	close(is.changed)
	is.changed = make(chan struct{})
}

// SetTokenTTL sets the lifetime of OIDC tokens issued from now on.
func (is *Issuer) SetTokenTTL(d time.Duration) {
	is.mu.Lock()
	defer is.mu.Unlock()
	is.tokenTTL = d
}

// SetTokenDelay makes each token request take d before answering.
func (is *Issuer) SetTokenDelay(d time.Duration) {
	is.mu.Lock()
	defer is.mu.Unlock()
	is.tokenWait = d
}

// SetGateway sets the platform API behind /v1/apps/...: it receives
// verified requests without Authorization and with X-Wicket-* set. nil
// means no gateway (404).
func (is *Issuer) SetGateway(h http.Handler) {
	is.mu.Lock()
	defer is.mu.Unlock()
	is.gateway = h
}

// Seen returns every authenticated request so far.
func (is *Issuer) Seen() []Seen {
	is.mu.Lock()
	defer is.mu.Unlock()
	return slices.Clone(is.seen)
}

// OIDCKey returns the signing key (for verifying issued tokens).
func (is *Issuer) OIDCKey() *oidc.Key { return is.oidcKey }

// OIDCIssuer returns the iss of the machine's org.
func (is *Issuer) OIDCIssuer() string { return oidc.IssuerURL(is.URL, is.Machine().Org) }

func cloneTags(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, api.ErrorReply{Error: msg, Code: code})
}

// authenticate verifies the request's machine token for feature (and app,
// when set) and that its machine is the registered one, as the issuer does.
func (is *Issuer) authenticate(w http.ResponseWriter, r *http.Request, feature machinetoken.Feature, app string) (*machinetoken.Verified, []byte, bool) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	req := machinetoken.Request{Feature: feature, App: app}
	if feature == machinetoken.FeatureOIDC {
		// As the issuer does: the audience asked for is part of the
		// check (the agent binds its copies to one).
		req.Audience = requestedAud(body)
	}
	v, ok := is.verify(w, r, body, req)
	return v, body, ok
}

// verify checks the request's machine token for req with the real
// verifier, and that its machine is the registered one; it answers 401
// itself when not. body is recorded in Seen.
func (is *Issuer) verify(w http.ResponseWriter, r *http.Request, body []byte, req machinetoken.Request) (*machinetoken.Verified, bool) {
	tok, err := machinetoken.ParseHeader(r.Header.Get("Authorization"))
	var v *machinetoken.Verified
	if err == nil {
		v, err = is.Verifier.Verify(tok, req)
	}
	m := is.Machine()
	is.mu.Lock()
	removed := is.removed
	is.mu.Unlock()
	if err == nil && (v.MachineID != m.MachineID || removed) {
		err = errors.New("machine not registered")
	}
	if err == nil && req.Feature == machinetoken.FeatureSVID && v.SVIDKinds == nil {
		// As the issuer: SVID endpoints take only copies bound to kinds.
		err = errors.New("svid request with a token not bound to svid kinds")
	}
	if err != nil {
		is.Unauthorized.Add(1)
		writeError(w, http.StatusUnauthorized, api.CodeUnauthorized, "unauthorized")
		return nil, false
	}
	is.mu.Lock()
	is.seen = append(is.seen, Seen{Method: r.Method, Path: r.URL.Path, RawQuery: r.URL.RawQuery, Header: r.Header.Clone(), Token: tok, Verified: v, Body: body})
	is.mu.Unlock()
	return v, true
}

// requestedAud is the aud of a token request body; nil (the default
// audience) when absent or unreadable, which the handler then refuses.
func requestedAud(body []byte) []string {
	var req struct {
		Aud json.RawMessage `json:"aud"`
	}
	if json.Unmarshal(body, &req) != nil || len(req.Aud) == 0 || string(req.Aud) == "null" {
		return nil
	}
	var one string
	if json.Unmarshal(req.Aud, &one) == nil {
		return []string{one}
	}
	var many []string
	json.Unmarshal(req.Aud, &many)
	return many
}

func (is *Issuer) handleToken(w http.ResponseWriter, r *http.Request) {
	is.TokenCallsSeen.Add(1)
	v, body, ok := is.authenticate(w, r, machinetoken.FeatureOIDC, "")
	if !ok {
		return
	}
	is.mu.Lock()
	ttl, delay := is.tokenTTL, is.tokenWait
	is.mu.Unlock()
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return
		}
	}
	m := is.Machine()
	var req api.IssuerTokenRequest
	if len(strings.TrimSpace(string(body))) > 0 {
		dec := json.NewDecoder(strings.NewReader(string(body)))
		dec.DisallowUnknownFields()
		if dec.Decode(&req) != nil {
			writeError(w, 400, api.CodeBadRequest, "bad request")
			return
		}
	}
	aud := []string{oidc.IssuerURL(is.URL, m.Org)}
	if len(req.Aud) > 0 && string(req.Aud) != "null" {
		var one string
		var many []string
		switch {
		case json.Unmarshal(req.Aud, &one) == nil:
			aud = []string{one}
		case json.Unmarshal(req.Aud, &many) == nil:
			aud = many
		default:
			writeError(w, 400, api.CodeBadRequest, "bad request")
			return
		}
	}
	if oidc.ValidateAudience(aud) != nil {
		writeError(w, 400, api.CodeBadRequest, "bad request")
		return
	}
	if req.TTL != "" {
		d, err := time.ParseDuration(req.TTL)
		// The real issuer's bounds with its default config: at least a
		// minute, at most oidc.max_ttl (1h).
		if err != nil || d < time.Minute || d > time.Hour {
			writeError(w, 400, api.CodeBadRequest, "bad request")
			return
		}
		ttl = d
	}
	sub, _ := oidc.Subject(m.Org, m.App, m.MachineName)
	now := time.Now()
	// As the issuer does: no JWT outlives the copy that bought it.
	if end := v.NotAfter.Sub(now); end < ttl {
		ttl = end
	}
	jti := make([]byte, 12)
	rand.Read(jti)
	tok, err := oidc.Sign(is.oidcKey, oidc.Claims{
		Issuer: oidc.IssuerURL(is.URL, m.Org), Subject: sub, Audience: aud,
		IssuedAt: now, Expiry: now.Add(ttl), ID: hex.EncodeToString(jti),
		Org: m.Org, App: m.App, MachineID: m.MachineID, MachineName: m.MachineName,
		Region: m.Region, Image: m.Image, ImageDigest: m.ImageDigest,
	})
	if err != nil {
		writeError(w, 500, api.CodeInternal, "internal error")
		return
	}
	is.TokenCalls.Add(1)
	// exp is whole seconds in the JWT; report what the token says.
	writeJSON(w, 200, api.TokenReply{Token: tok, ExpiresAt: now.Add(ttl).UTC().Truncate(time.Second)})
}

func (is *Issuer) metadata() ([]byte, string, chan struct{}) {
	is.mu.Lock()
	defer is.mu.Unlock()
	b, _ := json.Marshal(is.machine)
	b = append(b, '\n')
	sum := sha256.Sum256(b)
	return b, `"` + hex.EncodeToString(sum[:12]) + `"`, is.changed
}

func writeMetadata(w http.ResponseWriter, body []byte, etag string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("ETag", etag)
	w.Write(body)
}

func (is *Issuer) handleSelf(w http.ResponseWriter, r *http.Request) {
	is.SelfCalls.Add(1)
	if _, _, ok := is.authenticate(w, r, machinetoken.FeatureMetadata, ""); !ok {
		return
	}
	q := r.URL.Query()
	body, etag, changed := is.metadata()
	if q.Get("wait") != "true" {
		writeMetadata(w, body, etag)
		return
	}
	wait := api.DefaultWait
	if t := q.Get("timeout"); t != "" {
		d, err := time.ParseDuration(t)
		if err != nil || d < api.MinWait || d > api.MaxWait {
			writeError(w, 400, api.CodeBadRequest, "bad request")
			return
		}
		wait = d
	}
	if q.Get("etag") != etag {
		writeMetadata(w, body, etag)
		return
	}
	n := is.LongPolls.Add(1)
	defer is.LongPolls.Add(-1)
	for {
		cur := is.MaxLongPolls.Load()
		if n <= cur || is.MaxLongPolls.CompareAndSwap(cur, n) {
			break
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), wait)
	defer cancel()
	for {
		select {
		case <-changed:
			is.mu.Lock()
			removed := is.removed
			is.mu.Unlock()
			if removed {
				writeError(w, http.StatusUnauthorized, api.CodeUnauthorized, "unauthorized")
				return
			}
			b, e, ch := is.metadata()
			if e != etag {
				writeMetadata(w, b, e)
				return
			}
			changed = ch
		case <-ctx.Done():
			if r.Context().Err() != nil {
				return
			}
			writeMetadata(w, body, etag)
			return
		}
	}
}

// gatewayHeaders is the issuer's default gateway.forward_headers.
var gatewayHeaders = func() *proxy.HeaderAllowlist {
	a, err := proxy.CompileHeaders(nil)
	if err != nil {
		panic(err)
	}
	return a
}()

func (is *Issuer) handleGateway(w http.ResponseWriter, r *http.Request) {
	is.mu.Lock()
	gw := is.gateway
	is.mu.Unlock()
	if gw == nil {
		writeError(w, 404, api.CodeNotFound, "not found")
		return
	}
	v, body, ok := is.authenticate(w, r, machinetoken.FeatureProxy, r.PathValue("app"))
	if !ok {
		return
	}
	is.GatewayCalls.Add(1)
	r2 := r.Clone(r.Context())
	// As the issuer's gateway does with its default forward_headers: only
	// allowlisted headers pass, never a credential or anything that could
	// pass for the identity set below.
	r2.Header = gatewayHeaders.Filter(r.Header)
	r2.Header.Set("X-Wicket-Machine-Id", v.MachineID)
	r2.Header.Set("X-Wicket-App", v.App)
	r2.Header.Set("X-Wicket-Org", v.Org)
	r2.Body = io.NopCloser(strings.NewReader(string(body)))
	gw.ServeHTTP(w, r2)
}
