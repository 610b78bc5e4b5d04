package builtin

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/wicket-sh/wicket/internal/agent/feature"
	"github.com/wicket-sh/wicket/internal/agent/feature/spiffe"
	"github.com/wicket-sh/wicket/internal/config"
)

// [[svid_file]] is its own section, dynamic, checked entry by entry; it
// needs [spiffe] enabled, and its three files are kept from token files.
func TestSVIDFileSection(t *testing.T) {
	dir := t.TempDir()
	base := cloudBase + fmt.Sprintf("[spiffe]\nenabled = true\nsocket_path = %q\n", filepath.Join(dir, "spiffe.sock"))
	ok := base + `
[[svid_file]]
dir = "/run/app/svid"
svid_name = "backend"
owner = "65534"
group = "65534"
mode = "0400"
signal = "SIGHUP"
pid_file = "/run/app/envoy.pid"
command = ["/usr/bin/systemctl", "reload", "envoy"]
`
	c, err := LoadAgent(writeFile(t, ok))
	if err != nil {
		t.Fatal(err)
	}
	files := *c.Section(spiffe.FilesKey).(*[]spiffe.SVIDFile)
	if len(files) != 1 || files[0].Dir != "/run/app/svid" || files[0].SVIDName != "backend" || len(files[0].Command) != 3 {
		t.Errorf("[[svid_file]] = %+v", files)
	}
	if !slices.Contains(config.AgentDynamicFields(feature.Sections(Features())), spiffe.FilesKey) {
		t.Error("svid_file is not dynamic")
	}
	entry := func(kv string) string { return base + "[[svid_file]]\ndir = \"/run/app/svid\"\n" + kv + "\n" }
	for name, tc := range map[string]struct{ toml, want string }{
		"spiffe disabled":   {cloudBase + "[[svid_file]]\ndir = \"/run/app/svid\"\n", "svid_file needs [spiffe] enabled"},
		"relative dir":      {base + "[[svid_file]]\ndir = \"run/app\"\n", "svid_file[0].dir"},
		"key mode 0444":     {entry(`mode = "0444"`), "svid_file[0].mode 0444"},
		"key mode 0600":     {entry(`mode = "0600"`), "svid_file[0].mode 0600"},
		"bad svid_name":     {entry(`svid_name = "a/b"`), "svid_file[0].svid_name"},
		"unknown owner":     {entry(`owner = "no-such-user-wicket"`), "svid_file[0].owner"},
		"signal alone":      {entry(`signal = "SIGHUP"`), "signal and pid_file go together"},
		"pid_file alone":    {entry(`pid_file = "/run/x.pid"`), "signal and pid_file go together"},
		"SIGKILL":           {entry("signal = \"SIGKILL\"\npid_file = \"/run/x.pid\""), `svid_file[0].signal "SIGKILL"`},
		"command in PATH":   {entry(`command = ["systemctl", "reload"]`), "svid_file[0].command"},
		"two in one dir":    {entry("") + "[[svid_file]]\ndir = \"/run/app/svid\"\n", "svid_file[1].dir"},
		"token file on key": {entry("") + "[[token_file]]\npath = \"/run/app/svid/svid_key.pem\"\naudience = \"a\"\n", "is also svid_file[0].dir"},
		"unknown key":       {entry(`sigal = "SIGHUP"`), "sigal"},
	} {
		if _, err := LoadAgent(writeFile(t, tc.toml)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want %q", name, err, tc.want)
		}
	}
}

// The [[svid_file]] example of docs/spiffe.md is a valid config.
func TestSVIDFileSection_DocExample(t *testing.T) {
	b, err := os.ReadFile("../../../docs/spiffe.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i := strings.Index(s, "\n## SVID files\n")
	j := strings.Index(s[i:], "```toml\n")
	if i < 0 || j < 0 {
		t.Fatal("docs/spiffe.md has no toml example under \"## SVID files\"")
	}
	block := s[i+j+len("```toml\n"):]
	block = block[:strings.Index(block, "```")]
	if !strings.Contains(block, "[[svid_file]]") {
		t.Fatalf("the example is not an [[svid_file]]:\n%s", block)
	}
	base := cloudBase + fmt.Sprintf("[spiffe]\nenabled = true\nsocket_path = %q\n", filepath.Join(t.TempDir(), "spiffe.sock"))
	if _, err := LoadAgent(writeFile(t, base+block)); err != nil {
		t.Errorf("docs/spiffe.md's [[svid_file]] example: %v", err)
	}
}
