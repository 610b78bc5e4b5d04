package config

import (
	"strings"
	"testing"

	"github.com/wicket-sh/wicket/internal/proxy"
)

// TestForwardHeaders_NeverForwardedIsAnError: gateway.forward_headers
// loads and compiles (case-insensitive), and an entry naming a header that
// is never forwarded is a validation error rather than silently not
// applied. The agent's proxy.route.forward_headers: the same test in
// internal/agent/builtin.
func TestForwardHeaders_NeverForwardedIsAnError(t *testing.T) {
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
