package agent

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/wicket-sh/wicket/internal/agent/agenttest"
)

// reqHeader is guest.req with header names sent exactly as written (no
// canonicalization), as an attacker's raw client would send them.
func (g *guest) reqHeader(t *testing.T, method, path string, hdr http.Header) int {
	t.Helper()
	req, err := http.NewRequest(method, "http://wicket"+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range hdr {
		req.Header[k] = vs
	}
	resp, err := g.hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// forwardedNames returns the names of the headers the upstream received,
// lower-cased with '_' read as '-', the way WSGI/CGI servers fold them.
func forwardedNames(r *http.Request) map[string]string {
	out := map[string]string{}
	for k := range r.Header {
		out[strings.ReplaceAll(strings.ToLower(k), "_", "-")] = k
	}
	return out
}

// TestProxy_UnderscoreHeadersDropped: a header name with '_' is never
// forwarded. WSGI/CGI-style upstreams map '-' and '_' both to '_', so
// X_Wicket_Machine_Id would arrive as the identity header the issuer's
// gateway sets.
func TestProxy_UnderscoreHeadersDropped(t *testing.T) {
	g, up, _ := startProxyGuest(t)
	sent := http.Header{
		"X_Wicket_Machine_Id": {"m-forged"},
		"X-Wicket_App":        {"forged-app"},
		"x_wicket_org":        {"forged-org"},
		"X_Forwarded_For":     {"10.0.0.1"},
		"Accept_Language":     {"xx"},
		"Accept":              {"application/json"},
	}
	if code := g.reqHeader(t, "GET", "/direct/things", sent); code != 200 {
		t.Fatalf("proxied GET: %d", code)
	}
	seen := up.last()
	for folded, name := range forwardedNames(seen) {
		if strings.Contains(name, "_") || strings.HasPrefix(folded, "x-wicket") || strings.HasPrefix(folded, "x-forwarded") {
			t.Errorf("upstream received %s: %q", name, seen.Header[name])
		}
	}
	if seen.Header.Get("Accept") != "application/json" {
		t.Errorf("Accept not forwarded: %v", seen.Header)
	}
}

// TestProxy_OverrideHeadersDropped: headers with which an upstream or a
// proxy in front of it would change the method, the path or the client's
// address are never forwarded.
func TestProxy_OverrideHeadersDropped(t *testing.T) {
	g, up, _ := startProxyGuest(t)
	override := []string{"X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override", "X-Original-URL",
		"X-Rewrite-URL", "X-Real-IP", "True-Client-IP", "Via", "X-Client-IP", "X-Original-Method", "Forwarded"}
	sent := http.Header{"Accept": {"application/json"}}
	for _, h := range override {
		sent.Set(h, "DELETE")
	}
	if code := g.reqHeader(t, "GET", "/direct/things", sent); code != 200 {
		t.Fatalf("proxied GET: %d", code)
	}
	seen := up.last()
	for _, h := range override {
		if v := seen.Header.Get(h); v != "" {
			t.Errorf("upstream received %s: %q", h, v)
		}
	}
	if seen.Method != "GET" || seen.URL.Path != "/direct/things" {
		t.Errorf("upstream saw %s %s", seen.Method, seen.URL.Path)
	}
}

// TestProxy_HeaderAllowlistPerRoute: only the headers a route's
// forward_headers names (or, without it, the default list) reach the
// upstream, and a reload changes the live list.
func TestProxy_HeaderAllowlistPerRoute(t *testing.T) {
	is := agenttest.New(t)
	up := newUpstream(t)
	cfg := func(tenantRoute string) string {
		return noLimits + fmt.Sprintf(`
[[proxy.route]]
match = "GET /direct/tenant"
upstream = %[1]q
forward_headers = [%[2]s]
[[proxy.route]]
match = "GET /direct/default"
upstream = %[1]q
[[proxy.route]]
match = "GET /direct/none"
upstream = %[1]q
forward_headers = []
`, up.srv.URL, tenantRoute)
	}
	g := startGuest(t, is, cfg(`"x-tenant", "Accept"`))
	sent := http.Header{
		"Accept":            {"application/json"},
		"If-None-Match":     {`"e1"`},
		"User-Agent":        {"workload/1"},
		"X-Tenant":          {"t1"},
		"X-Custom":          {"c"},
		"X-Internal-Secret": {"s"},
	}
	check := func(path string, want ...string) {
		t.Helper()
		if code := g.reqHeader(t, "GET", path, sent); code != 200 {
			t.Fatalf("GET %s: %d", path, code)
		}
		seen := up.last()
		got := map[string]bool{}
		for k := range seen.Header {
			// By value: the transport sends its own User-Agent when the
			// caller's is not forwarded.
			if _, mine := sent[k]; mine && seen.Header.Get(k) == sent.Get(k) {
				got[k] = true
			}
		}
		for _, k := range want {
			if !got[k] {
				t.Errorf("GET %s: %s not forwarded (upstream got %v)", path, k, seen.Header)
			}
			delete(got, k)
		}
		for k := range got {
			t.Errorf("GET %s: %s forwarded though not allowlisted", path, k)
		}
	}
	check("/direct/tenant", "X-Tenant", "Accept")
	check("/direct/default", "Accept", "If-None-Match", "User-Agent")
	check("/direct/none")

	// The route table is live: a reload changes what is forwarded.
	g.write(t, baseCfg+fmt.Sprintf("[issuer]\nurl = %q\n", is.URL)+cfg(`"X-Custom"`))
	if r := g.do("POST", g.admin, "/v1/reload", "", nil); r.Status != 200 {
		t.Fatalf("reload: %+v", r)
	}
	check("/direct/tenant", "X-Custom")
}
