package config

import (
	"strings"
	"testing"

	"github.com/wicket-sh/wicket/internal/proxy"
)

// TestForwardHeaders_NeverForwardedIsAnError: proxy.route.forward_headers
// and gateway.forward_headers load and compile (case-insensitive, "[]"
// forwarding nothing), and an entry naming a header that is never
// forwarded is a validation error rather than silently not applied.
func TestForwardHeaders_NeverForwardedIsAnError(t *testing.T) {
	route := "[[proxy.route]]\nmatch = \"GET /x\"\nupstream = \"http://u\"\nforward_headers = [%s]\n"
	c, err := LoadAgent(writeFile(t, strings.Replace(route, "%s", `"x-tenant", "Accept"`, 1)+
		strings.Replace(strings.Replace(route, "%s", "", 1), "GET /x", "GET /y", 1)), nil)
	if err != nil {
		t.Fatal(err)
	}
	rt, _ := c.CompiledRoutes().Lookup("GET", "/x", proxy.Vars{})
	if rt == nil || strings.Join(rt.Headers().Names(), ",") != "X-Tenant,Accept" {
		t.Fatalf("route /x headers: %v", rt)
	}
	if rt, _ := c.CompiledRoutes().Lookup("GET", "/y", proxy.Vars{}); rt == nil || len(rt.Headers().Names()) != 0 {
		t.Fatalf("route /y with forward_headers = [] forwards %v", rt.Headers().Names())
	}
	ic, err := LoadIssuer(writeIssuerFile(t, "[gateway]\nforward_headers = [\"X-Tenant\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := ic.GatewayHeaders().Names(); strings.Join(got, ",") != "X-Tenant" {
		t.Errorf("gateway headers = %v", got)
	}
	if got := DefaultIssuer().GatewayHeaders().Names(); len(got) == 0 {
		t.Error("default gateway allowlist is empty")
	}

	for _, bad := range []string{"Authorization", "cookie", "X_Tenant", "X-Wicket-App", "x-wicket_machine_id",
		"X-Forwarded-For", "Forwarded", "Proxy-Authorization", "Connection", "Host", "X-HTTP-Method-Override",
		"X-Original-URL", "X-Rewrite-URL", "X-Real-IP", "True-Client-IP", "Via", "X Tenant"} {
		q := `"` + bad + `"`
		if _, err := LoadAgent(writeFile(t, strings.Replace(route, "%s", q, 1)), nil); err == nil || !strings.Contains(err.Error(), "proxy.route[0]: forward_headers") {
			t.Errorf("agent forward_headers %s: err = %v", q, err)
		}
		if _, err := LoadIssuer(writeIssuerFile(t, "[gateway]\nforward_headers = ["+q+"]\n")); err == nil || !strings.Contains(err.Error(), "gateway.forward_headers") {
			t.Errorf("gateway forward_headers %s: err = %v", q, err)
		}
	}
}

// TestExampleConfigs_ShowDefaultForwardHeaders: the examples document the
// default forward_headers by setting them; they must be the real default.
func TestExampleConfigs_ShowDefaultForwardHeaders(t *testing.T) {
	want := strings.Join(proxy.DefaultForwardHeaders, ",")
	ic, err := LoadIssuer("../../examples/issuer.toml")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(ic.Gateway.ForwardHeaders, ","); got != want {
		t.Errorf("examples/issuer.toml gateway.forward_headers = %s, default is %s", got, want)
	}
	// examples/agent.toml: TestExampleAgentConfig (internal/agent/builtin).
}
