package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "agent.toml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

const valid = `
[api]
socket_path = "/run/w/api.sock"
socket_mode = "0660"
max_conns = 100

[admin]
socket_path = "/run/w/admin.sock"
allow_uids = [1001]

[limits]
max_body_bytes = 4096

[log]
level = "debug"

[[policy]]
name = "app"
uids = [1000]
allow = ["GET /v1/metadata*"]
`

func TestLoadAgent_Valid(t *testing.T) {
	c, err := LoadAgent(writeFile(t, valid), nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.API.Path != "/run/w/api.sock" || c.API.Mode != 0o660 || c.API.MaxConns != 100 {
		t.Errorf("api = %+v", c.API)
	}
	if c.Admin.Path != "/run/w/admin.sock" || c.Admin.Mode != 0o600 || c.Admin.MaxConns != 32 {
		t.Errorf("admin = %+v (defaults not kept?)", c.Admin)
	}
	if diff := cmp.Diff([]uint32{1001}, c.Admin.AllowUIDs); diff != "" {
		t.Errorf("allow_uids: %s", diff)
	}
	if c.Limits.MaxBodyBytes != 4096 || c.Log.Level != "debug" || len(c.Policy) != 1 {
		t.Errorf("dynamic part not loaded: %+v %+v %+v", c.Limits, c.Log, c.Policy)
	}
}

func TestLoadAgent_Invalid(t *testing.T) {
	for name, body := range map[string]string{
		"syntax":          "[api\nsocket_path=",
		"unknown key":     "[api]\nsocket_pth = \"/run/x.sock\"",
		"relative path":   "[api]\nsocket_path = \"run/x.sock\"",
		"dotdot":          "[api]\nsocket_path = \"/run/../x.sock\"",
		"mode for others": "[api]\nsocket_mode = \"0666\"",
		"mode not octal":  "[api]\nsocket_mode = \"rw\"",
		"owner cannot rw": "[admin]\nsocket_mode = \"0060\"",
		"same paths":      "[api]\nsocket_path = \"/run/wicket/admin.sock\"",
		"bad level":       "[log]\nlevel = \"loud\"",
		"bad duration":    "[limits]\nbody_timeout = \"soon\"",
		"bad policy":      "[[policy]]\nuids=[1]\nallow=[\"GET x\"]",
		"empty policy":    "[[policy]]\nallow=[\"*\"]",
		"unknown group":   "[api]\nsocket_group = \"no-such-group-wicket\"",
		"zero conns":      "[api]\nmax_conns = 0",
		"per-uid > cap":   "[api]\nmax_conns = 10\nmax_conns_per_uid = 11",
		"per-uid < 0":     "[admin]\nmax_conns_per_uid = -1",
	} {
		if _, err := LoadAgent(writeFile(t, body), nil); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestOverridesApplyBeforeValidation(t *testing.T) {
	p := writeFile(t, valid)
	c, err := LoadAgent(p, nil, func(c *Agent) { c.API.Path = "/run/flag/api.sock" })
	if err != nil {
		t.Fatal(err)
	}
	if c.API.Path != "/run/flag/api.sock" {
		t.Errorf("override not applied: %q", c.API.Path)
	}
	if _, err := LoadAgent(p, nil, func(c *Agent) { c.API.Path = "relative" }); err == nil {
		t.Error("override not validated")
	}
}

func TestReadFile_SymlinkRefused(t *testing.T) {
	p := writeFile(t, valid)
	link := filepath.Join(filepath.Dir(p), "link.toml")
	os.Symlink(p, link)
	if _, err := ReadFile(link); err == nil || !strings.Contains(err.Error(), "symlink") {
		t.Errorf("err = %v, want symlink refusal", err)
	}
}

func TestReadFile_TooLargeRefused(t *testing.T) {
	p := writeFile(t, strings.Repeat("#", MaxFileSize+1))
	if _, err := ReadFile(p); err == nil {
		t.Error("oversized file accepted")
	}
}

func TestReadFile_ChangedDuringReadRefused(t *testing.T) {
	p := writeFile(t, valid)
	testHookAfterRead = func() {
		f, _ := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
		f.WriteString("\n[log]\nlevel = \"error\"\n")
		f.Close()
	}
	defer func() { testHookAfterRead = nil }()
	if _, err := ReadFile(p); !errors.Is(err, ErrChanged) {
		t.Errorf("err = %v, want ErrChanged", err)
	}
}

func TestRestartRequired(t *testing.T) {
	a, _ := LoadAgent(writeFile(t, valid), nil)
	b, _ := LoadAgent(writeFile(t, valid), nil)
	if got := RestartRequired(a, b); len(got) != 0 {
		t.Errorf("identical configs: %v", got)
	}
	b.API.Path = "/run/other/api.sock"
	b.Admin.Mode = 0o640
	b.HTTP.MaxHeaderBytes = 4096
	b.Log.Level = "error"              // dynamic
	b.Admin.AllowUIDs = []uint32{1, 2} // dynamic
	want := []string{"api.socket_path", "admin.socket_mode", "http.max_header_bytes"}
	if diff := cmp.Diff(want, RestartRequired(a, b)); diff != "" {
		t.Errorf("RestartRequired (-want +got):\n%s", diff)
	}
}

func FuzzLoadAgent(f *testing.F) {
	f.Add([]byte(valid))
	f.Add([]byte("[api]\nsocket_mode = \"0777\""))
	f.Add([]byte("[[policy]]\nuids=[0]\nallow=[\"*\"]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c := DefaultAgent()
		if err := decodeStrict(data, c); err != nil {
			return
		}
		if err := c.Validate(); err != nil {
			return
		}
		// A config that validates must describe sockets Listen would accept.
		if c.API.Mode&0o007 != 0 || c.Admin.Mode&0o007 != 0 {
			t.Fatalf("validated config grants access to others")
		}
	})
}

// limits.max_body_bytes is capped at 1 MiB: the agent buffers each body in
// full before a handler runs, so a larger cap times max_conns is memory a
// caller can make the agent hold.
func TestConfig_MaxBodyBytesCapped(t *testing.T) {
	for _, n := range []int{1024, 65536, 1 << 20} {
		if _, err := LoadAgent(writeFile(t, fmt.Sprintf("[limits]\nmax_body_bytes = %d\n", n)), nil); err != nil {
			t.Errorf("max_body_bytes %d refused: %v", n, err)
		}
	}
	for _, n := range []int{1<<20 + 1, 16 << 20} {
		_, err := LoadAgent(writeFile(t, fmt.Sprintf("[limits]\nmax_body_bytes = %d\n", n)), nil)
		if err == nil || !strings.Contains(err.Error(), "limits.max_body_bytes") || !strings.Contains(err.Error(), "1048576") {
			t.Errorf("max_body_bytes %d: err = %v, want a refusal naming the key and the 1048576 maximum", n, err)
		}
	}
}
