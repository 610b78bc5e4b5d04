package peer

import (
	"errors"
	"testing"

	"github.com/wicket-sh/wicket/internal/unixsock"
)

func TestCompile_Exes(t *testing.T) {
	for _, tc := range []struct {
		exes []string
		ok   bool
	}{
		{[]string{"/usr/bin/app"}, true},
		{[]string{"/usr/bin/app", "/opt/x/y"}, true},
		{[]string{"usr/bin/app"}, false},
		{[]string{""}, false},
		{[]string{"/usr/bin/../bin/app"}, false},
		{[]string{"/usr/bin/app/"}, false},
		{[]string{"/usr//bin/app"}, false},
	} {
		_, err := Compile([]Rule{{UIDs: []uint32{1}, Exes: tc.exes, Allow: []string{"*"}}})
		if (err == nil) != tc.ok {
			t.Errorf("exes %q: err = %v, want ok=%v", tc.exes, err, tc.ok)
		}
	}
}

// A peer whose executable cannot be determined (here: not from a
// Listener) never matches a rule with exes, and the reason is reported;
// rules without exes are unaffected.
func TestDecide_ExeFailsClosed(t *testing.T) {
	p, err := Compile([]Rule{
		{Name: "exe", UIDs: []uint32{1000}, Exes: []string{"/usr/bin/app"}, Allow: []string{"POST /v1/tokens/oidc"}},
		{Name: "plain", UIDs: []uint32{1000}, Allow: []string{"GET /v1/health"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	c := unixsock.Peer{UID: 1000, GID: 1000, PID: 1}
	d := p.Decide(c, "POST", "/v1/tokens/oidc")
	if d.Allowed || !errors.Is(d.ExeErr, unixsock.ErrExeUnavailable) {
		t.Errorf("exe rule with unknown exe: %+v", d)
	}
	d = p.Decide(c, "GET", "/v1/health")
	if !d.Allowed || d.Rule != "plain" || d.ExeErr != nil {
		t.Errorf("plain rule: %+v (exe looked up needlessly?)", d)
	}
	// Another uid: the exe is never looked up.
	if d := p.Decide(unixsock.Peer{UID: 1}, "POST", "/v1/tokens/oidc"); d.Allowed || d.ExeErr != nil {
		t.Errorf("other uid: %+v", d)
	}
	if rule, ok := p.Allowed(c, "POST", "/v1/tokens/oidc"); ok {
		t.Errorf("Allowed = %q", rule)
	}
}
