// Package proxy forwards allowlisted guest API requests to an upstream (by
// default the issuer's gateway) with an attenuated machine token, and
// nothing else.
//
// A route is "METHOD /path/template" where a whole segment may be {self}
// (this machine's id) or {app} (this machine's app) and the template may
// end in "/*" (any deeper path). Matching is anchored, segment by segment,
// on the cleaned path, after placeholder substitution and before any byte
// goes upstream (wollomatic/socket-proxy's rule: method first, then path).
package proxy

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/wicket-sh/wicket/internal/httpapi"
	"github.com/wicket-sh/wicket/internal/machinetoken"
)

// Limits on route tables, so a config cannot make matching expensive.
const (
	MaxRoutes      = 256
	MaxTemplateLen = 512
	maxVarLen      = 128
)

// DefaultTimeout bounds a forwarded request (headers and body) when the
// route sets none.
const DefaultTimeout = 10 * time.Second

// Vars are the values placeholders stand for: this machine's identity.
type Vars struct {
	Self string // {self}: machine id
	App  string // {app}: app name
}

// RouteConfig is one route as configured.
type RouteConfig struct {
	Match    string        // "GET /v1/apps/{app}/machines/{self}"
	Upstream string        // base URL; "" means the default upstream
	Timeout  time.Duration // 0 means DefaultTimeout
	Features []string      // machine token features; empty means ["proxy"]
	// Headers are the caller's request headers forwarded; nil means
	// DefaultForwardHeaders, empty means none. See CompileHeaders.
	Headers []string
}

type segKind uint8

const (
	segLiteral segKind = iota
	segSelf
	segApp
)

type segment struct {
	kind segKind
	lit  string
}

// Route is one compiled route. It is immutable.
type Route struct {
	name     string // the match string, for logs
	method   string
	segs     []segment
	deeper   bool     // template ended in "/*"
	upstream *url.URL // nil: the default upstream
	timeout  time.Duration
	features []machinetoken.Feature
	headers  *HeaderAllowlist
}

// Name returns the route's match string as configured.
func (r *Route) Name() string { return r.name }

// Upstream returns the route's upstream base URL, or nil for the default.
func (r *Route) Upstream() *url.URL { return r.upstream }

// Timeout returns the route's deadline for one forwarded request.
func (r *Route) Timeout() time.Duration { return r.timeout }

// Features returns the features the attenuated token carries.
func (r *Route) Features() []machinetoken.Feature { return r.features }

// Headers returns the request headers the route forwards.
func (r *Route) Headers() *HeaderAllowlist { return r.headers }

// UsesVars reports whether the route has a placeholder, and so can only
// match once the machine's identity is known.
func (r *Route) UsesVars() bool {
	for _, s := range r.segs {
		if s.kind != segLiteral {
			return true
		}
	}
	return false
}

// Table is a compiled, immutable list of routes; first match wins.
type Table struct {
	routes []*Route
}

// Len returns the number of routes.
func (t *Table) Len() int {
	if t == nil {
		return 0
	}
	return len(t.routes)
}

// Compile validates and compiles routes. reserved lists path prefixes that
// belong to the guest API itself; a route under one of them is refused.
func Compile(cfgs []RouteConfig, reserved []string) (*Table, error) {
	if len(cfgs) > MaxRoutes {
		return nil, fmt.Errorf("%d routes, more than %d", len(cfgs), MaxRoutes)
	}
	t := &Table{}
	for i, c := range cfgs {
		r, err := compileRoute(c, reserved)
		if err != nil {
			return nil, fmt.Errorf("route[%d]: %w", i, err)
		}
		t.routes = append(t.routes, r)
	}
	return t, nil
}

func compileRoute(c RouteConfig, reserved []string) (*Route, error) {
	method, segs, deeper, err := ParseMatch(c.Match)
	if err != nil {
		return nil, err
	}
	r := &Route{name: c.Match, method: method, segs: segs, deeper: deeper, timeout: c.Timeout}
	literal := literalPrefix(segs)
	for _, p := range reserved {
		// The guest API's own paths are dispatched before any route; a
		// route under one of them could never be used and is a mistake.
		if pathUnder(literal, p) {
			return nil, fmt.Errorf("match %q overlaps the guest API path %s", c.Match, p)
		}
	}
	if c.Upstream != "" {
		u, err := ParseUpstream(c.Upstream)
		if err != nil {
			return nil, err
		}
		r.upstream = u
	}
	if r.timeout < 0 || r.timeout > 10*time.Minute {
		return nil, fmt.Errorf("timeout %v: want 0 (default) to 10m", r.timeout)
	}
	if r.timeout == 0 {
		r.timeout = DefaultTimeout
	}
	h, err := CompileHeaders(c.Headers)
	if err != nil {
		return nil, fmt.Errorf("forward_headers: %w", err)
	}
	r.headers = h
	feats := c.Features
	if len(feats) == 0 {
		feats = []string{string(machinetoken.FeatureProxy)}
	}
	for _, f := range feats {
		switch machinetoken.Feature(f) {
		case machinetoken.FeatureMetadata, machinetoken.FeatureProxy:
			r.features = append(r.features, machinetoken.Feature(f))
		case machinetoken.FeatureOIDC:
			// A copy with the oidc feature but no audience caveat would buy
			// a JWT for any audience from whoever captures it upstream; the
			// agent mints OIDC tokens itself, bound to one audience each.
			return nil, fmt.Errorf("feature %q is not allowed on a proxy route: OIDC tokens come from POST /v1/tokens/oidc, bound to their audience", f)
		default:
			return nil, fmt.Errorf("unknown feature %q", f)
		}
	}
	return r, nil
}

