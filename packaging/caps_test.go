package packaging

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/e2e"
	"github.com/wicket-sh/wicket/internal/sockettest"
	"github.com/wicket-sh/wicket/internal/wait"
)

// TestAgentUnit_CapabilitiesSuffice runs the real agent binary as root
// with only the capabilities the agent unit grants (setpriv: bounding set
// CAP_CHOWN, no new privileges): it must give the API socket and a token
// file their group and serve tokens. With CAP_CHOWN dropped too it must
// fail, so the unit's one capability is both enough and needed.
func TestAgentUnit_CapabilitiesSuffice(t *testing.T) {
	sockettest.RequireRoot(t, "the agent unit runs the agent as root")
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		sockettest.Unavailable(t, "setpriv not installed (Debian package util-linux)")
	}
	caps := unitSettings(t, filepath.Join(repoRoot(t), "packaging", "systemd", "wicket-agent.service"))["CapabilityBoundingSet"]
	if len(caps) != 1 || caps[0] != "CAP_CHOWN" {
		t.Fatalf("the unit grants %q; this test checks CAP_CHOWN", caps)
	}
	bins := buildBinaries(t)
	ti := e2e.StartIssuer(t)
	mt := ti.MachineToken(t, "dev", "dev-app", "web-1")

	start := func(t *testing.T, bounding string) (dir string, exited chan error) {
		dir = e2e.ShortDir(t)
		cfg := fmt.Sprintf(`[api]
socket_path = %q
socket_group = "65534"
[admin]
socket_path = %q
[issuer]
url = %q
[[token_file]]
path = %q
audience = "files.example.com"
group = "65534"
`, filepath.Join(dir, "run", "api.sock"), filepath.Join(dir, "run", "admin.sock"), ti.URL, filepath.Join(dir, "run", "tokens", "f"))
		if err := os.WriteFile(filepath.Join(dir, "agent.toml"), []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(setpriv, "--bounding-set", bounding, "--inh-caps", "-all", "--no-new-privs", "--",
			filepath.Join(bins, "wicket-agent"), "agent", "--config", filepath.Join(dir, "agent.toml"))
		cmd.Env = []string{api.MachineTokenEnv + "=" + mt}
		logs := &sockettest.Buffer{}
		cmd.Stdout, cmd.Stderr = logs, logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited = make(chan error, 1)
		done := make(chan struct{})
		go func() { err := cmd.Wait(); exited <- err; close(done) }()
		t.Cleanup(func() {
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				cmd.Process.Kill()
			}
			if t.Failed() {
				t.Logf("agent log:\n%s", logs)
			}
		})
		return dir, exited
	}

	t.Run("CAP_CHOWN", func(t *testing.T) {
		dir, exited := start(t, "-all,+chown")
		tokenFile := filepath.Join(dir, "run", "tokens", "f")
		wait.Eventually(t, 30*time.Second, func() bool {
			select {
			case err := <-exited:
				t.Fatalf("agent exited: %v", err)
			default:
			}
			_, err := os.Stat(tokenFile)
			return err == nil
		}, "the token file is written")
		for _, p := range []string{tokenFile, filepath.Join(dir, "run", "api.sock")} {
			fi, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			if gid := fi.Sys().(*syscall.Stat_t).Gid; gid != 65534 {
				t.Errorf("%s: group %d, want 65534", p, gid)
			}
		}
		r := sockettest.Do(filepath.Join(dir, "run", "api.sock"), "POST", "/v1/tokens/oidc", `{"aud":"x.example.com"}`, nil)
		if r.Status != http.StatusOK || strings.Count(r.Body, ".") != 2 {
			t.Errorf("token request: %d %.40q", r.Status, r.Body)
		}
	})
	t.Run("no capabilities", func(t *testing.T) {
		_, exited := start(t, "-all")
		select {
		case err := <-exited:
			if err == nil {
				t.Error("the agent exited 0 without CAP_CHOWN")
			}
		case <-time.After(30 * time.Second):
			t.Error("the agent ran without CAP_CHOWN: the unit's capability would not be needed")
		}
	})
}
