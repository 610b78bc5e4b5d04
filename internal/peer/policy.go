// Package peer decides what a caller on a Unix socket may do, from the
// credentials the kernel reported for its connection.
package peer

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/wicket-sh/wicket/internal/httpapi"
	"github.com/wicket-sh/wicket/internal/spiffe"
	"github.com/wicket-sh/wicket/internal/unixsock"
)

// Rule grants the callers it matches (by uid or gid) the routes in Allow.
// When Exes is set, the caller's executable must also be one of those
// absolute paths (see unixsock.Peer.Exe); if it cannot be determined
// safely, the rule does not match.
type Rule struct {
	Name  string   `toml:"name"`
	UIDs  []uint32 `toml:"uids"`
	GIDs  []uint32 `toml:"gids"`
	Exes  []string `toml:"exes"`
	Allow []string `toml:"allow"`
	// SVIDName, when set, is the SPIFFE workload name the callers this
	// rule admits to the SVID routes get
	// (spiffe://<td>/app/<app>/workload/<name>); without it they get the
	// machine's own ID.
	SVIDName string `toml:"svid_name"`
}

// Pattern is one compiled "METHOD /path" allow entry. Method "*" matches any
// method; a path ending in "*" matches that prefix; anything else must match
// exactly. Patterns are anchored: "/v1/metadata" does not match
// "/v1/metadata/x".
type Pattern struct {
	Method string
	Path   string
	Prefix bool
}

// ParsePattern parses "METHOD /path", "METHOD /prefix*" or "*".
func ParsePattern(s string) (Pattern, error) {
	if s == "*" {
		return Pattern{Method: "*", Path: "/", Prefix: true}, nil
	}
	method, path, ok := strings.Cut(s, " ")
	if !ok || method == "" || path == "" {
		return Pattern{}, fmt.Errorf("pattern %q: want \"METHOD /path\"", s)
	}
	if method != "*" && !httpapi.ValidMethod(method) {
		return Pattern{}, fmt.Errorf("pattern %q: unknown method %q", s, method)
	}
	if !strings.HasPrefix(path, "/") || strings.ContainsAny(path, " \t?#") {
		return Pattern{}, fmt.Errorf("pattern %q: path must start with / and hold no spaces, ? or #", s)
	}
	p := Pattern{Method: method, Path: path}
	if strings.HasSuffix(path, "*") {
		p.Path, p.Prefix = strings.TrimSuffix(path, "*"), true
	}
	if strings.Contains(p.Path, "*") {
		return Pattern{}, fmt.Errorf("pattern %q: * is only allowed at the end", s)
	}
	for _, seg := range strings.Split(p.Path, "/") {
		if seg == ".." || seg == "." {
			return Pattern{}, fmt.Errorf("pattern %q: dot segments are not allowed", s)
		}
	}
	return p, nil
}

// Match reports whether the pattern allows method on path. The method is
// checked first, then the path, as the allowlist is read.
func (p Pattern) Match(method, path string) bool {
	if p.Method != "*" && p.Method != method {
		return false
	}
	if p.Prefix {
		return strings.HasPrefix(path, p.Path)
	}
	return path == p.Path
}

func (p Pattern) String() string {
	s := p.Method + " " + p.Path
	if p.Prefix {
		s += "*"
	}
	return s
}

type compiledRule struct {
	name  string
	uids  []uint32
	gids  []uint32
	exes  []string
	allow []Pattern
	svid  string
}

// Policy is an immutable compiled rule list; swap a new one in to change it.
type Policy struct {
	rules []compiledRule
}

