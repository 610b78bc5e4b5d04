// Package issuertest is the contract of the issuer's public API as the
// agent relies on it (docs/issuer-api.md): machine-authenticated metadata
// with ETags and long polls, OIDC tokens with their audiences and expiry,
// refusals, and the gateway. It runs against the real issuer (its handler
// on loopback) and against agenttest.Issuer, the fake the agent's tests
// use, so that the fake cannot drift from what it stands in for.
//
// Expectations are spelled as the wire shows them (status codes, error
// codes, header names), not taken from either implementation.
package issuertest

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/machinetoken"
)

// Target is an issuer under test with one registered machine, reached on
// loopback.
type Target struct {
	// URL is the issuer's base URL and its public_url: the org's OIDC
	// issuer, and default audience, is URL + "/" + Org.
	URL string
	// Org, App, Name and MachineID are the registered machine's.
	Org, App, Name, MachineID string
	// Token is a machine token of the machine with every feature, valid
	// for an hour or more, bound to no source address.
	Token string

	// SetTag sets one tag of the machine; its metadata changes unless the
	// tag already had that value.
	SetTag func(t *testing.T, key, value string)
	// Remove unregisters the machine.
	Remove func(t *testing.T)
	// Revoke revokes Token, and so every copy of it; requests made once it
	// returns are refused.
	Revoke func(t *testing.T)
	// SetGateway makes h the platform API behind /v1/apps/{app}/.
	SetGateway func(t *testing.T, h http.Handler)
}

// clientTimeout bounds every request of the suite; the longest wait asked
// of an issuer is a few seconds.
const clientTimeout = 30 * time.Second

// Run runs the contract. newTarget must return a new issuer and machine
// for each call, stopped when the subtest ends.
func Run(t *testing.T, newTarget func(t *testing.T) *Target) {
	tests := []struct {
		name string
		fn   func(t *testing.T, tg *Target)
	}{
		{"Health", testHealth},
		{"MetadataETagStable", testETagStable},
		{"LongPollTimeoutSameETag", testLongPollTimeout},
		{"LongPollStaleETagAtOnce", testLongPollStale},
		{"LongPollWakesOnChange", testLongPollWakes},
		{"LongPollBadTimeout400", testLongPollBadTimeout},
		{"NoToken401", testNoToken},
		{"RemovedMachine401", testRemoved},
		{"RevokedToken401", testRevoked},
		{"BadRequest400", testBadRequest},
		{"DefaultAudience", testDefaultAudience},
		{"AudienceBoundCopy", testAudienceBound},
		{"ExpiryCappedAtCopy", testExpiryCapped},
		{"ExternalCopyRefused", testExternalRefused},
		{"GatewayForwardsIdentity", testGatewayIdentity},
		{"GatewayScrubsHeaders", testGatewayHeaders},
		{"GatewayOtherApp401", testGatewayOtherApp},
		{"SVIDBundle", testSVIDBundle},
		{"X509SVID", testX509SVID},
		{"JWTSVID", testJWTSVID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.fn(t, newTarget(t)) })
	}
}

// reply is one response, read whole.
type reply struct {
	status int
	header http.Header
	body   string
}

func (r reply) code() string {
	var e struct {
		Code string `json:"code"`
	}
	json.Unmarshal([]byte(r.body), &e)
	return e.Code
}

func do(t *testing.T, method, url, token, body string, hdr http.Header) reply {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), clientTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range hdr {
		req.Header[k] = vs
	}
	if token != "" {
		req.Header.Set("Authorization", "FlyV1 "+token)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, req.URL.Path, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("%s %s: read: %v", method, req.URL.Path, err)
	}
	return reply{res.StatusCode, res.Header, string(b)}
}

func self(t *testing.T, tg *Target, token, query string) reply {
	t.Helper()
	u := tg.URL + "/v1/machines/self"
	if query != "" {
		u += "?" + query
	}
	return do(t, "GET", u, token, "", nil)
}

func oidcToken(t *testing.T, tg *Target, token, body string) reply {
	t.Helper()
	return do(t, "POST", tg.URL+"/v1/tokens/oidc", token, body, http.Header{"Content-Type": {"application/json"}})
}

// expect fails unless r has status (and, for an error, the error code).
func expect(t *testing.T, what string, r reply, status int, code string) {
	t.Helper()
	if r.status != status {
		// Only error bodies are shown: a success may carry a token.
		if r.status >= 400 {
			t.Errorf("%s: status %d, want %d (body %.200q)", what, r.status, status, r.body)
		} else {
			t.Errorf("%s: status %d, want %d", what, r.status, status)
		}
		return
	}
	if code != "" && r.code() != code {
		t.Errorf("%s: error code %q, want %q (body %.200q)", what, r.code(), code, r.body)
	}
}

