package main

import (
	"encoding/json"
	"fmt"
	"github.com/wicket-sh/wicket/internal/sockettest"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wicket-sh/wicket/internal/agent/agenttest"
)

// startGuestAgent runs `wicket agent` against a test issuer, handing it the
// machine token by env var (or by fd 3 with viaFD), and waits for the API.
func startGuestAgent(t *testing.T, is *agenttest.Issuer, viaFD bool) (api string, logs *sockettest.Buffer) {
	t.Helper()
	dir := shortDir(t)
	api = filepath.Join(dir, "run", "api.sock")
	cfg := filepath.Join(dir, "agent.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("[api]\nsocket_path = %q\n[admin]\nsocket_path = %q\n[issuer]\nurl = %q\n",
		api, filepath.Join(dir, "run", "admin.sock"), is.URL)), 0o600)
	tok := is.MachineToken(t)
	cmd := exec.Command(wicketBin, "agent", "--config", cfg)
	cmd.Env = os.Environ()
	if viaFD {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		w.WriteString(tok)
		w.Close()
		defer r.Close()
		cmd.ExtraFiles = []*os.File{r}
		cmd.Args = append(cmd.Args, "--token-fd", "3")
	} else {
		cmd.Env = append(cmd.Env, "WICKET_MACHINE_TOKEN="+tok)
	}
	logs = &sockettest.Buffer{}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := net.Dial("unix", api); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent did not start:\n%s", logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if strings.Contains(logs.String(), tok[4:]) {
		t.Fatal("agent logged the machine token")
	}
	return api, logs
}

func TestTokenOIDC(t *testing.T) {
	for _, viaFD := range []bool{false, true} {
		t.Run(fmt.Sprintf("token_fd=%v", viaFD), func(t *testing.T) {
			is := agenttest.New(t)
			api, _ := startGuestAgent(t, is, viaFD)

			out, errOut, code := run(t, "token", "oidc", "--socket", api, "--aud", "sts.amazonaws.com")
			tok := strings.TrimSuffix(out, "\n")
			if code != 0 || strings.Count(tok, ".") != 2 || strings.Contains(tok, "\n") || errOut != "" {
				t.Fatalf("token oidc: code %d out %q err %q", code, out, errOut)
			}
			out, _, code = run(t, "token", "oidc", "--socket", api, "--json")
			var j struct {
				Token     string `json:"token"`
				ExpiresAt string `json:"expires_at"`
			}
			if code != 0 || json.Unmarshal([]byte(out), &j) != nil || j.Token == "" {
				t.Fatalf("--json: %d %q", code, out)
			}
			if _, err := time.Parse(time.RFC3339, j.ExpiresAt); err != nil {
				t.Errorf("expires_at %q: %v", j.ExpiresAt, err)
			}
			// $WICKET_SOCKET is the default socket.
			cmd := exec.Command(wicketBin, "token", "oidc")
			cmd.Env = append(os.Environ(), "WICKET_SOCKET="+api)
			if b, err := cmd.Output(); err != nil || strings.Count(string(b), ".") != 2 {
				t.Errorf("via WICKET_SOCKET: %v %q", err, b)
			}
		})
	}
}

// TestTokenOIDC_Out: --out writes the JWT alone, without the newline
// "> FILE" leaves (an STS reads it as bad base64 padding), mode 0600,
// replacing an earlier token but never a symlink. On the old code the flag
// did not exist.
func TestTokenOIDC_Out(t *testing.T) {
	is := agenttest.New(t)
	api, _ := startGuestAgent(t, is, false)
	dir := shortDir(t)
	path := filepath.Join(dir, "tok")
	for i := 0; i < 2; i++ { // the second run replaces the first file
		out, errOut, code := run(t, "token", "oidc", "--socket", api, "--aud", "sts.amazonaws.com", "--out", path)
		if code != 0 || out != "" {
			t.Fatalf("--out: %d %q %q", code, out, errOut)
		}
		b, _ := os.ReadFile(path)
		fi, _ := os.Stat(path)
		if strings.Count(string(b), ".") != 2 || strings.ContainsAny(string(b), "\n\r ") || fi.Mode().Perm() != 0o600 {
			t.Fatalf("--out file mode %v, %d bytes, ends in %q", fi.Mode(), len(b), b[max(0, len(b)-1):])
		}
	}
	link := filepath.Join(dir, "link")
	os.Symlink(filepath.Join(dir, "target"), link)
	if _, _, code := run(t, "token", "oidc", "--socket", api, "--out", link); code == 0 {
		t.Error("--out replaced a symlink")
	}
	if _, _, code := run(t, "token", "oidc", "--socket", api, "--out", path, "--json"); code == 0 {
		t.Error("--out with --json accepted")
	}
}

func TestTokenOIDC_Errors(t *testing.T) {
	is := agenttest.New(t)
	api, _ := startGuestAgent(t, is, false)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--socket", api, "--aud", "has space"}, "bad request (bad_request, HTTP 400); check --aud"},
		{[]string{"--socket", filepath.Join(t.TempDir(), "none.sock")}, "cannot connect: no such file or directory"},
	} {
		out, errOut, code := run(t, append([]string{"token", "oidc"}, tc.args...)...)
		if code != 1 || out != "" || strings.Count(errOut, "\n") != 1 || !strings.HasPrefix(errOut, "wicket: token oidc: ") || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: code %d out %q err %q", tc.args, code, out, errOut)
		}
		if strings.Contains(errOut, "has space") {
			t.Errorf("error echoes the audience: %q", errOut)
		}
	}
	is.Stop()
	_, errOut, code := run(t, "token", "oidc", "--socket", api, "--aud", "never-cached")
	if code != 1 || !strings.Contains(errOut, "upstream_unavailable") || !strings.Contains(errOut, "issuer is unreachable") {
		t.Errorf("issuer down: %d %q", code, errOut)
	}
}

func TestAgent_TokenFDBadInput(t *testing.T) {
	r, w, _ := os.Pipe()
	w.WriteString("fm2_notAtokenSECRET")
	w.Close()
	cmd := exec.Command(wicketBin, "agent", "--token-fd", "3", "--api-socket", "/nonexistent/a.sock")
	cmd.ExtraFiles = []*os.File{r}
	out, err := cmd.CombinedOutput()
	r.Close()
	if err == nil || !strings.Contains(string(out), "malformed") || strings.Contains(string(out), "SECRET") {
		t.Errorf("bad token on fd: %v %q", err, out)
	}
}
