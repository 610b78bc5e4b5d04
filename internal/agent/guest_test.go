package agent

import (
	"context"
	"crypto"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/agent/agenttest"
	"github.com/wicket-sh/wicket/internal/agent/builtin"
	"github.com/wicket-sh/wicket/internal/agent/feature"
	"github.com/wicket-sh/wicket/internal/agent/feature/metadata"
	"github.com/wicket-sh/wicket/internal/agent/feature/spiffe"
	"github.com/wicket-sh/wicket/internal/machinetoken"
	"github.com/wicket-sh/wicket/internal/sockettest"
	"github.com/wicket-sh/wicket/internal/wait"
)

// guest is an agent wired to a test issuer.
type guest struct {
	*harness
	is    *agenttest.Issuer
	token string // the machine token (for leak checks)
	hc    *http.Client
}

// fastRetries makes the agent's upstream retries quick enough for tests:
// the metadata feature with short backoff bounds.
func fastRetries(o Options) Options {
	if o.Features == nil {
		o.Features = builtin.Features()
	}
	feats := append([]feature.Module(nil), o.Features...)
	for i, m := range feats {
		if _, ok := m.(metadata.Module); ok {
			feats[i] = metadata.Module{BackoffMin: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond}
		}
	}
	o.Features = feats
	return o
}

// metaFeature is a's metadata feature.
func metaFeature(a *Agent) *metadata.Feature {
	for _, b := range a.built {
		if f, ok := b.inst.(*metadata.Feature); ok {
			return f
		}
	}
	panic("no metadata feature")
}

// startGuest runs an agent whose [issuer] is is, with extra config
// appended, holding a machine token minted by is.
func startGuest(t *testing.T, is *agenttest.Issuer, extra string) *guest {
	t.Helper()
	return startGuestWith(t, is, extra, Options{})
}

// startGuestWith is startGuest with more options.
func startGuestWith(t *testing.T, is *agenttest.Issuer, extra string, opts Options) *guest {
	t.Helper()
	return startGuestBefore(t, is, extra, opts, nil)
}

// startGuestBefore is startGuestWith, with before called on the agent
// before it runs.
func startGuestBefore(t *testing.T, is *agenttest.Issuer, extra string, opts Options, before func(*Agent)) *guest {
	t.Helper()
	tok := is.MachineToken(t)
	mt, err := ParseMachineToken(tok)
	if err != nil {
		t.Fatal(err)
	}
	cfg := baseCfg + fmt.Sprintf("[issuer]\nurl = %q\n", is.URL) + extra
	opts.MachineToken = mt
	h := startAgentWith(t, cfg, fastRetries(opts), before)
	g := &guest{harness: h, is: is, token: tok}
	g.hc = &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{
		MaxIdleConnsPerHost: 512,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", h.api)
		},
	}}
	t.Cleanup(g.hc.CloseIdleConnections)
	return g
}

