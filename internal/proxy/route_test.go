package proxy

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wicket-sh/wicket/internal/machinetoken"
)

var reserved = []string{"/v1/health", "/v1/metadata", "/v1/tokens"}

func TestParseMatch(t *testing.T) {
	for _, tc := range []struct {
		in   string
		ok   bool
		segs int
		deep bool
	}{
		{"GET /v1/apps/{app}/machines/{self}", true, 5, false},
		{"POST /v1/apps/{app}/machines/{self}/*", true, 5, true},
		{"DELETE /x", true, 1, false},
		{"GET /a:b@c/~d_e.f-g", true, 2, false},
		{"GET /", false, 0, false},
		{"GET /*", false, 0, false},
		{"GET", false, 0, false},
		{"* /x", false, 0, false},
		{"get /x", false, 0, false},
		{"CONNECT /x", false, 0, false},
		{"GET x", false, 0, false},
		{"GET /x/", false, 0, false},
		{"GET //x", false, 0, false},
		{"GET /x/../y", false, 0, false},
		{"GET /x/./y", false, 0, false},
		{"GET /x/*/y", false, 0, false},
		{"GET /x*", false, 0, false},
		{"GET /{other}", false, 0, false},
		{"GET /a{self}", false, 0, false},
		{"GET /{self}x", false, 0, false},
		{"GET /x%2fy", false, 0, false},
		{"GET /x?y", false, 0, false},
		{"GET /x y", false, 0, false},
		{"GET /x\\y", false, 0, false},
		{"GET /" + strings.Repeat("a", MaxTemplateLen), false, 0, false},
	} {
		_, segs, deep, err := ParseMatch(tc.in)
		if (err == nil) != tc.ok {
			t.Errorf("ParseMatch(%q) err = %v, want ok=%v", tc.in, err, tc.ok)
			continue
		}
		if tc.ok && (len(segs) != tc.segs || deep != tc.deep) {
			t.Errorf("ParseMatch(%q) = %d segs deeper=%v", tc.in, len(segs), deep)
		}
	}
}

