package proxy

import (
	"strings"
	"testing"
)

// FuzzRouteMatch checks the matcher's promises for any template, request
// and identity: it never panics, and whatever it matches is a canonical
// path whose segments are exactly the template's, with {self} and {app}
// replaced by the (valid) machine identity and nothing else.
func FuzzRouteMatch(f *testing.F) {
	f.Add("GET /v1/apps/{app}/machines/{self}", "GET", "/v1/apps/web/machines/m1", "m1", "web")
	f.Add("POST /v1/apps/{app}/machines/{self}/*", "POST", "/v1/apps/web/machines/m1/stop", "m1", "web")
	f.Add("GET /v1/apps/{app}/machines/{self}", "GET", "/v1/apps/web/machines/../m2", "m1", "web")
	f.Add("GET /x/{self}", "GET", "/x/..", "..", "web")
	f.Add("GET /x/{self}/*", "GET", "/x/a/b", "a/b", "")
	f.Fuzz(func(t *testing.T, tmpl, method, path, self, app string) {
		tb, err := Compile([]RouteConfig{{Match: tmpl}}, nil)
		if err != nil {
			return
		}
		r := tb.routes[0]
		v := Vars{Self: self, App: app}
		got, ok := tb.Lookup(method, path, v)
		if ok != r.Match(method, path, v) || (ok && got != r) {
			t.Fatal("Lookup and Match disagree")
		}
		if !ok {
			return
		}
		if method != r.method {
			t.Fatalf("method %q matched route for %q", method, r.method)
		}
		if !strings.HasPrefix(path, "/") || strings.Contains(path, "//") || strings.ContainsAny(path, "\\\x00") {
			t.Fatalf("non-canonical path %q matched", path)
		}
		parts := strings.Split(path[1:], "/")
		for _, p := range parts {
			if p == "." || p == ".." {
				t.Fatalf("dot segment matched in %q", path)
			}
		}
		// Rebuild the expected prefix by substitution.
		var want []string
		for _, s := range r.segs {
			switch s.kind {
			case segSelf:
				if !validVar(self) {
					t.Fatalf("invalid self %q matched", self)
				}
				want = append(want, self)
			case segApp:
				if !validVar(app) {
					t.Fatalf("invalid app %q matched", app)
				}
				want = append(want, app)
			default:
				want = append(want, s.lit)
			}
		}
		prefix := "/" + strings.Join(want, "/")
		switch {
		case !r.deeper && path != prefix:
			t.Fatalf("%q matched %q exactly but is not %q", path, tmpl, prefix)
		case r.deeper && (!strings.HasPrefix(path, prefix+"/") || len(path) == len(prefix)+1):
			t.Fatalf("%q matched %q as deeper but is not below %q", path, tmpl, prefix)
		}
	})
}
