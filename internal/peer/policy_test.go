package peer

import (
	"testing"

	"github.com/wicket-sh/wicket/internal/unixsock"
)

func TestParsePattern(t *testing.T) {
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{"*", true},
		{"GET /v1/metadata", true},
		{"GET /v1/metadata*", true},
		{"* /v1/*", true},
		{"POST /v1/tokens/oidc", true},
		{"get /v1/x", false},
		{"FOO /v1/x", false},
		{"GET", false},
		{"GET v1/x", false},
		{"GET /v1/*/x", false},
		{"GET /v1/../admin", false},
		{"GET /v1/x?y", false},
		{"", false},
	} {
		_, err := ParsePattern(tc.in)
		if (err == nil) != tc.ok {
			t.Errorf("ParsePattern(%q) err=%v, want ok=%v", tc.in, err, tc.ok)
		}
	}
}

func TestPolicyAllowed(t *testing.T) {
	p, err := Compile([]Rule{
		{Name: "app", UIDs: []uint32{1000}, Allow: []string{"GET /v1/metadata*", "POST /v1/tokens/oidc"}},
		{Name: "ops", GIDs: []uint32{50}, Allow: []string{"GET /v1/health"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		uid, gid     uint32
		method, path string
		want         string
	}{
		{1000, 1000, "GET", "/v1/metadata", "app"},
		{1000, 1000, "GET", "/v1/metadata/tags/x", "app"},
		{1000, 1000, "POST", "/v1/metadata", ""},
		{1000, 1000, "POST", "/v1/tokens/oidc", "app"},
		{1000, 1000, "POST", "/v1/tokens/oidc/x", ""},
		{1000, 1000, "GET", "/v1/health", ""},
		{2000, 50, "GET", "/v1/health", "ops"},
		{0, 0, "GET", "/v1/health", ""}, // root is not special
	} {
		rule, ok := p.Allowed(unixsock.Peer{UID: tc.uid, GID: tc.gid}, tc.method, tc.path)
		if rule != tc.want || ok != (tc.want != "") {
			t.Errorf("uid %d gid %d %s %s: got (%q,%v), want %q", tc.uid, tc.gid, tc.method, tc.path, rule, ok, tc.want)
		}
	}
}

func TestDefaultPolicy(t *testing.T) {
	p := Default(1234)
	for _, tc := range []struct {
		uid  uint32
		want bool
	}{{0, true}, {1234, true}, {1000, false}, {65534, false}} {
		if _, ok := p.Allowed(unixsock.Peer{UID: tc.uid, GID: tc.uid}, "GET", "/v1/metadata"); ok != tc.want {
			t.Errorf("uid %d: allowed=%v, want %v", tc.uid, ok, tc.want)
		}
	}
}

func TestCompileRejects(t *testing.T) {
	for _, r := range []Rule{
		{Name: "nobody", Allow: []string{"*"}},
		{Name: "nothing", UIDs: []uint32{1}},
		{Name: "bad", UIDs: []uint32{1}, Allow: []string{"GET nope"}},
	} {
		if _, err := Compile([]Rule{r}); err == nil {
			t.Errorf("Compile(%+v) accepted", r)
		}
	}
}

func FuzzPattern(f *testing.F) {
	for _, s := range []string{"*", "GET /v1/metadata*", "POST /v1/tokens/oidc", "* /", "GET /a/../b"} {
		f.Add(s, "GET", "/v1/metadata/x")
	}
	f.Fuzz(func(t *testing.T, pat, method, path string) {
		p, err := ParsePattern(pat)
		if err != nil {
			return
		}
		if p.Match(method, path) && p.Method != "*" && p.Method != method {
			t.Fatalf("%q matched method %q", pat, method)
		}
		if _, err := ParsePattern(p.String()); err != nil {
			t.Fatalf("String() of %q does not reparse: %v", pat, err)
		}
	})
}