// literalPrefix returns the template's path up to its first placeholder.
func literalPrefix(segs []segment) string {
	var b strings.Builder
	for _, s := range segs {
		if s.kind != segLiteral {
			b.WriteString("/")
			return b.String()
		}
		b.WriteString("/" + s.lit)
	}
	return b.String()
}

// pathUnder reports whether p is prefix itself or a path below it.
func pathUnder(p, prefix string) bool {
	prefix = strings.TrimSuffix(prefix, "/")
	return p == prefix || strings.HasPrefix(p, prefix+"/")
}

// ParseUpstream validates an upstream base URL: http or https, a host, no
// credentials, query or fragment.
func ParseUpstream(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return nil, errors.New("upstream: not a URL")
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("upstream %q: want an http or https URL", s)
	case u.Host == "" || u.Opaque != "":
		return nil, fmt.Errorf("upstream %q: no host", s)
	case u.User != nil:
		return nil, errors.New("upstream: credentials in the URL are not allowed")
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return nil, fmt.Errorf("upstream %q: no query or fragment allowed", s)
	}
	u.Path = strings.TrimRight(u.Path, "/")
	u.RawPath = ""
	return u, nil
}

// ParseMatch parses "METHOD /template". Literal segments may hold only
// unreserved and a few sub-delim characters; {self} and {app} must fill a
// whole segment; "/*" may only end the template.
func ParseMatch(s string) (method string, segs []segment, deeper bool, err error) {
	if len(s) > MaxTemplateLen {
		return "", nil, false, fmt.Errorf("match longer than %d bytes", MaxTemplateLen)
	}
	method, tmpl, ok := strings.Cut(s, " ")
	if !ok || !httpapi.ValidMethod(method) {
		return "", nil, false, fmt.Errorf("match %q: want \"METHOD /path\" with an explicit method", s)
	}
	if !strings.HasPrefix(tmpl, "/") || tmpl == "/" {
		return "", nil, false, fmt.Errorf("match %q: path must start with / and name something", s)
	}
	if rest, ok := strings.CutSuffix(tmpl, "/*"); ok {
		tmpl, deeper = rest, true
		if tmpl == "" {
			return "", nil, false, fmt.Errorf("match %q: \"/*\" alone would forward everything", s)
		}
	}
	for _, part := range strings.Split(tmpl[1:], "/") {
		switch {
		case part == "{self}":
			segs = append(segs, segment{kind: segSelf})
		case part == "{app}":
			segs = append(segs, segment{kind: segApp})
		case part == "" || part == "." || part == "..":
			return "", nil, false, fmt.Errorf("match %q: empty or dot segment", s)
		case !validLiteral(part):
			return "", nil, false, fmt.Errorf("match %q: segment has characters other than letters, digits and -._~!$&'()+,;=:@ (placeholders are {self} and {app})", s)
		default:
			segs = append(segs, segment{lit: part})
		}
	}
	return method, segs, deeper, nil
}

func validLiteral(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("-._~!$&'()+,;=:@", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// validVar reports whether a placeholder value can stand in one path
// segment unchanged. A value that could not (empty, a dot segment, a
// separator, anything needing escapes) makes routes using it match nothing.
func validVar(v string) bool {
	if v == "" || v == "." || v == ".." || len(v) > maxVarLen {
		return false
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '_', c == '.', c == '~':
		default:
			return false
		}
	}
	return true
}

// Lookup returns the first route that allows method on path. path must be
// the cleaned, decoded request path; anything not canonical (empty or dot
// segments, doubled slashes, NUL, backslash) matches no route.
func (t *Table) Lookup(method, path string, v Vars) (*Route, bool) {
	if t == nil || !httpapi.CanonicalPath(path) {
		return nil, false
	}
	for _, r := range t.routes {
		if r.Match(method, path, v) {
			return r, true
		}
	}
	return nil, false
}

// Match reports whether the route allows method on path, with v
// substituted for the placeholders. Method first, then the path, anchored
// at both ends.
func (r *Route) Match(method, path string, v Vars) bool {
	if method != r.method || !httpapi.CanonicalPath(path) {
		return false
	}
	parts := strings.Split(path[1:], "/")
	if len(parts) < len(r.segs) || (!r.deeper && len(parts) != len(r.segs)) {
		return false
	}
	for i, s := range r.segs {
		want := s.lit
		switch s.kind {
		case segSelf:
			want = v.Self
		case segApp:
			want = v.App
		}
		if s.kind != segLiteral && !validVar(want) {
			return false
		}
		if parts[i] != want {
			return false
		}
	}
	if r.deeper {
		// "/x/*" is anything below /x, not /x itself nor "/x/".
		return len(parts) > len(r.segs) && parts[len(r.segs)] != ""
	}
	return true
}

// UsesVars reports whether any route has a placeholder.
func (t *Table) UsesVars() bool {
	if t == nil {
		return false
	}
	for _, r := range t.routes {
		if r.UsesVars() {
			return true
		}
	}
	return false
}