// restrict returns a copy of token as the agent attenuates one: valid from
// now for ttl, narrowed by s.
func restrict(t *testing.T, token string, ttl time.Duration, s machinetoken.Scope) string {
	t.Helper()
	c, err := machinetoken.RestrictScope(token, time.Now(), ttl, s)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func features(fs ...machinetoken.Feature) machinetoken.Scope {
	return machinetoken.Scope{Features: fs}
}

// issued is a 200 answer of POST /v1/tokens/oidc and the JWT's claims.
type issued struct {
	expiresAt time.Time
	iss, sub  string
	aud       []string
	exp       int64
	machineID string
}

func parseIssued(t *testing.T, r reply) issued {
	t.Helper()
	if r.status != 200 {
		t.Fatalf("token: status %d (body %.200q)", r.status, r.body)
	}
	var out api.TokenReply
	if err := json.Unmarshal([]byte(r.body), &out); err != nil {
		t.Fatalf("token reply: %v", err)
	}
	parts := strings.Split(out.Token, ".")
	if len(parts) != 3 {
		t.Fatalf("token is not a JWT (%d parts)", len(parts))
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatalf("JWT payload: %v", err)
	}
	var c struct {
		Iss       string          `json:"iss"`
		Sub       string          `json:"sub"`
		Aud       json.RawMessage `json:"aud"`
		Exp       int64           `json:"exp"`
		MachineID string          `json:"machine_id"`
	}
	if err := json.Unmarshal(payload, &c); err != nil {
		t.Fatalf("JWT claims: %v", err)
	}
	var aud []string
	var one string
	if json.Unmarshal(c.Aud, &one) == nil {
		aud = []string{one}
	} else if err := json.Unmarshal(c.Aud, &aud); err != nil {
		t.Fatalf("JWT aud: %v", err)
	}
	if c.Exp != out.ExpiresAt.Unix() {
		t.Errorf("expires_at %s but the JWT's exp is %d", out.ExpiresAt.Format(time.RFC3339), c.Exp)
	}
	return issued{expiresAt: out.ExpiresAt, iss: c.Iss, sub: c.Sub, aud: aud, exp: c.Exp, machineID: c.MachineID}
}

func (tg *Target) orgIssuer() string { return tg.URL + "/" + tg.Org }

func testHealth(t *testing.T, tg *Target) {
	r := do(t, "GET", tg.URL+"/v1/health", "", "", nil)
	expect(t, "health", r, 200, "")
	if !strings.Contains(r.body, `"ok"`) {
		t.Errorf("health body %q", r.body)
	}
}

// testETagStable: identical metadata has one ETag, whatever the copy that
// asks and however often; a change changes it; a write that leaves the
// metadata as it was does not.
func testETagStable(t *testing.T, tg *Target) {
	a := self(t, tg, tg.Token, "")
	expect(t, "metadata", a, 200, "")
	etag := a.header.Get("ETag")
	if len(etag) < 3 || etag[0] != '"' || etag[len(etag)-1] != '"' {
		t.Fatalf("ETag %q: want a quoted strong tag", etag)
	}
	if ct := a.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("Content-Type %q", ct)
	}
	if cc := a.header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control %q, want no-store", cc)
	}
	var md struct {
		MachineID   string            `json:"machine_id"`
		MachineName string            `json:"machine_name"`
		Org         string            `json:"org"`
		App         string            `json:"app"`
		Tags        map[string]string `json:"tags"`
	}
	if err := json.Unmarshal([]byte(a.body), &md); err != nil {
		t.Fatalf("metadata body: %v", err)
	}
	if md.MachineID != tg.MachineID || md.MachineName != tg.Name || md.Org != tg.Org || md.App != tg.App || md.Tags == nil {
		t.Errorf("metadata %+v, want machine %s (%s/%s/%s) with a tags object", md, tg.MachineID, tg.Org, tg.App, tg.Name)
	}
	copy := restrict(t, tg.Token, time.Minute, features(machinetoken.FeatureMetadata))
	for i := range 3 {
		b := self(t, tg, copy, "")
		if b.status != 200 || b.header.Get("ETag") != etag || b.body != a.body {
			t.Fatalf("read %d: status %d, ETag %q, same body %v; want 200, %q, true", i, b.status, b.header.Get("ETag"), b.body == a.body, etag)
		}
	}
	tg.SetTag(t, "contract", "one")
	changed := self(t, tg, tg.Token, "")
	e1 := changed.header.Get("ETag")
	if e1 == etag || !strings.Contains(changed.body, `"contract":"one"`) {
		t.Fatalf("after a change: ETag %q (before %q), body %.200q", e1, etag, changed.body)
	}
	tg.SetTag(t, "contract", "one")
	if again := self(t, tg, tg.Token, ""); again.header.Get("ETag") != e1 || again.body != changed.body {
		t.Errorf("a write leaving the metadata unchanged changed its ETag: %q, want %q", again.header.Get("ETag"), e1)
	}
}

