package builtin

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/wicket-sh/wicket/internal/agent/feature/proxyroutes"
	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/proxy"
)

// The [proxy] section's checks, moved with the section from
// internal/config (agent_guest_test.go, forwardheaders_test.go).

const proxyValid = cloudBase + `
[[proxy.route]]
match = "GET /v1/apps/{app}/machines/{self}"

[[proxy.route]]
match = "POST /v1/apps/{app}/machines/{self}/*"
upstream = "https://api.example"
timeout = "30s"
features = ["proxy", "metadata"]
`

func TestProxySection_Keys(t *testing.T) {
	c, err := LoadAgent(writeFile(t, proxyValid))
	if err != nil {
		t.Fatal(err)
	}
	s := proxyroutes.From(c)
	if len(s.Routes) != 2 || s.Table().Len() != 2 || s.Routes[1].Timeout.Duration != 30*time.Second {
		t.Errorf("routes %+v", s.Routes)
	}
	d, err := LoadAgent("")
	if err != nil {
		t.Fatal(err)
	}
	if n := proxyroutes.From(d).Table().Len(); n != 0 {
		t.Errorf("default routes: %d", n)
	}
}

func TestProxySection_Invalid(t *testing.T) {
	for _, tc := range []struct{ body, want string }{
		{"[[proxy.route]]\nmatch = \"GET /x\"\n", "no upstream and no issuer.url"},
		{"[[proxy.route]]\nmatch = \"GET /x/{id}\"\nupstream = \"http://u\"\n", "proxy.route[0]"},
		{"[[proxy.route]]\nmatch = \"GET /v1/metadata/x\"\nupstream = \"http://u\"\n", "overlaps"},
		{"[[proxy.route]]\nmatch = \"GET /x\"\nupstream = \"http://u\"\nfeatures = [\"root\"]\n", "unknown feature"},
		{"[[proxy.route]]\nmatch = \"GET /x\"\nupstream = \"http://u\"\nbogus = 1\n", "unknown keys"},
	} {
		_, err := LoadAgent(writeFile(t, tc.body))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: err = %v, want %q", tc.body, err, tc.want)
		}
	}
}

// TestProxySection_Dynamic: the routes are dynamic, so a reload that
// changes them needs no restart.
func TestProxySection_Dynamic(t *testing.T) {
	a, err := LoadAgent(writeFile(t, proxyValid))
	if err != nil {
		t.Fatal(err)
	}
	b, err := LoadAgent(writeFile(t, cloudBase))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string(nil), config.RestartRequired(a, b)); diff != "" {
		t.Errorf("RestartRequired (-want +got):\n%s", diff)
	}
}

// TestForwardHeaders_AgentNeverForwardedIsAnError:
// proxy.route.forward_headers loads and compiles (case-insensitive, "[]"
// forwarding nothing), and an entry naming a header that is never
// forwarded is a validation error rather than silently not applied.
func TestForwardHeaders_AgentNeverForwardedIsAnError(t *testing.T) {
	route := "[[proxy.route]]\nmatch = \"GET /x\"\nupstream = \"http://u\"\nforward_headers = [%s]\n"
	c, err := LoadAgent(writeFile(t, strings.Replace(route, "%s", `"x-tenant", "Accept"`, 1)+
		strings.Replace(strings.Replace(route, "%s", "", 1), "GET /x", "GET /y", 1)))
	if err != nil {
		t.Fatal(err)
	}
	table := proxyroutes.From(c).Table()
	rt, _ := table.Lookup("GET", "/x", proxy.Vars{})
	if rt == nil || strings.Join(rt.Headers().Names(), ",") != "X-Tenant,Accept" {
		t.Fatalf("route /x headers: %v", rt)
	}
	if rt, _ := table.Lookup("GET", "/y", proxy.Vars{}); rt == nil || len(rt.Headers().Names()) != 0 {
		t.Fatalf("route /y with forward_headers = [] forwards %v", rt.Headers().Names())
	}
	for _, bad := range []string{"Authorization", "cookie", "X_Tenant", "X-Wicket-App", "x-wicket_machine_id",
		"X-Forwarded-For", "Forwarded", "Proxy-Authorization", "Connection", "Host", "X-HTTP-Method-Override",
		"X-Original-URL", "X-Rewrite-URL", "X-Real-IP", "True-Client-IP", "Via", "X Tenant"} {
		q := `"` + bad + `"`
		if _, err := LoadAgent(writeFile(t, strings.Replace(route, "%s", q, 1))); err == nil || !strings.Contains(err.Error(), "proxy.route[0]: forward_headers") {
			t.Errorf("agent forward_headers %s: err = %v", q, err)
		}
	}
}
