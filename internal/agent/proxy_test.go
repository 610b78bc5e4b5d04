package agent

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/agent/agenttest"
	"github.com/wicket-sh/wicket/internal/machinetoken"
)

// upstream is a platform API stand-in that records what reaches it.
type upstream struct {
	srv   *httptest.Server
	calls atomic.Int64
	mu    sync.Mutex
	seen  []*http.Request
}

func newUpstream(t *testing.T) *upstream {
	t.Helper()
	u := &upstream{}
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.calls.Add(1)
		u.mu.Lock()
		u.seen = append(u.seen, r.Clone(r.Context()))
		u.mu.Unlock()
		auth := r.Header.Get("Authorization")
		w.Header().Set("Set-Cookie", "session=upstream-secret")
		w.Header().Set("X-Ok", "yes")
		w.Header().Set("Connection", "X-Hop")
		w.Header().Set("X-Hop", "per-connection")
		switch r.URL.Path {
		case "/direct/echo-auth-header":
			w.Header().Set("X-Echo", auth)
			w.Header().Set("X-Echo-Body", strings.TrimPrefix(auth, "FlyV1 fm2_"))
		case "/direct/echo-auth-body":
			fmt.Fprintf(w, `{"you_sent":%q}`, strings.TrimPrefix(auth, "FlyV1 "))
			return
		case "/direct/500":
			w.WriteHeader(500)
			w.Write([]byte("internal secret stack trace"))
			return
		case "/direct/404":
			w.WriteHeader(404)
			w.Write([]byte(`{"msg":"no such volume"}`))
			return
		case "/direct/big":
			w.Write([]byte(strings.Repeat("x", 5<<20)))
			return
		case "/hang":
			select {
			case <-r.Context().Done():
			case <-time.After(10 * time.Second):
			}
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"path":%q,"method":%q}`, r.URL.Path, r.Method)
	}))
	t.Cleanup(u.srv.Close)
	return u
}

func (u *upstream) last() *http.Request {
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.seen) == 0 {
		return nil
	}
	return u.seen[len(u.seen)-1]
}

func proxyCfg(up string) string {
	return noLimits + fmt.Sprintf(`
[[proxy.route]]
match = "GET /v1/apps/{app}/machines/{self}"
[[proxy.route]]
match = "POST /v1/apps/{app}/machines/{self}/*"
[[proxy.route]]
match = "GET /direct/*"
upstream = %[1]q
[[proxy.route]]
match = "POST /direct/*"
upstream = %[1]q
features = ["proxy"]
[[proxy.route]]
match = "GET /hang"
upstream = %[1]q
timeout = "300ms"
[[proxy.route]]
match = "GET /dead"
upstream = "http://127.0.0.1:1"
`, up)
}

func startProxyGuest(t *testing.T) (*guest, *upstream, *atomic.Int64) {
	t.Helper()
	is := agenttest.New(t)
	var gwCalls atomic.Int64
	is.SetGateway(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gwCalls.Add(1)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"gateway":true,"machine":%q,"path":%q}`, r.Header.Get("X-Wicket-Machine-Id"), r.URL.Path)
	}))
	up := newUpstream(t)
	g := startGuest(t, is, proxyCfg(up.srv.URL))
	g.waitMetadata(t)
	return g, up, &gwCalls
}