// testLongPollTimeout: a long poll on the current ETag with nothing
// changing is answered at its timeout with the same ETag and body.
func testLongPollTimeout(t *testing.T, tg *Target) {
	cur := self(t, tg, tg.Token, "")
	etag := cur.header.Get("ETag")
	start := time.Now()
	r := self(t, tg, tg.Token, "wait=true&timeout=1s&etag="+etag)
	expect(t, "long poll", r, 200, "")
	if r.header.Get("ETag") != etag || r.body != cur.body {
		t.Errorf("long poll timed out with ETag %q, want %q and the same body", r.header.Get("ETag"), etag)
	}
	if waited := time.Since(start); waited < 900*time.Millisecond {
		t.Errorf("long poll on the current ETag answered after %s, before its 1s timeout", waited)
	}
}

// testLongPollStale: a long poll naming another ETag (or none) is
// answered at once with the current metadata.
func testLongPollStale(t *testing.T, tg *Target) {
	etag := self(t, tg, tg.Token, "").header.Get("ETag")
	for _, q := range []string{"wait=true&timeout=60s&etag=%22stale%22", "wait=true&timeout=60s"} {
		r := self(t, tg, tg.Token, q)
		expect(t, q, r, 200, "")
		if r.header.Get("ETag") != etag {
			t.Errorf("%s: ETag %q, want the current %q", q, r.header.Get("ETag"), etag)
		}
	}
}

// testLongPollWakes: a long poll waiting on the current ETag is answered
// with the new metadata when the machine changes.
func testLongPollWakes(t *testing.T, tg *Target) {
	etag := self(t, tg, tg.Token, "").header.Get("ETag")
	got := make(chan reply, 1)
	go func() { got <- self(t, tg, tg.Token, "wait=true&timeout=20s&etag="+etag) }()
	// Give the poll time to be waiting: if the change comes first, the
	// poll sees a stale ETag and the answer is the same.
	time.Sleep(200 * time.Millisecond)
	tg.SetTag(t, "contract", "woken")
	r := <-got
	expect(t, "long poll", r, 200, "")
	if r.header.Get("ETag") == etag || !strings.Contains(r.body, `"contract":"woken"`) {
		t.Errorf("long poll answered ETag %q (was %q), body %.200q; want the changed metadata", r.header.Get("ETag"), etag, r.body)
	}
	if now := self(t, tg, tg.Token, ""); now.header.Get("ETag") != r.header.Get("ETag") {
		t.Errorf("long poll's ETag %q differs from a read's %q", r.header.Get("ETag"), now.header.Get("ETag"))
	}
}

func testLongPollBadTimeout(t *testing.T, tg *Target) {
	etag := self(t, tg, tg.Token, "").header.Get("ETag")
	for _, d := range []string{"500ms", "121s", "soon"} {
		expect(t, "timeout "+d, self(t, tg, tg.Token, "wait=true&etag="+etag+"&timeout="+d), 400, "bad_request")
	}
}

func testNoToken(t *testing.T, tg *Target) {
	expect(t, "metadata without a token", self(t, tg, "", ""), 401, "unauthorized")
	expect(t, "token without a token", oidcToken(t, tg, "", `{"aud":"sts.amazonaws.com"}`), 401, "unauthorized")
	expect(t, "metadata with a malformed token", self(t, tg, "fm2_bogus", ""), 401, "unauthorized")
	// A copy for one feature is refused for another.
	md := restrict(t, tg.Token, time.Minute, features(machinetoken.FeatureMetadata))
	expect(t, "token with a metadata copy", oidcToken(t, tg, md, `{"aud":"sts.amazonaws.com"}`), 401, "unauthorized")
}