func mustTable(t *testing.T, cfgs ...RouteConfig) *Table {
	t.Helper()
	tb, err := Compile(cfgs, reserved)
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

func TestLookup(t *testing.T) {
	tb := mustTable(t,
		RouteConfig{Match: "GET /v1/apps/{app}/machines/{self}"},
		RouteConfig{Match: "POST /v1/apps/{app}/machines/{self}/*"},
		RouteConfig{Match: "GET /v1/apps/{app}/volumes"},
	)
	v := Vars{Self: "m1", App: "web"}
	for _, tc := range []struct {
		method, path string
		vars         Vars
		want         string
	}{
		{"GET", "/v1/apps/web/machines/m1", v, "GET /v1/apps/{app}/machines/{self}"},
		{"POST", "/v1/apps/web/machines/m1/stop", v, "POST /v1/apps/{app}/machines/{self}/*"},
		{"POST", "/v1/apps/web/machines/m1/a/b", v, "POST /v1/apps/{app}/machines/{self}/*"},
		{"GET", "/v1/apps/web/volumes", v, "GET /v1/apps/{app}/volumes"},
		{"POST", "/v1/apps/web/machines/m1", v, ""},
		{"POST", "/v1/apps/web/machines/m1/", v, ""},
		{"GET", "/v1/apps/web/machines/m2", v, ""},
		{"GET", "/v1/apps/api/machines/m1", v, ""},
		{"GET", "/v1/apps/web/machines/m1/", v, ""},
		{"GET", "/v1/apps/web/machines/m1x", v, ""},
		{"GET", "/v1/apps/web/machines", v, ""},
		{"HEAD", "/v1/apps/web/machines/m1", v, ""},
		{"GET", "/v1/apps/web/machines/m1/../m2", v, ""},
		{"POST", "/v1/apps/web/machines/m1/../../m2/stop", v, ""},
		{"POST", "/v1/apps/web/machines/m1//stop", v, ""},
		{"POST", "/v1/apps/web/machines/m1/./stop", v, ""},
		{"GET", "/v1/apps/web\\machines/m1", v, ""},
		{"GET", "v1/apps/web/machines/m1", v, ""},
		// Unknown or unusable identity: placeholders match nothing.
		{"GET", "/v1/apps//machines/", Vars{}, ""},
		{"GET", "/v1/apps/web/machines/..", Vars{Self: "..", App: "web"}, ""},
		{"GET", "/v1/apps/a/b/machines/m1", Vars{Self: "m1", App: "a/b"}, ""},
		{"GET", "/v1/apps/web/machines/m%201", Vars{Self: "m%201", App: "web"}, ""},
		{"GET", "/v1/apps/web/volumes", Vars{}, ""},
	} {
		r, ok := tb.Lookup(tc.method, tc.path, tc.vars)
		got := ""
		if ok {
			got = r.Name()
		}
		if got != tc.want {
			t.Errorf("Lookup(%s %s, %+v) = %q, want %q", tc.method, tc.path, tc.vars, got, tc.want)
		}
	}
}

func TestCompile(t *testing.T) {
	tb := mustTable(t, RouteConfig{Match: "GET /x", Upstream: "https://api.example/base/", Timeout: 3 * time.Second, Features: []string{"proxy", "metadata"}})
	r := tb.routes[0]
	if r.Upstream().String() != "https://api.example/base" || r.Timeout() != 3*time.Second ||
		!slices.Equal(r.Features(), []machinetoken.Feature{"proxy", "metadata"}) {
		t.Errorf("route = %+v", r)
	}
	if r := mustTable(t, RouteConfig{Match: "GET /x"}).routes[0]; r.Upstream() != nil || r.Timeout() != DefaultTimeout || !slices.Equal(r.Features(), []machinetoken.Feature{"proxy"}) {
		t.Errorf("defaults = %+v", r)
	}
	for _, bad := range []RouteConfig{
		{Match: "GET /v1/metadata/x"},
		{Match: "GET /v1/tokens/{self}"},
		{Match: "GET /v1/health"},
		{Match: "GET /v1/metadata/*"},
		{Match: "GET /x", Upstream: "ftp://h"},
		{Match: "GET /x", Upstream: "https://user:pw@h"},
		{Match: "GET /x", Upstream: "https://h?q=1"},
		{Match: "GET /x", Upstream: "https:///nohost"},
		{Match: "GET /x", Features: []string{"admin"}},
		{Match: "GET /x", Features: []string{"proxy", "oidc"}}, // an unbound oidc copy: TestCompile_OIDCFeatureRefused
		{Match: "GET /x", Timeout: -time.Second},
		{Match: "GET /x", Timeout: time.Hour},
	} {
		if _, err := Compile([]RouteConfig{bad}, reserved); err == nil {
			t.Errorf("Compile(%+v) accepted", bad)
		}
	}
	many := make([]RouteConfig, MaxRoutes+1)
	for i := range many {
		many[i] = RouteConfig{Match: "GET /x"}
	}
	if _, err := Compile(many, reserved); err == nil {
		t.Error("too many routes accepted")
	}
	// The guest API's own prefixes are not matched by a sibling path.
	mustTable(t, RouteConfig{Match: "GET /v1/metadatax"}, RouteConfig{Match: "GET /v1/{app}"})
}

// TestCompile_OIDCFeatureRefused: a proxy route may not send a copy with the
// oidc feature. Such a copy carries no audience caveat (the route does not
// know an audience), so whoever captured it upstream could mint a JWT for
// any audience with it until it expires.
func TestCompile_OIDCFeatureRefused(t *testing.T) {
	_, err := Compile([]RouteConfig{{Match: "GET /x", Features: []string{"metadata", "oidc"}}}, reserved)
	if err == nil || !strings.Contains(err.Error(), "not allowed on a proxy route") {
		t.Errorf("oidc feature on a route: err = %v", err)
	}
}