func TestProxy_Allowlist(t *testing.T) {
	g, up, gw := startProxyGuest(t)
	self := "/v1/apps/web/machines/m-0123abcd"
	for _, tc := range []struct {
		method, path string
		status       int
		reaches      string // "gateway", "upstream" or "" (nothing sent)
	}{
		{"GET", self, 200, "gateway"},
		{"POST", self + "/stop", 200, "gateway"},
		{"POST", self + "/exec/deeper", 200, "gateway"},
		{"GET", "/direct/anything", 200, "upstream"},
		{"GET", "/direct/a/b/c", 200, "upstream"},
		// Not allowlisted: 404, nothing sent.
		{"POST", self, 404, ""},                                    // method not in any route for that path
		{"GET", self + "/stop", 404, ""},                           // deeper path not allowed for GET
		{"DELETE", self, 404, ""},                                  //
		{"GET", "/v1/apps/web/machines/m-other", 404, ""},          // {self} pins this machine
		{"GET", "/v1/apps/other/machines/m-0123abcd", 404, ""},     // {app} pins this app
		{"POST", "/v1/apps/web/machines/m-other/stop", 404, ""},    //
		{"GET", "/v1/apps/web/machines", 404, ""},                  //
		{"GET", "/v1/apps/web/machines/m-0123abcdX", 404, ""},      // anchored
		{"GET", "/v1/apps/web/machines/m-0123abcd/", 404, ""},      // anchored
		{"GET", "/direct", 404, ""},                                // "/*" needs a deeper path
		{"GET", "/direct/", 404, ""},                               //
		{"GET", "/elsewhere", 404, ""},                             //
		{"GET", "/v1/metadata/../apps/web/machines/x", 400, ""},    // dot segments
		{"GET", "/direct/a%2Fb", 400, ""},                          // encoded slash
		{"GET", "/direct/a%2fb", 400, ""},                          //
		{"GET", "/direct/%2e%2e/secret", 400, ""},                  // encoded dots
		{"GET", "/direct/%2E%2E%2Fsecret", 400, ""},                //
		{"GET", self + "%2f..%2fm-other", 400, ""},                 //
		{"GET", "/direct/a%5cb", 400, ""},                          // encoded backslash
		{"GET", "/direct/a%00b", 400, ""},                          // NUL
		{"GET", "/direct//double", 400, ""},                        // empty segment
		{"GET", "/v1/apps/web/machines/m-0123abcd/..%2f", 400, ""}, //
	} {
		gw0, up0 := gw.Load(), up.calls.Load()
		r := g.req(t, tc.method, tc.path, "", nil)
		if r.Status != tc.status {
			t.Errorf("%s %s: %d %q, want %d", tc.method, tc.path, r.Status, r.Body, tc.status)
		}
		dgw, dup := gw.Load()-gw0, up.calls.Load()-up0
		switch tc.reaches {
		case "gateway":
			if dgw != 1 || dup != 0 {
				t.Errorf("%s %s: gateway %d upstream %d, want the gateway", tc.method, tc.path, dgw, dup)
			}
		case "upstream":
			if dgw != 0 || dup != 1 {
				t.Errorf("%s %s: gateway %d upstream %d, want the upstream", tc.method, tc.path, dgw, dup)
			}
		default:
			if dgw != 0 || dup != 0 {
				t.Errorf("%s %s: reached upstream (gateway %d, upstream %d)", tc.method, tc.path, dgw, dup)
			}
			if strings.Contains(r.Body, "m-other") || strings.Contains(r.Body, "secret") {
				t.Errorf("%s %s: reply echoes input: %q", tc.method, tc.path, r.Body)
			}
		}
	}
}

func TestProxy_Headers(t *testing.T) {
	g, up, _ := startProxyGuest(t)
	r := g.req(t, "POST", "/direct/things?limit=5", `{"x":1}`, map[string]string{
		"Authorization":       "Bearer caller-own-secret",
		"Cookie":              "caller=cookie-secret",
		"Proxy-Authorization": "Basic cHJveHk=",
		"Proxy-Custom":        "p",
		"X-Wicket-Machine-Id": "m-forged",
		"X-Forwarded-For":     "10.0.0.1",
		"Connection":          "X-Caller-Hop",
		"X-Caller-Hop":        "hop",
		"Keep-Alive":          "timeout=5",
		"Te":                  "trailers",
		"Trailer":             "X-T",
		"Upgrade":             "websocket",
		"X-Request-Id":        "keep-me",
		"Content-Type":        "application/json",
	})
	if r.Status != 200 {
		t.Fatalf("proxied POST: %d %q", r.Status, r.Body)
	}
	seen := up.last()
	if seen == nil {
		t.Fatal("upstream saw nothing")
	}
	for _, h := range []string{"Cookie", "Proxy-Authorization", "Proxy-Custom", "X-Wicket-Machine-Id", "X-Forwarded-For",
		"X-Caller-Hop", "Keep-Alive", "Te", "Trailer", "Upgrade"} {
		if v := seen.Header.Get(h); v != "" {
			t.Errorf("upstream received caller header %s: %q", h, v)
		}
	}
	if seen.Header.Get("X-Request-Id") != "keep-me" || seen.Header.Get("Content-Type") != "application/json" || seen.URL.RawQuery != "limit=5" {
		t.Errorf("ordinary headers or query not forwarded: %v %q", seen.Header, seen.URL.RawQuery)
	}
	// The only credential is an attenuated FlyV1 token, and as this
	// upstream is not the issuer's gateway, one the issuer refuses
	// (TestProxy_GatewaySeesVerifiedToken checks the gateway's copy).
	auth := seen.Header.Get("Authorization")
	if !strings.HasPrefix(auth, "FlyV1 fm2_") || strings.Contains(auth, "caller-own-secret") {
		t.Fatalf("upstream Authorization = %.20q…", auth)
	}
	tok, err := machinetoken.ParseHeader(auth)
	if err != nil {
		t.Fatal(err)
	}
	if tok == g.token {
		t.Fatal("the machine token itself was sent, not an attenuated copy")
	}
	if _, err := g.is.Verifier.Verify(tok, machinetoken.Request{Feature: machinetoken.FeatureProxy, App: "web"}); err == nil || !strings.Contains(err.Error(), "external upstream") {
		t.Fatalf("copy sent to an external upstream: Verify = %v, want refused as external", err)
	}
	// Reply: no cookies, no hop-by-hop headers.
	if _, ok := r.Header["Set-Cookie"]; ok {
		t.Error("Set-Cookie relayed to the caller")
	}
	if r.Header["X-Hop"] != "" || r.Header["Connection"] == "X-Hop" {
		t.Errorf("hop-by-hop reply headers relayed: %v", r.Header)
	}
	if r.Header["X-Ok"] != "yes" {
		t.Errorf("ordinary reply header dropped: %v", r.Header)
	}
}