// testRemoved: removing the machine refuses its token at once, and ends a
// long poll waiting on it with 401.
func testRemoved(t *testing.T, tg *Target) {
	etag := self(t, tg, tg.Token, "").header.Get("ETag")
	got := make(chan reply, 1)
	go func() { got <- self(t, tg, tg.Token, "wait=true&timeout=20s&etag="+etag) }()
	time.Sleep(200 * time.Millisecond)
	tg.Remove(t)
	expect(t, "long poll over the removal", <-got, 401, "unauthorized")
	expect(t, "metadata after removal", self(t, tg, tg.Token, ""), 401, "unauthorized")
	expect(t, "token after removal", oidcToken(t, tg, tg.Token, `{"aud":"sts.amazonaws.com"}`), 401, "unauthorized")
}

// testRevoked: revoking a token refuses it and every copy of it.
func testRevoked(t *testing.T, tg *Target) {
	copy := restrict(t, tg.Token, time.Minute, features(machinetoken.FeatureMetadata))
	expect(t, "copy before revocation", self(t, tg, copy, ""), 200, "")
	tg.Revoke(t)
	expect(t, "metadata after revocation", self(t, tg, tg.Token, ""), 401, "unauthorized")
	expect(t, "copy after revocation", self(t, tg, copy, ""), 401, "unauthorized")
	expect(t, "token after revocation", oidcToken(t, tg, tg.Token, `{"aud":"sts.amazonaws.com"}`), 401, "unauthorized")
}

// testBadRequest: a token request the issuer cannot serve is 400, once
// the token passed.
func testBadRequest(t *testing.T, tg *Target) {
	for _, body := range []string{
		`{"aud":""}`,
		`{"aud":["sts.amazonaws.com",""]}`,
		`{"aud":"has space"}`,
		`{"aud":[]}`,
		`{"aud":5}`,
		`{"aud":"sts.amazonaws.com","extra":1}`,
		`{"aud":"sts.amazonaws.com","ttl":"30s"}`,
		`{"aud":"sts.amazonaws.com","ttl":"2h"}`,
		`{"aud":"sts.amazonaws.com","ttl":"soon"}`,
		`not json`,
	} {
		expect(t, body, oidcToken(t, tg, tg.Token, body), 400, "bad_request")
	}
	// The body is answered only once the token passes.
	expect(t, "bad body without a token", oidcToken(t, tg, "", `{"aud":""}`), 401, "unauthorized")
}

// testDefaultAudience: asking for no audience gets the org's issuer URL,
// which is also iss.
func testDefaultAudience(t *testing.T, tg *Target) {
	for _, body := range []string{"", "{}", `{"aud":null}`} {
		got := parseIssued(t, oidcToken(t, tg, tg.Token, body))
		if !slices.Equal(got.aud, []string{tg.orgIssuer()}) || got.iss != tg.orgIssuer() {
			t.Errorf("body %q: aud %q, iss %q; want both %q", body, got.aud, got.iss, tg.orgIssuer())
		}
		if want := tg.Org + ":" + tg.App + ":" + tg.Name; got.sub != want || got.machineID != tg.MachineID {
			t.Errorf("body %q: sub %q, machine_id %q; want %q, %q", body, got.sub, got.machineID, want, tg.MachineID)
		}
	}
	got := parseIssued(t, oidcToken(t, tg, tg.Token, `{"aud":["a.example","b.example"]}`))
	if !slices.Equal(got.aud, []string{"a.example", "b.example"}) {
		t.Errorf("two audiences: aud %q", got.aud)
	}
}