// Compile validates and compiles rules. A rule must name at least one uid or
// gid and allow at least one pattern: a rule that matched nobody or granted
// nothing is almost certainly a mistake in the file.
func Compile(rules []Rule) (*Policy, error) {
	p := &Policy{}
	for i, r := range rules {
		name := r.Name
		if name == "" {
			name = fmt.Sprintf("policy[%d]", i)
		}
		if len(r.UIDs) == 0 && len(r.GIDs) == 0 {
			return nil, fmt.Errorf("%s: no uids or gids", name)
		}
		if len(r.Allow) == 0 {
			return nil, fmt.Errorf("%s: allow is empty", name)
		}
		cr := compiledRule{name: name, uids: slices.Clone(r.UIDs), gids: slices.Clone(r.GIDs), exes: slices.Clone(r.Exes), svid: r.SVIDName}
		if r.SVIDName != "" {
			if err := spiffe.ValidateWorkloadName(r.SVIDName); err != nil {
				return nil, fmt.Errorf("%s: svid_name: %w", name, err)
			}
		}
		for _, e := range r.Exes {
			// /proc/PID/exe is always absolute and clean; anything else
			// could never match and is a mistake in the file.
			if e == "" || !filepath.IsAbs(e) || filepath.Clean(e) != e || strings.ContainsRune(e, 0) {
				return nil, fmt.Errorf("%s: exes entry %q: want a clean absolute path", name, e)
			}
		}
		for _, a := range r.Allow {
			pat, err := ParsePattern(a)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			cr.allow = append(cr.allow, pat)
		}
		p.rules = append(p.rules, cr)
	}
	return p, nil
}

// Default is the policy used when the config has none: root and the
// service's own uid may do everything, nobody else anything.
func Default(selfUID uint32) *Policy {
	uids := []uint32{0}
	if selfUID != 0 {
		uids = append(uids, selfUID)
	}
	p, _ := Compile([]Rule{{Name: "default", UIDs: uids, Allow: []string{"*"}}})
	return p
}

// Allowed reports whether the peer may call method on path, and the name of
// the rule that allowed it. Root is not special: it is allowed only if a
// rule names uid 0 (the default policy does).
func (p *Policy) Allowed(c unixsock.Peer, method, path string) (rule string, ok bool) {
	d := p.Decide(c, method, path)
	return d.Rule, d.Allowed
}

// Decision is the outcome of [Policy.Decide].
type Decision struct {
	Rule    string // the rule that allowed the call
	Allowed bool
	// Exe is the caller's executable when a rule with exes was consulted.
	Exe string
	// ExeErr is why the caller's executable could not be determined, when
	// a rule with exes would otherwise have matched; such rules fail closed.
	// It is for the log.
	ExeErr error
	// SVIDName is the allowing rule's svid_name.
	SVIDName string
}

// Decide is Allowed with the details a denial log needs. The executable is
// looked up only when a rule that names exes matches the caller and the
// route, and at most once per call.
func (p *Policy) Decide(c unixsock.Peer, method, path string) Decision {
	var (
		d      Decision
		looked bool
	)
	for _, r := range p.rules {
		if !slices.Contains(r.uids, c.UID) && !slices.Contains(r.gids, c.GID) {
			continue
		}
		if !slices.ContainsFunc(r.allow, func(pat Pattern) bool { return pat.Match(method, path) }) {
			continue
		}
		if len(r.exes) > 0 {
			if !looked {
				d.Exe, d.ExeErr = c.Exe()
				looked = true
			}
			if d.ExeErr != nil || !slices.Contains(r.exes, d.Exe) {
				continue
			}
		}
		d.Rule, d.Allowed, d.SVIDName = r.name, true, r.svid
		return d
	}
	return d
}

// Allowlist is a plain uid/gid allowlist for a whole socket (the admin
// socket): root and the service's own uid are always in it.
type Allowlist struct {
	UIDs []uint32
	GIDs []uint32
}

// Allows reports whether c may use the socket.
func (a Allowlist) Allows(c unixsock.Peer, selfUID uint32) bool {
	return c.UID == 0 || c.UID == selfUID || slices.Contains(a.UIDs, c.UID) || slices.Contains(a.GIDs, c.GID)
}

// UsesExes reports whether any rule names executables.
func (p *Policy) UsesExes() bool {
	for _, r := range p.rules {
		if len(r.exes) > 0 {
			return true
		}
	}
	return false
}