func TestProxy_GatewaySeesVerifiedToken(t *testing.T) {
	g, _, gw := startProxyGuest(t)
	r := g.req(t, "GET", "/v1/apps/web/machines/m-0123abcd", "", map[string]string{"Authorization": "Bearer mine", "Cookie": "a=b"})
	if r.Status != 200 || !strings.Contains(r.Body, `"machine":"m-0123abcd"`) || gw.Load() != 1 {
		t.Fatalf("gateway route: %d %q", r.Status, r.Body)
	}
	var s *agenttest.Seen
	for _, x := range g.is.Seen() {
		if strings.HasPrefix(x.Path, "/v1/apps/") {
			s = &x
		}
	}
	if s == nil || s.Verified.App != "web" || s.Header.Get("Cookie") != "" || !strings.HasPrefix(s.Header.Get("Authorization"), "FlyV1 ") {
		t.Fatalf("gateway saw %+v", s)
	}
	if left := time.Until(s.Verified.NotAfter); left > 61*time.Second {
		t.Errorf("gateway token valid %v more", left)
	}
	if !slices.Equal(s.Verified.Features, []machinetoken.Feature{machinetoken.FeatureProxy}) {
		t.Errorf("gateway token features = %v, want [proxy]", s.Verified.Features)
	}
}

func TestProxy_UpstreamFailures(t *testing.T) {
	g, _, _ := startProxyGuest(t)
	for _, tc := range []struct {
		path   string
		status int
		body   string
		maxDur time.Duration
	}{
		{"/hang", 504, "{\"error\":\"upstream timeout\",\"code\":\"upstream_timeout\"}\n", 2 * time.Second},
		{"/direct/500", 502, "{\"error\":\"bad gateway\",\"code\":\"bad_gateway\"}\n", 5 * time.Second},
		{"/dead", 502, "{\"error\":\"bad gateway\",\"code\":\"bad_gateway\"}\n", 5 * time.Second},
		{"/direct/big", 502, "{\"error\":\"bad gateway\",\"code\":\"bad_gateway\"}\n", 5 * time.Second},
		// The token echoed in a body is withheld whole.
		{"/direct/echo-auth-body", 502, "{\"error\":\"bad gateway\",\"code\":\"bad_gateway\"}\n", 5 * time.Second},
		// 4xx bodies are the API's data: relayed.
		{"/direct/404", 404, `{"msg":"no such volume"}`, 5 * time.Second},
	} {
		start := time.Now()
		r := g.req(t, "GET", tc.path, "", nil)
		if r.Status != tc.status || r.Body != tc.body {
			t.Errorf("GET %s: %d %q, want %d %q", tc.path, r.Status, r.Body, tc.status, tc.body)
		}
		if el := time.Since(start); el > tc.maxDur {
			t.Errorf("GET %s took %v", tc.path, el)
		}
	}
	if start := time.Now(); true {
		r := g.req(t, "GET", "/hang", "", nil)
		if el := time.Since(start); r.Status != 504 || el < 250*time.Millisecond {
			t.Errorf("hang answered %d after %v, want 504 at the 300ms deadline", r.Status, el)
		}
	}
	// A header echoing the token is dropped; the rest of the reply stands.
	r := g.req(t, "GET", "/direct/echo-auth-header", "", nil)
	if r.Status != 200 || r.Header["X-Echo"] != "" || r.Header["X-Echo-Body"] != "" || r.Header["X-Ok"] != "yes" {
		t.Errorf("token-echo header: %d %v", r.Status, r.Header)
	}
	st := g.do("GET", g.admin, "/v1/status", "", nil).Body
	if !strings.Contains(st, `"proxy_errors"`) || strings.Contains(st, `"proxy_errors": 0`) {
		t.Errorf("proxy errors not counted: %s", st)
	}
}