// testAudienceBound: a copy bound to audiences gets JWTs for those only,
// the default audience only when it names it, and nothing but OIDC.
func testAudienceBound(t *testing.T, tg *Target) {
	oidcOnly := func(aud ...string) string {
		return restrict(t, tg.Token, time.Minute, machinetoken.Scope{
			Features: []machinetoken.Feature{machinetoken.FeatureOIDC}, Audiences: aud})
	}
	sts := oidcOnly("sts.amazonaws.com")
	if got := parseIssued(t, oidcToken(t, tg, sts, `{"aud":"sts.amazonaws.com"}`)); !slices.Equal(got.aud, []string{"sts.amazonaws.com"}) {
		t.Errorf("bound copy: aud %q", got.aud)
	}
	expect(t, "bound copy, other audience", oidcToken(t, tg, sts, `{"aud":"other.example"}`), 401, "unauthorized")
	expect(t, "bound copy, one more audience", oidcToken(t, tg, sts, `{"aud":["sts.amazonaws.com","other.example"]}`), 401, "unauthorized")
	expect(t, "bound copy, default audience", oidcToken(t, tg, sts, ""), 401, "unauthorized")
	expect(t, "bound copy, metadata", self(t, tg, sts, ""), 401, "unauthorized")

	def := oidcOnly(machinetoken.DefaultAudience)
	if got := parseIssued(t, oidcToken(t, tg, def, "")); !slices.Equal(got.aud, []string{tg.orgIssuer()}) {
		t.Errorf("copy bound to the default audience: aud %q", got.aud)
	}
	expect(t, "copy bound to the default, explicit audience", oidcToken(t, tg, def, `{"aud":"sts.amazonaws.com"}`), 401, "unauthorized")
	// Spelling the default out is another audience to a copy bound to it.
	expect(t, "copy bound to the default, default spelled out", oidcToken(t, tg, def, `{"aud":"`+tg.orgIssuer()+`"}`), 401, "unauthorized")
}

// testExpiryCapped: no JWT outlives the copy that bought it; a token with
// time to spare gets the ttl asked for.
func testExpiryCapped(t *testing.T, tg *Target) {
	start := time.Now()
	short := restrict(t, tg.Token, 2*time.Minute, machinetoken.Scope{
		Features: []machinetoken.Feature{machinetoken.FeatureOIDC}, Audiences: []string{"sts.amazonaws.com"}})
	end := start.Add(2 * time.Minute)
	for _, body := range []string{`{"aud":"sts.amazonaws.com","ttl":"1h"}`, `{"aud":"sts.amazonaws.com"}`} {
		got := parseIssued(t, oidcToken(t, tg, short, body))
		if got.expiresAt.After(end) || time.Unix(got.exp, 0).After(end) {
			t.Errorf("%s: a copy valid until %s bought a JWT expiring %s", body, end.Format(time.RFC3339), got.expiresAt.Format(time.RFC3339))
		}
	}
	got := parseIssued(t, oidcToken(t, tg, tg.Token, `{"aud":"sts.amazonaws.com","ttl":"5m"}`))
	if d := got.expiresAt.Sub(start); d < 4*time.Minute || d > 6*time.Minute {
		t.Errorf("ttl 5m: expires in %s", d)
	}
}

// testExternalRefused: a copy marked as sent to an upstream other than the
// issuer is refused on every endpoint, whatever its features.
func testExternalRefused(t *testing.T, tg *Target) {
	tg.SetGateway(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "reached") }))
	ext := restrict(t, tg.Token, time.Minute, machinetoken.Scope{External: "https://upstream.example"})
	expect(t, "external copy, metadata", self(t, tg, ext, ""), 401, "unauthorized")
	expect(t, "external copy, token", oidcToken(t, tg, ext, `{"aud":"sts.amazonaws.com"}`), 401, "unauthorized")
	r := do(t, "GET", tg.URL+"/v1/apps/"+tg.App+"/machines", ext, "", nil)
	expect(t, "external copy, gateway", r, 401, "unauthorized")
	// The same copy without the mark passes: the mark is what refuses it.
	plain := restrict(t, tg.Token, time.Minute, machinetoken.Scope{})
	expect(t, "plain copy, gateway", do(t, "GET", tg.URL+"/v1/apps/"+tg.App+"/machines", plain, "", nil), 200, "")
}

// recorder is a platform API that keeps the last request it received.
type recorder struct {
	mu   sync.Mutex
	last *http.Request
	body string
}

func (rc *recorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	rc.mu.Lock()
	rc.last, rc.body = r.Clone(context.Background()), string(b)
	rc.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusAccepted)
	io.WriteString(w, `{"platform":true}`)
}

func (rc *recorder) got(t *testing.T) (*http.Request, string) {
	t.Helper()
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.last == nil {
		t.Fatal("the platform API received nothing")
	}
	return rc.last, rc.body
}