// req makes one request on the API socket with a shared keep-alive client.
func (g *guest) req(t testing.TB, method, path, body string, hdr map[string]string) sockettest.Result {
	t.Helper()
	req, err := http.NewRequest(method, "http://wicket"+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := g.hc.Do(req)
	if err != nil {
		return sockettest.Result{Err: err.Error()}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	h := map[string]string{}
	for k := range resp.Header {
		h[k] = strings.Join(resp.Header.Values(k), "\n")
	}
	return sockettest.Result{Status: resp.StatusCode, Header: h, Body: string(b)}
}

// waitMetadata waits for the agent's first metadata fetch.
func (g *guest) waitMetadata(t *testing.T) sockettest.Result {
	t.Helper()
	var r sockettest.Result
	wait.Eventually(t, 5*time.Second, func() bool {
		r = g.req(t, "GET", "/v1/metadata", "", nil)
		return r.Status == 200
	})
	return r
}

const (
	bodyBadRequest  = "{\"error\":\"bad request\",\"code\":\"bad_request\"}\n"
	bodyNotFound    = "{\"error\":\"not found\",\"code\":\"not_found\"}\n"
	bodyTokenUnavai = "{\"error\":\"token unavailable\",\"code\":\"upstream_unavailable\"}\n"
)

// noLimits lifts the per-uid rate limit for tests that fire many requests.
const noLimits = "[limits]\ntoken_rate = 1000000.0\ntoken_burst = 1000000\n"

func TestMetadata(t *testing.T) {
	is := agenttest.New(t)
	g := startGuest(t, is, "")
	r := g.waitMetadata(t)
	var m api.Metadata
	if err := json.Unmarshal([]byte(r.Body), &m); err != nil {
		t.Fatal(err)
	}
	want := is.Machine()
	if m.MachineID != want.MachineID || m.Region != want.Region || m.Tags["role"] != "frontend" {
		t.Errorf("metadata = %+v", m)
	}
	if r.Header["Etag"] == "" || r.Header["Content-Type"] != "application/json" {
		t.Errorf("headers: %v", r.Header)
	}
	for _, tc := range []struct {
		path, status, body, ctype string
	}{
		{"/v1/metadata/region", "200", "ams", "text/plain; charset=utf-8"},
		{"/v1/metadata/machine_id", "200", want.MachineID, "text/plain; charset=utf-8"},
		{"/v1/metadata/private_ip", "200", "fdaa::2", "text/plain; charset=utf-8"},
		{"/v1/metadata/tags/role", "200", "frontend", "text/plain; charset=utf-8"},
		{"/v1/metadata/tags", "200", "{\"role\":\"frontend\"}\n", "application/json"},
		{"/v1/metadata/nope", "404", bodyNotFound, ""},
		{"/v1/metadata/tags/nope", "404", bodyNotFound, ""},
		{"/v1/metadata/tags/role/deeper", "404", bodyNotFound, ""},
	} {
		r := g.req(t, "GET", tc.path, "", nil)
		if fmt.Sprint(r.Status) != tc.status || r.Body != tc.body {
			t.Errorf("GET %s = %d %q, want %s %q", tc.path, r.Status, r.Body, tc.status, tc.body)
		}
		if tc.ctype != "" && r.Header["Content-Type"] != tc.ctype {
			t.Errorf("GET %s content type %q", tc.path, r.Header["Content-Type"])
		}
	}
	if r := g.req(t, "POST", "/v1/metadata", "", nil); r.Status != 405 || r.Header["Allow"] != "GET" {
		t.Errorf("POST /v1/metadata = %d allow %q", r.Status, r.Header["Allow"])
	}
}

func TestMetadata_LongPoll(t *testing.T) {
	is := agenttest.New(t)
	g := startGuest(t, is, "")
	etag := g.waitMetadata(t).Header["Etag"]

	// Timing (at once, full timeout, unquoted etags) is
	// TestMetadata_LongPollTiming's (clock_test.go); this proves the
	// wiring: a change at the issuer wakes a local long poll.
	t.Run("tag change wakes", func(t *testing.T) {
		done := make(chan sockettest.Result, 1)
		start := time.Now()
		go func() {
			done <- g.req(t, "GET", "/v1/metadata/tags/role?wait=true&timeout=20s&etag="+etag, "", nil)
		}()
		wait.Eventually(t, 5*time.Second, func() bool { return metaFeature(g.agent).Waiters() == 1 })
		is.SetTags(map[string]string{"role": "backend"})
		r := <-done
		if r.Status != 200 || r.Body != "backend" || r.Header["Etag"] == etag || time.Since(start) > 10*time.Second {
			t.Errorf("woken poll: %d %q %q after %v", r.Status, r.Body, r.Header["Etag"], time.Since(start))
		}
	})
	t.Run("bad parameters", func(t *testing.T) {
		for _, q := range []string{"wait=maybe", "wait=true&timeout=0s", "wait=true&timeout=500ms",
			"wait=true&timeout=121s", "wait=true&timeout=soon", "wait=true&timeout=1s&timeout=2s", "wait=true&etag=" + strings.Repeat("e", 300)} {
			r := g.req(t, "GET", "/v1/metadata?"+q, "", nil)
			if r.Status != 400 || r.Body != bodyBadRequest {
				t.Errorf("?%s = %d %q", q, r.Status, r.Body)
			}
		}
	})
}

// 100 local waiters share the agent's one upstream long poll.
func TestMetadata_FanOut_OneUpstreamPoll(t *testing.T) {
	is := agenttest.New(t)
	g := startGuest(t, is, "")
	etag := g.waitMetadata(t).Header["Etag"]
	wait.Eventually(t, 5*time.Second, func() bool { return is.LongPolls.Load() == 1 })

	const n = 100
	results := make(chan sockettest.Result, n)
	for i := 0; i < n; i++ {
		go func() { results <- g.req(t, "GET", "/v1/metadata?wait=true&timeout=30s&etag="+etag, "", nil) }()
	}
	wait.Eventually(t, 10*time.Second, func() bool { return metaFeature(g.agent).Waiters() == n })
	if got := is.LongPolls.Load(); got != 1 {
		t.Errorf("upstream long polls in flight with %d local waiters = %d, want 1", n, got)
	}
	is.SetTags(map[string]string{"role": "fanout"})
	for i := 0; i < n; i++ {
		r := <-results
		if r.Status != 200 || r.Header["Etag"] == etag || !strings.Contains(r.Body, "fanout") {
			t.Fatalf("waiter %d: %d %q", i, r.Status, r.Body)
		}
	}
	if got := is.MaxLongPolls.Load(); got != 1 {
		t.Errorf("most upstream long polls at once = %d, want 1", got)
	}
}

// Before the first successful fetch: 503; then recovery without restart.
func TestMetadata_UnavailableUntilFirstFetch(t *testing.T) {
	is := agenttest.New(t)
	is.Stop()
	g := startGuest(t, is, "")
	r := g.req(t, "GET", "/v1/metadata", "", nil)
	if r.Status != 503 || r.Body != "{\"error\":\"metadata unavailable\",\"code\":\"upstream_unavailable\"}\n" {
		t.Errorf("before first fetch: %d %q", r.Status, r.Body)
	}
	if r := g.req(t, "GET", "/v1/metadata/region", "", nil); r.Status != 503 {
		t.Errorf("field before first fetch: %d", r.Status)
	}
	is.Start(t)
	g.waitMetadata(t)
}

func verifyJWT(t *testing.T, is *agenttest.Issuer, tok string) jwt.Claims {
	t.Helper()
	parsed, err := jwt.ParseSigned(tok, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		t.Fatalf("parse JWT: %v", err)
	}
	var c jwt.Claims
	if err := parsed.Claims(is.OIDCKey().Private.(crypto.Signer).Public(), &c); err != nil {
		t.Fatalf("JWT signature: %v", err)
	}
	return c
}

func TestOIDCToken_Formats(t *testing.T) {
	is := agenttest.New(t)
	g := startGuest(t, is, "")
	r := g.req(t, "POST", "/v1/tokens/oidc", `{"aud":"sts.amazonaws.com"}`, nil)
	if r.Status != 200 || r.Header["Content-Type"] != "application/jwt" || r.Header["Cache-Control"] != "no-store" {
		t.Fatalf("raw: %d %v %q", r.Status, r.Header, r.Body)
	}
	c := verifyJWT(t, is, r.Body)
	if !c.Audience.Contains("sts.amazonaws.com") || c.Issuer != is.OIDCIssuer() || c.Subject != "acme:web:web-1" {
		t.Errorf("claims: %+v", c)
	}

	r = g.req(t, "POST", "/v1/tokens/oidc", `{"aud":"sts.amazonaws.com"}`, map[string]string{"Accept": "text/html, application/json;q=0.9"})
	var j struct {
		Token     string `json:"token"`
		ExpiresAt string `json:"expires_at"`
	}
	if r.Status != 200 || r.Header["Content-Type"] != "application/json" || json.Unmarshal([]byte(r.Body), &j) != nil {
		t.Fatalf("json: %d %v %q", r.Status, r.Header, r.Body)
	}
	exp, err := time.Parse(time.RFC3339, j.ExpiresAt)
	if err != nil || !exp.Equal(c.Expiry.Time()) {
		t.Errorf("expires_at %q vs exp %v (%v)", j.ExpiresAt, c.Expiry.Time(), err)
	}

	// No body, an empty object or a null aud: the issuer's default audience.
	for _, body := range []string{"", "{}", `{"aud":null}`} {
		r = g.req(t, "POST", "/v1/tokens/oidc", body, nil)
		if r.Status != 200 {
			t.Fatalf("body %q: %d %q", body, r.Status, r.Body)
		}
		if c := verifyJWT(t, is, r.Body); !c.Audience.Contains(is.OIDCIssuer()) {
			t.Errorf("default audience: %v", c.Audience)
		}
	}
}

func TestOIDCToken_BadRequestsNotEchoed(t *testing.T) {
	is := agenttest.New(t)
	g := startGuest(t, is, noLimits)
	for _, body := range []string{
		`{"aud":"` + strings.Repeat("a", 257) + `"}`,
		`{"aud":"has space EVILMARK"}`,
		`{"aud":"ctl\u0001EVILMARK"}`,
		`{"aud":"EVILMARK\u00e9"}`,
		`{"aud":""}`,
		`{"aud":["EVILMARK"]}`,
		`{"aud":42}`,
		`{"aud":"ok","EVILMARK":1}`,
		`{"aud":"ok"} EVILMARK`,
		`EVILMARK`,
	} {
		r := g.req(t, "POST", "/v1/tokens/oidc", body, nil)
		if r.Status != 400 || r.Body != bodyBadRequest {
			t.Errorf("body %.40q: %d %q", body, r.Status, r.Body)
		}
	}
	if n := is.TokenCallsSeen.Load(); n != 0 {
		t.Errorf("bad requests reached the issuer %d times", n)
	}
	if r := g.req(t, "GET", "/v1/tokens/oidc", "", nil); r.Status != 405 || r.Header["Allow"] != "POST" {
		t.Errorf("GET tokens: %d %v", r.Status, r.Header)
	}
}

// 200 concurrent callers for one audience cause exactly one issuer call.
func TestOIDCToken_SingleFlight(t *testing.T) {
	is := agenttest.New(t)
	is.SetTokenDelay(300 * time.Millisecond)
	g := startGuest(t, is, noLimits)
	const n = 200
	var wg sync.WaitGroup
	results := make([]sockettest.Result, n)
	for i := range n {
		wg.Go(func() { results[i] = g.req(t, "POST", "/v1/tokens/oidc", `{"aud":"vault"}`, nil) })
	}
	wg.Wait()
	for i, r := range results {
		if r.Status != 200 || r.Body != results[0].Body {
			t.Fatalf("caller %d: %d %q %s", i, r.Status, r.Body, r.Err)
		}
	}
	if c := is.TokenCalls.Load(); c != 1 {
		t.Errorf("issuer calls for %d concurrent callers = %d, want 1", n, c)
	}
	// Cached thereafter.
	for range 10 {
		if r := g.req(t, "POST", "/v1/tokens/oidc", `{"aud":"vault"}`, nil); r.Body != results[0].Body {
			t.Fatal("cached token not served")
		}
	}
	if c := is.TokenCalls.Load(); c != 1 {
		t.Errorf("issuer calls after cached requests = %d, want 1", c)
	}
	// Another audience is another entry.
	if r := g.req(t, "POST", "/v1/tokens/oidc", `{"aud":"minio"}`, nil); r.Status != 200 || r.Body == results[0].Body {
		t.Errorf("second audience: %d", r.Status)
	}
	if c := is.TokenCalls.Load(); c != 2 {
		t.Errorf("issuer calls after a second audience = %d, want 2", c)
	}
	if h := counterValue(g.agent, "token_cache_hits"); h < 10 {
		t.Errorf("cache hits = %d", h)
	}
}

// skewClock is a clock ahead of the wall clock by an amount the test sets:
// the agent's view of time jumps without the test waiting. Timing itself is
// tested under synctest (clock_test.go); these end-to-end tests prove the
// wiring with a real issuer.
type skewClock struct{ ahead atomic.Int64 }

func (c *skewClock) now() time.Time       { return time.Now().Add(time.Duration(c.ahead.Load())) }
func (c *skewClock) jump(d time.Duration) { c.ahead.Store(int64(d)) }

// The cache renews a token in use once past refresh_at (0.8) of its life,
// in the background: the caller that finds it stale still gets it at once,
// and the renewal serves the next ones.
func TestOIDCToken_BackgroundRefresh(t *testing.T) {
	is := agenttest.New(t) // tokens live 10 minutes
	clk := &skewClock{}
	g := startGuestWith(t, is, "", Options{Now: clk.now})
	first := g.req(t, "POST", "/v1/tokens/oidc", "", nil)
	if first.Status != 200 {
		t.Fatalf("first: %d", first.Status)
	}
	clk.jump(9 * time.Minute) // past 80%, before the last tenth
	if r := g.req(t, "POST", "/v1/tokens/oidc", "", nil); r.Status != 200 || r.Body != first.Body {
		t.Errorf("stale token: %d, same token %v; want the cached one at once", r.Status, r.Body == first.Body)
	}
	wait.Eventually(t, 5*time.Second, func() bool {
		r := g.req(t, "POST", "/v1/tokens/oidc", "", nil)
		return r.Status == 200 && r.Body != first.Body
	}, "the renewed token served")
	if c := is.TokenCalls.Load(); c != 2 {
		t.Errorf("issuer calls = %d, want 2 (the refresh served the requests)", c)
	}
	if n := counterValue(g.agent, "token_refreshes"); n != 0 {
		t.Errorf("timer refreshes = %d, want 0 (the request started the renewal)", n)
	}
}

// Issuer down: cached token and metadata still served; past the token's
// usable life a 503 with the exact body; issuer back: recovery without a
// restart.
func TestIssuerDown_CacheThenRecovery(t *testing.T) {
	is := agenttest.New(t)
	clk := &skewClock{}
	g := startGuestWith(t, is, "", Options{Now: clk.now})
	meta := g.waitMetadata(t)
	tok := g.req(t, "POST", "/v1/tokens/oidc", `{"aud":"x"}`, nil)
	if tok.Status != 200 {
		t.Fatalf("token: %d", tok.Status)
	}

	is.Stop()
	if r := g.req(t, "POST", "/v1/tokens/oidc", `{"aud":"x"}`, nil); r.Status != 200 || r.Body != tok.Body {
		t.Errorf("cached token while issuer down: %d", r.Status)
	}
	if r := g.req(t, "GET", "/v1/metadata", "", nil); r.Status != 200 || r.Body != meta.Body || r.Header["Etag"] != meta.Header["Etag"] {
		t.Errorf("cached metadata while issuer down: %d", r.Status)
	}
	if r := g.req(t, "POST", "/v1/tokens/oidc", `{"aud":"never-cached"}`, nil); r.Status != 503 || r.Body != bodyTokenUnavai {
		t.Errorf("uncached audience while down: %d %q", r.Status, r.Body)
	}
	// Past the token's usable life (10m less 30s).
	clk.jump(9*time.Minute + 45*time.Second)
	if r := g.req(t, "POST", "/v1/tokens/oidc", `{"aud":"x"}`, nil); r.Status != 503 || r.Body != bodyTokenUnavai {
		t.Errorf("expired token while down: %d", r.Status)
	}
	if r := g.req(t, "GET", "/v1/metadata/region", "", nil); r.Status != 200 {
		t.Errorf("metadata after token expiry: %d", r.Status)
	}

	is.Start(t)
	wait.Eventually(t, 5*time.Second, func() bool {
		return g.req(t, "POST", "/v1/tokens/oidc", `{"aud":"x"}`, nil).Status == 200
	}, "token after the issuer is back")
	// The metadata watch is back too: a change reaches callers.
	is.SetTags(map[string]string{"role": "recovered"})
	wait.Eventually(t, 5*time.Second, func() bool {
		return g.req(t, "GET", "/v1/metadata/tags/role", "", nil).Body == "recovered"
	}, "metadata change after the issuer is back")
	var st struct {
		Counters map[string]uint64 `json:"counters"`
	}
	json.Unmarshal([]byte(g.do("GET", g.admin, "/v1/status", "", nil).Body), &st)
	if st.Counters["upstream_errors"] == 0 {
		t.Errorf("upstream_errors not counted: %v", st.Counters)
	}
}

func TestRateLimit(t *testing.T) {
	is := agenttest.New(t)
	up := newUpstream(t)
	g := startGuest(t, is, "[limits]\ntoken_rate = 0.5\ntoken_burst = 2\n"+
		fmt.Sprintf("[[proxy.route]]\nmatch = \"GET /direct/ok\"\nupstream = %q\n", up.srv.URL))
	for i, want := range []int{200, 200, 429} {
		r := g.req(t, "POST", "/v1/tokens/oidc", "", nil)
		if r.Status != want {
			t.Fatalf("request %d: %d", i, r.Status)
		}
		if want == 429 {
			if ra := r.Header["Retry-After"]; ra != "2" && ra != "1" {
				t.Errorf("Retry-After = %q, want whole seconds ≥ 1", ra)
			}
			if r.Body != "{\"error\":\"rate limited\",\"code\":\"rate_limited\"}\n" {
				t.Errorf("429 body %q", r.Body)
			}
		}
	}
	// The same bucket covers proxied routes.
	if r := g.req(t, "GET", "/direct/ok", "", nil); r.Status != 429 || r.Header["Retry-After"] == "" {
		t.Errorf("proxy under limit: %d %v", r.Status, r.Header)
	}
	if up.calls.Load() != 0 {
		t.Errorf("rate-limited request reached upstream")
	}
	if r := g.req(t, "GET", "/v1/health", "", nil); r.Status != 200 {
		t.Errorf("health is not rate limited: %d", r.Status)
	}
	st := g.do("GET", g.admin, "/v1/status", "", nil).Body
	if !strings.Contains(st, `"rate_limited": 2`) {
		t.Errorf("status lacks rate_limited count: %s", st)
	}
	if m := g.do("GET", g.admin, "/metrics", "", nil).Body; !strings.Contains(m, "wicket_rate_limited_total 2") {
		t.Errorf("metrics lack rate limit count")
	}
}

// S-peer with exes: a rule naming this test binary admits this process; a
// rule naming another binary does not, whatever the uid.
func TestPolicy_ByUIDAndExe(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	is := agenttest.New(t)
	g := startGuest(t, is, fmt.Sprintf(`
[[policy]]
name = "this-binary"
uids = [0, 65534]
exes = [%q]
allow = ["GET /v1/health", "GET /v1/metadata*"]
[[policy]]
name = "false-only"
uids = [0]
exes = ["/bin/false"]
allow = ["POST /v1/tokens/oidc"]
`, self))
	sockettest.RequireRoot(t, "the policy names uid 0")
	if r := g.req(t, "GET", "/v1/health", "", nil); r.Status != 200 {
		t.Errorf("exe rule naming this binary: %d", r.Status)
	}
	if r := g.req(t, "POST", "/v1/tokens/oidc", "", nil); r.Status != 403 {
		t.Errorf("exe rule naming /bin/false: %d", r.Status)
	}
	if logs := g.logs.String(); !strings.Contains(logs, "request denied") || !strings.Contains(logs, "peer_uid=0") || !strings.Contains(logs, "peer_exe="+self) {
		t.Errorf("exe denial not logged:\n%s", logs)
	}
	// uid 65534 is in the rule, but its client is another binary (the
	// helper copy), so the rule does not apply.
	r := sockettest.RequestAs(t, 65534, 65534, g.api, "GET", "/v1/health", "", nil)
	if r.Status != 403 {
		t.Errorf("uid 65534 from another binary: %d", r.Status)
	}
}

func TestPolicy_OtherUID(t *testing.T) {
	sockettest.RequireRoot(t)
	is := agenttest.New(t)
	g := startGuest(t, is, "")
	g.waitMetadata(t)
	for _, tc := range []struct{ method, path string }{
		{"GET", "/v1/metadata"}, {"POST", "/v1/tokens/oidc"}, {"GET", "/v1/apps/web/machines/m-0123abcd"},
	} {
		r := sockettest.RequestAs(t, 65534, 65534, g.api, tc.method, tc.path, "", nil)
		if r.Status != 403 || r.Body != "{\"error\":\"forbidden\",\"code\":\"forbidden\"}\n" {
			t.Errorf("uid 65534 %s %s: %d %q", tc.method, tc.path, r.Status, r.Body)
		}
	}
	if is.TokenCallsSeen.Load() != 0 {
		t.Error("a denied token request reached the issuer")
	}
	// A rule for that uid lets it read metadata, and nothing else.
	g.write(t, baseCfg+fmt.Sprintf("[issuer]\nurl = %q\n", is.URL)+
		"[[policy]]\nuids=[65534]\nallow=[\"GET /v1/metadata*\"]\n")
	if r := g.do("POST", g.admin, "/v1/reload", "", nil); r.Status != 200 {
		t.Fatalf("reload: %+v", r)
	}
	if r := sockettest.RequestAs(t, 65534, 65534, g.api, "GET", "/v1/metadata/region", "", nil); r.Status != 200 || r.Body != "ams" {
		t.Errorf("allowed uid: %d %q", r.Status, r.Body)
	}
	if r := sockettest.RequestAs(t, 65534, 65534, g.api, "POST", "/v1/tokens/oidc", "", nil); r.Status != 403 {
		t.Errorf("allowed uid, other route: %d", r.Status)
	}
}

// issuedFeatures lists the features of the attenuated tokens the issuer
// received for path.
func issuedFeatures(is *agenttest.Issuer, path string) [][]machinetoken.Feature {
	var out [][]machinetoken.Feature
	for _, s := range is.Seen() {
		if s.Path == path {
			out = append(out, s.Verified.Features)
		}
	}
	return out
}

// Each outbound call carries a copy narrowed to its feature and to 60 s
// (an OIDC token request: to the JWT's lifetime).
func TestUpstreamTokensAttenuated(t *testing.T) {
	is := agenttest.New(t)
	g := startGuest(t, is, "")
	g.waitMetadata(t)
	g.req(t, "POST", "/v1/tokens/oidc", "", nil)
	for path, want := range map[string]machinetoken.Feature{
		"/v1/machines/self": machinetoken.FeatureMetadata,
		"/v1/tokens/oidc":   machinetoken.FeatureOIDC,
	} {
		fs := issuedFeatures(is, path)
		if len(fs) == 0 {
			t.Fatalf("no calls to %s", path)
		}
		for _, f := range fs {
			if !slices.Equal(f, []machinetoken.Feature{want}) {
				t.Errorf("%s token features = %v, want [%s]", path, f, want)
			}
		}
	}
	for _, s := range is.Seen() {
		if !strings.HasPrefix(s.Header.Get("Authorization"), "FlyV1 fm2_") || s.Token == g.token {
			t.Errorf("%s: not an attenuated FlyV1 token", s.Path)
		}
		want := 61 * time.Second
		if s.Path == "/v1/tokens/oidc" {
			want = 10*time.Minute + time.Second // [tokens] ttl: the JWT's own life
		}
		if left := time.Until(s.Verified.NotAfter); left > want {
			t.Errorf("%s: token valid for %v more, want ≤ %v", s.Path, left, want)
		}
	}
}

// The copy sent for an OIDC token is bound to the audience asked for (the
// default included) and lives [tokens] ttl, so a capture of it buys
// nothing else and no JWT outliving it.
func TestOIDCCopy_BoundToAudience(t *testing.T) {
	is := agenttest.New(t)
	g := startGuest(t, is, "")
	for _, aud := range []string{"sts.amazonaws.com", ""} {
		body := ""
		if aud != "" {
			body = `{"aud":"` + aud + `"}`
		}
		if r := g.req(t, "POST", "/v1/tokens/oidc", body, nil); r.Status != 200 {
			t.Fatalf("token (aud %q): %d %s", aud, r.Status, r.Body)
		}
		var s *agenttest.Seen
		for _, x := range is.Seen() {
			if x.Path == "/v1/tokens/oidc" {
				s = &x
			}
		}
		if s == nil {
			t.Fatal("no token request seen")
		}
		if !slices.Equal(s.Verified.Audiences, []string{aud}) {
			t.Errorf("aud %q: copy bound to %q", aud, s.Verified.Audiences)
		}
		for _, other := range [][]string{{"https://attacker.example"}, {aud, "https://attacker.example"}, nil} {
			if other == nil && aud == "" {
				continue
			}
			if _, err := is.Verifier.Verify(s.Token, machinetoken.Request{Feature: machinetoken.FeatureOIDC, Audience: other}); err == nil {
				t.Errorf("aud %q: copy accepted for %q", aud, other)
			}
		}
		if left := time.Until(s.Verified.NotAfter); left > 10*time.Minute+time.Second || left < 9*time.Minute {
			t.Errorf("aud %q: copy valid for %v more, want the 10m default ttl", aud, left)
		}
	}
}

// A reused copy carries exactly the caveats a fresh one would: copies for
// two SPIFFE IDs are never the same token, so one made for a workload's
// SVID cannot buy another workload's.
func TestSVIDCopy_ReuseNeverCrossesSPIFFEIDs(t *testing.T) {
	is := agenttest.New(t)
	mt, err := ParseMachineToken(is.MachineToken(t))
	if err != nil {
		t.Fatal(err)
	}
	const a, b = "spiffe://td.test/app/web/workload/a", "spiffe://td.test/app/web/workload/b"
	now := time.Now()
	ca, err := mt.restrictScope(now, time.Hour, spiffe.Scope(a, nil))
	if err != nil {
		t.Fatal(err)
	}
	cb, err := mt.restrictScope(now, time.Hour, spiffe.Scope(b, nil))
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := mt.restrictScope(now, time.Hour, spiffe.Scope(a, nil)); again != ca {
		t.Error("the copy for the same id was not reused")
	}
	v, err := is.Verifier.Verify(cb, machinetoken.Request{Feature: machinetoken.FeatureSVID, SVIDKind: machinetoken.SVIDX509, SPIFFEID: b})
	if err != nil || !slices.Equal(v.SPIFFEIDs, []string{b}) {
		t.Fatalf("copy for b: %v, %v", v, err)
	}
	if _, err := is.Verifier.Verify(cb, machinetoken.Request{Feature: machinetoken.FeatureSVID, SVIDKind: machinetoken.SVIDX509, SPIFFEID: a}); err == nil {
		t.Error("the copy made for b is accepted for a")
	}
}

// A reused copy never crosses kinds of SVID request: two scopes that
// differ only in their kind get two copies, each refused for the other
// kind.
func TestSVIDCopy_ReuseNeverCrossesKinds(t *testing.T) {
	is := agenttest.New(t)
	mt, err := ParseMachineToken(is.MachineToken(t))
	if err != nil {
		t.Fatal(err)
	}
	const a = "spiffe://td.test/app/web/workload/a"
	scope := func(k machinetoken.SVIDKind) machinetoken.Scope {
		return machinetoken.Scope{Features: []machinetoken.Feature{machinetoken.FeatureSVID},
			SVIDKinds: []machinetoken.SVIDKind{k}, SPIFFEIDs: []string{a}}
	}
	now := time.Now()
	cx, err := mt.restrictScope(now, time.Hour, scope(machinetoken.SVIDX509))
	if err != nil {
		t.Fatal(err)
	}
	cj, err := mt.restrictScope(now, time.Hour, scope(machinetoken.SVIDJWT))
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := mt.restrictScope(now, time.Hour, scope(machinetoken.SVIDX509)); again != cx {
		t.Error("the copy for the same kind was not reused")
	}
	q := func(k machinetoken.SVIDKind) machinetoken.Request {
		return machinetoken.Request{Feature: machinetoken.FeatureSVID, SVIDKind: k, SPIFFEID: a}
	}
	if v, err := is.Verifier.Verify(cj, q(machinetoken.SVIDJWT)); err != nil || !slices.Equal(v.SVIDKinds, []machinetoken.SVIDKind{machinetoken.SVIDJWT}) {
		t.Fatalf("jwt copy: %v, %v", v, err)
	}
	if _, err := is.Verifier.Verify(cj, q(machinetoken.SVIDX509)); err == nil {
		t.Error("the copy made for a jwt-svid is accepted for an x509-svid")
	}
}
