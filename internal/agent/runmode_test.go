package agent

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/wicket-sh/wicket/internal/agent/feature/spiffe"
	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/sockettest"
)

// Run mode lets the workload's uid in and gives it the API socket's group,
// unless the config decides; the overrides hold on reload too (S-flags),
// since they are overrides.
func TestRunOverrides(t *testing.T) {
	dir := t.TempDir()
	plain := filepath.Join(dir, "plain.toml")
	os.WriteFile(plain, []byte(fmt.Sprintf("[api]\nsocket_path = %q\n[admin]\nsocket_path = %q\n", filepath.Join(dir, "a.sock"), filepath.Join(dir, "b.sock"))), 0o600)
	own := filepath.Join(dir, "own.toml")
	os.WriteFile(own, []byte(fmt.Sprintf(`[api]
socket_path = %q
socket_group = "7"
[admin]
socket_path = %q
[[policy]]
uids = [1234]
allow = ["GET /v1/health"]
`, filepath.Join(dir, "a.sock"), filepath.Join(dir, "b.sock"))), 0o600)

	c, err := LoadConfig(plain, runOverrides(1000, 4242, 4243))
	if err != nil {
		t.Fatal(err)
	}
	if c.API.Group != "4243" || c.API.Mode != 0o660 {
		t.Errorf("api socket group %q mode %o, want the workload's gid and 0660", c.API.Group, c.API.Mode)
	}
	if len(c.Policy) != 1 || !slices.Equal(c.Policy[0].UIDs, []uint32{0, 1000, 4242}) || !slices.Equal(c.Policy[0].Allow, []string{"*"}) {
		t.Errorf("policy %+v, want root, the agent and the workload allowed everything", c.Policy)
	}
	c, err = LoadConfig(own, runOverrides(1000, 4242, 4243))
	if err != nil {
		t.Fatal(err)
	}
	if c.API.Group != "7" || len(c.Policy) != 1 || !slices.Equal(c.Policy[0].UIDs, []uint32{1234}) {
		t.Errorf("the config's own group and policy were overridden: %q %+v", c.API.Group, c.Policy)
	}
}

// The Workload API socket, a feature's, gets the workload's group as the
// API socket does, unless [spiffe] names one.
func TestRunOverrides_FeatureSocketGroup(t *testing.T) {
	dir := t.TempDir()
	base := fmt.Sprintf("[api]\nsocket_path = %q\n[admin]\nsocket_path = %q\n[issuer]\nurl = \"https://issuer.example\"\n[spiffe]\nenabled = true\nsocket_path = %q\nsocket_mode = \"0600\"\n",
		filepath.Join(dir, "a.sock"), filepath.Join(dir, "b.sock"), filepath.Join(dir, "s.sock"))
	for _, tc := range []struct{ extra, group string }{{"", "4243"}, {"socket_group = \"7\"\n", "7"}} {
		p := filepath.Join(dir, "c.toml")
		os.WriteFile(p, []byte(base+tc.extra), 0o600)
		c, err := LoadConfig(p, runOverrides(1000, 4242, 4243))
		if err != nil {
			t.Fatal(err)
		}
		s := spiffe.From(c)
		if s.Group != tc.group || (tc.extra == "" && s.Mode != 0o660) {
			t.Errorf("%q: spiffe socket group %q mode %o, want %q", tc.extra, s.Group, s.Mode, tc.group)
		}
		if c, err = LoadConfig(p); err != nil || spiffe.From(c).Group != strings.TrimSuffix(strings.TrimPrefix(tc.extra, "socket_group = \""), "\"\n") {
			t.Errorf("%q: without run mode the group is %q (%v)", tc.extra, spiffe.From(c).Group, err)
		}
	}
}

func TestWorkloadCanReach(t *testing.T) {
	sockettest.RequireRoot(t, "chowns files to other uids")
	// Not t.TempDir: its parent is 0700, which would block every uid.
	top, err := os.MkdirTemp("", "wr")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(top) })
	os.Chmod(top, 0o755)
	dir := filepath.Join(top, "run")
	os.Mkdir(dir, 0)
	os.Chmod(dir, 0o750) // exact, whatever the umask
	sock := filepath.Join(dir, "s.sock")
	os.WriteFile(sock, nil, 0)
	os.Chmod(sock, 0o660)
	for _, p := range []string{dir, sock} {
		if err := os.Chown(p, 4242, 4300); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		uid     uint32
		gids    []uint32
		blocked string
	}{
		{0, nil, ""},
		{4242, nil, ""},                   // owner
		{4243, []uint32{4300}, ""},        // group
		{4243, []uint32{4301}, dir + " "}, // others: no search on the directory
	}
	for _, tt := range tests {
		err := workloadCanReach(sock, tt.uid, tt.gids)
		if tt.blocked == "" && err != nil || tt.blocked != "" && (err == nil || !strings.HasPrefix(err.Error(), tt.blocked)) {
			t.Errorf("uid %d gids %v: %v, want blocked at %q", tt.uid, tt.gids, err, tt.blocked)
		}
	}
	os.Chmod(dir, 0o751)
	if err := workloadCanReach(sock, 4243, nil); err == nil || !strings.HasPrefix(err.Error(), sock+" ") {
		t.Errorf("others on a 0660 socket: %v, want blocked at the socket", err)
	}
}

// A kept machine token file the workload's uid owns is refused: the agent
// reads only files nobody but their owner can read, so their owner must
// not be the workload. An unlinked file, a missing one and a root
// workload (explicitly allowed) pass.
func TestCheckTokenFile(t *testing.T) {
	sockettest.RequireRoot(t, "chowns the token file to the workload's uid")
	dir := t.TempDir()
	tok := filepath.Join(dir, "token")
	if err := os.WriteFile(tok, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(tok, 4242, 4242); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		c       config.AgentIssuer
		uid     uint32
		refused bool
	}{
		{config.AgentIssuer{TokenFile: tok}, 4242, true},
		{config.AgentIssuer{TokenFile: tok}, 4243, false},
		{config.AgentIssuer{TokenFile: tok, TokenUnlink: true}, 4242, false},
		{config.AgentIssuer{TokenFile: tok}, 0, false},
		{config.AgentIssuer{TokenFile: filepath.Join(dir, "absent")}, 4242, false},
		{config.AgentIssuer{}, 4242, false},
	}
	for _, tt := range tests {
		err := checkTokenFile(tt.c, tt.uid)
		if (err != nil) != tt.refused {
			t.Errorf("%+v uid %d: %v, refused want %v", tt.c, tt.uid, err, tt.refused)
		}
		if err != nil && !strings.Contains(err.Error(), "belongs to uid 4242") {
			t.Errorf("refusal %q does not name the owner", err)
		}
	}
}