// testGatewayIdentity: the gateway forwards method, path, query and body
// with the machine's identity in X-Wicket-*, and the platform's answer
// back.
func testGatewayIdentity(t *testing.T, tg *Target) {
	rc := &recorder{}
	tg.SetGateway(t, rc)
	copy := restrict(t, tg.Token, time.Minute, features(machinetoken.FeatureProxy))
	path := "/v1/apps/" + tg.App + "/machines/" + tg.MachineID + "/stop"
	r := do(t, "POST", tg.URL+path+"?force=true", copy, `{"signal":"TERM"}`, http.Header{"Content-Type": {"application/json"}})
	if r.status != http.StatusAccepted || r.body != `{"platform":true}` {
		t.Errorf("gateway answered %d %.200q; want the platform's 202", r.status, r.body)
	}
	up, body := rc.got(t)
	if up.Method != "POST" || up.URL.Path != path || up.URL.RawQuery != "force=true" || body != `{"signal":"TERM"}` {
		t.Errorf("platform received %s %s?%s %q", up.Method, up.URL.Path, up.URL.RawQuery, body)
	}
	for k, want := range map[string]string{"X-Wicket-Machine-Id": tg.MachineID, "X-Wicket-App": tg.App, "X-Wicket-Org": tg.Org} {
		if vs := up.Header.Values(k); len(vs) != 1 || vs[0] != want {
			t.Errorf("platform received %s %q, want %q", k, vs, want)
		}
	}
	if up.Header.Get("Authorization") != "" {
		t.Error("platform received the machine token")
	}
}

// testGatewayHeaders: with the default allowlist the platform receives the
// allowlisted headers only: never a credential, a forged identity, a
// header that passes for one (X_Wicket_App), or an override of method,
// path or client address.
func testGatewayHeaders(t *testing.T, tg *Target) {
	rc := &recorder{}
	tg.SetGateway(t, rc)
	sent := http.Header{
		"Accept":                 {"application/json"},
		"X-Request-Id":           {"req-1"},
		"If-None-Match":          {`"e1"`},
		"X-Custom":               {"not allowlisted"},
		"Cookie":                 {"session=secret"},
		"Proxy-Authorization":    {"Basic c2VjcmV0"},
		"X-Wicket-Machine-Id":    {"m-forged"},
		"X-Wicket-Extra":         {"forged"},
		"X_Wicket_App":           {"forged-app"},
		"X-Forwarded-For":        {"203.0.113.9"},
		"Forwarded":              {"for=203.0.113.9"},
		"X-Real-Ip":              {"203.0.113.9"},
		"X-Http-Method-Override": {"DELETE"},
		"X-Original-Url":         {"/admin"},
	}
	r := do(t, "GET", tg.URL+"/v1/apps/"+tg.App+"/machines", tg.Token, "", sent)
	expect(t, "gateway", r, http.StatusAccepted, "")
	up, _ := rc.got(t)
	for _, k := range []string{"Accept", "X-Request-Id", "If-None-Match"} {
		if up.Header.Get(k) != sent.Get(k) {
			t.Errorf("allowlisted %s: platform received %q, want %q", k, up.Header.Get(k), sent.Get(k))
		}
	}
	for k, vs := range up.Header {
		lower := strings.ToLower(k)
		switch {
		case strings.Contains(k, "_"):
			t.Errorf("platform received %s: %q", k, vs)
		case strings.HasPrefix(lower, "x-wicket-"):
			want := map[string]string{"x-wicket-machine-id": tg.MachineID, "x-wicket-app": tg.App, "x-wicket-org": tg.Org}[lower]
			if len(vs) != 1 || vs[0] != want {
				t.Errorf("platform received %s: %q, want only the gateway's %q", k, vs, want)
			}
		}
	}
	for _, k := range []string{"X-Custom", "Cookie", "Proxy-Authorization", "Authorization", "X-Forwarded-For", "Forwarded",
		"X-Real-Ip", "X-Http-Method-Override", "X-Original-Url"} {
		if v := up.Header.Get(k); v != "" {
			t.Errorf("platform received %s: %q", k, v)
		}
	}
	if up.Method != "GET" || up.URL.Path != "/v1/apps/"+tg.App+"/machines" {
		t.Errorf("platform received %s %s", up.Method, up.URL.Path)
	}
}

func testGatewayOtherApp(t *testing.T, tg *Target) {
	rc := &recorder{}
	tg.SetGateway(t, rc)
	expect(t, "gateway, other app", do(t, "GET", tg.URL+"/v1/apps/not-"+tg.App+"/machines", tg.Token, "", nil), 401, "unauthorized")
	md := restrict(t, tg.Token, time.Minute, features(machinetoken.FeatureMetadata))
	expect(t, "gateway, metadata copy", do(t, "GET", tg.URL+"/v1/apps/"+tg.App+"/machines", md, "", nil), 401, "unauthorized")
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.last != nil {
		t.Errorf("refused requests reached the platform: %s %s", rc.last.Method, rc.last.URL.Path)
	}
}