// Routes are dynamic: a reload adds one without a restart.
func TestProxy_RouteReload(t *testing.T) {
	is := agenttest.New(t)
	up := newUpstream(t)
	g := startGuest(t, is, "")
	if r := g.req(t, "GET", "/direct/x", "", nil); r.Status != 404 {
		t.Fatalf("before reload: %d", r.Status)
	}
	g.write(t, baseCfg+fmt.Sprintf("[issuer]\nurl = %q\n[[proxy.route]]\nmatch = \"GET /direct/*\"\nupstream = %q\n", is.URL, up.srv.URL))
	if r := g.do("POST", g.admin, "/v1/reload", "", nil); r.Status != 200 || !strings.Contains(r.Body, `"restart_required": []`) {
		t.Fatalf("reload: %+v", r)
	}
	if r := g.req(t, "GET", "/direct/x", "", nil); r.Status != 200 || up.calls.Load() != 1 {
		t.Errorf("after reload: %d", r.Status)
	}
}

// A route to an upstream other than the issuer's gateway gets a copy the
// issuer refuses, so what that upstream leaks or reflects is worthless;
// the gateway's copy still verifies.
func TestProxy_ExternalUpstreamCopyRefused(t *testing.T) {
	g, up, _ := startProxyGuest(t)
	if r := g.req(t, "GET", "/direct/x", "", nil); r.Status != 200 {
		t.Fatalf("external route: %d", r.Status)
	}
	tok, err := machinetoken.ParseHeader(up.last().Header.Get("Authorization"))
	if err != nil {
		t.Fatal("external upstream got no token")
	}
	for _, f := range []machinetoken.Feature{machinetoken.FeatureProxy, machinetoken.FeatureMetadata, machinetoken.FeatureOIDC} {
		if _, err := g.is.Verifier.Verify(tok, machinetoken.Request{Feature: f, App: "web"}); err == nil {
			t.Errorf("external copy verifies for %s", f)
		}
	}
	if r := g.req(t, "GET", "/v1/apps/web/machines/m-0123abcd", "", nil); r.Status != 200 {
		t.Errorf("gateway route: %d", r.Status)
	}
}

// Which upstreams are the issuer's gateway: the issuer URL itself only.
func TestIssuerGateway(t *testing.T) {
	iss, _ := url.Parse("https://issuer.example/wicket")
	for _, tc := range []struct {
		up   string
		want bool
	}{
		{"https://issuer.example/wicket", true},
		{"https://ISSUER.example:443/wicket/", true},
		{"HTTPS://issuer.example/wicket", true},
		{"http://issuer.example/wicket", false},
		{"https://issuer.example:8443/wicket", false},
		{"https://issuer.example/", false},
		{"https://issuer.example/wicket/other", false},
		{"https://issuer.example.evil/wicket", false},
	} {
		u, err := url.Parse(tc.up)
		if err != nil {
			t.Fatal(err)
		}
		if got := issuerGateway(u, iss); got != tc.want {
			t.Errorf("issuerGateway(%s) = %v, want %v", tc.up, got, tc.want)
		}
	}
	if issuerGateway(iss, nil) {
		t.Error("no issuer configured, yet a gateway")
	}
}

// TestUpstreamToken_ExternalDecidedByHost: the copy any feature gets from
// the host for an upstream is marked external unless that upstream is the
// issuer's gateway, whatever the feature asks for; the gateway's copy
// verifies for the features asked and no other.
func TestUpstreamToken_ExternalDecidedByHost(t *testing.T) {
	g, _, _ := startProxyGuest(t)
	h := runHost{g.agent}
	proxyOnly := []machinetoken.Feature{machinetoken.FeatureProxy}
	gw := h.IssuerURL()
	if gw == nil {
		t.Fatal("no issuer URL")
	}
	other, _ := url.Parse(gw.String() + "/other")
	for _, tc := range []struct {
		up       *url.URL
		verifies bool
	}{{gw, true}, {other, false}} {
		s, err := h.UpstreamToken(tc.up, proxyOnly)
		if err != nil {
			t.Fatal(err)
		}
		tok, err := machinetoken.ParseHeader(api.AuthScheme + " " + s)
		if err != nil {
			t.Fatal(err)
		}
		_, err = g.is.Verifier.Verify(tok, machinetoken.Request{Feature: machinetoken.FeatureProxy, App: "web"})
		if (err == nil) != tc.verifies {
			t.Errorf("%s: verify err = %v, want verifies %v", tc.up.Redacted(), err, tc.verifies)
		}
		if !tc.verifies && (err == nil || !strings.Contains(err.Error(), "external upstream")) {
			t.Errorf("%s: refused for %v, want the external caveat", tc.up.Redacted(), err)
		}
		if _, err := g.is.Verifier.Verify(tok, machinetoken.Request{Feature: machinetoken.FeatureOIDC, App: "web"}); err == nil {
			t.Errorf("%s: copy for proxy verifies for oidc", tc.up.Redacted())
		}
	}
}
