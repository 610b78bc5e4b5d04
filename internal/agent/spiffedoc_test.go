package agent

import (
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/wicket-sh/wicket/internal/agent/agenttest"
	"github.com/wicket-sh/wicket/internal/sockettest"
)

// docExample is one command of a docs page and the output lines shown
// under it ("# ..." comments).
type docExample struct {
	cmd  string
	want []string
}

// docExamples returns the shell examples of a section of a docs page.
func docExamples(t *testing.T, path, heading string) []docExample {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	start := strings.Index(s, "\n"+heading+"\n")
	if start < 0 {
		t.Fatalf("%s has no %q section", path, heading)
	}
	s = s[start+1:]
	if end := strings.Index(s[len(heading):], "\n## "); end >= 0 {
		s = s[:len(heading)+end]
	}
	var out []docExample
	inShell := false
	for _, line := range strings.Split(s, "\n") {
		switch {
		case strings.HasPrefix(line, "```sh"):
			inShell = true
		case strings.HasPrefix(line, "```"):
			inShell = false
		case !inShell || line == "":
		case strings.HasPrefix(line, "# "):
			if len(out) > 0 {
				out[len(out)-1].want = append(out[len(out)-1].want, strings.TrimPrefix(line, "# "))
			}
		default:
			out = append(out, docExample{cmd: line})
		}
	}
	return out
}

// shownParts are the literal parts of a shown output line: what is left
// between the elisions (…) and the timestamps, which change every run.
var shownElided = regexp.MustCompile(`…|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ`)

// TestSPIFFEDoc_GuestAPIExamples runs every curl example of docs/spiffe.md's
// "The guest HTTP API" against an agent (the fake issuer's trust domain is
// the one the page shows), and checks that what the page shows under each
// command is what it prints, but for elisions and times.
func TestSPIFFEDoc_GuestAPIExamples(t *testing.T) {
	sockettest.RequireRoot(t, "the policy names uid 0")
	for _, bin := range []string{"curl", "jq", "openssl"} {
		if _, err := exec.LookPath(bin); err != nil {
			sockettest.Unavailable(t, "%s not installed; the docs' examples use it", bin)
			return
		}
	}
	is := agenttest.New(t)
	g := startGuest(t, is, svidCfg)
	examples := docExamples(t, "../../docs/spiffe.md", "## The guest HTTP API")
	if len(examples) < 5 {
		t.Fatalf("found %d examples", len(examples))
	}
	dir := t.TempDir()
	for _, ex := range examples {
		c := strings.ReplaceAll(ex.cmd, "/run/wicket/api.sock", g.api)
		cmd := exec.CommandContext(t.Context(), "sh", "-c", c)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("%s: %v\n%s", ex.cmd, err, out)
			continue
		}
		got := string(out)
		for _, want := range ex.want {
			rest := got
			for _, part := range shownElided.Split(strings.TrimSpace(want), -1) {
				i := strings.Index(rest, part)
				if i < 0 {
					t.Errorf("%s: the page shows %q, the output has no %q:\n%.600s", ex.cmd, want, part, got)
					break
				}
				rest = rest[i+len(part):]
			}
		}
	}
}
