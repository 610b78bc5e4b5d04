package main

import (
	"encoding/json"
	"github.com/wicket-sh/wicket/internal/sockettest"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestIssuerCLI drives the issuer the way an operator does: init, run,
// then manage machines, tokens and keys through the admin socket.
func TestIssuerCLI(t *testing.T) {
	dir := shortDir(t)
	state := filepath.Join(dir, "state")
	sock := filepath.Join(dir, "issuer.sock")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	flags := []string{"--state-dir", state, "--admin-socket", sock, "--listen", addr, "--public-url", "http://" + addr}

	out, errOut, code := run(t, append([]string{"issuer", "init"}, flags...)...)
	if code != 0 || !strings.Contains(out, "created state") || !strings.Contains(out, "seal.key") {
		t.Fatalf("init: %d %q %q", code, out, errOut)
	}
	if out, _, code := run(t, append([]string{"issuer", "init"}, flags...)...); code != 0 || !strings.Contains(out, "already initialized") {
		t.Errorf("second init: %d %q", code, out)
	}

	cmd := exec.Command(wicketBin, append([]string{"issuer"}, flags...)...)
	logs := &sockettest.Buffer{}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(logs.String(), "issuer ready") {
		if time.Now().After(deadline) {
			t.Fatalf("issuer not ready:\n%s", logs)
		}
		time.Sleep(10 * time.Millisecond)
	}

	out, errOut, code = run(t, "issuer", "machine", "add", "--socket", sock, "--org", "dev", "--app", "dev-app",
		"--name", "web-1", "--region", "fra", "--tag", "role=web", "--source-addr", "127.0.0.0/8")
	if code != 0 {
		t.Fatalf("machine add: %d %s", code, errOut)
	}
	var added struct {
		Machine struct {
			ID   string            `json:"machine_id"`
			Tags map[string]string `json:"tags"`
		} `json:"machine"`
		Token struct {
			Token   string `json:"token"`
			TokenID string `json:"token_id"`
		} `json:"token"`
	}
	if err := json.Unmarshal([]byte(out), &added); err != nil || added.Machine.ID == "" || !strings.HasPrefix(added.Token.Token, "fm2_") {
		t.Fatalf("machine add output %q: %v", out, err)
	}
	if strings.Contains(logs.String(), added.Token.Token[4:40]) {
		t.Error("machine token in the issuer log")
	}

	out, _, code = run(t, "issuer", "machine", "update", "--socket", sock, "dev/dev-app/web-1", "--tag", "color=blue", "--untag", "role")
	if code != 0 || !strings.Contains(out, `"color": "blue"`) || strings.Contains(out, `"role"`) {
		t.Errorf("machine update by name: %d %s", code, out)
	}
	if out, _, code := run(t, "issuer", "machine", "show", "--socket", sock, added.Machine.ID); code != 0 || !strings.Contains(out, `"version": 2`) {
		t.Errorf("machine show: %d %s", code, out)
	}
	if out, _, code := run(t, "issuer", "machine", "list", "--socket", sock); code != 0 || !strings.Contains(out, "web-1") {
		t.Errorf("machine list: %d %s", code, out)
	}
	out, _, code = run(t, "issuer", "token", "mint", "--socket", sock, "--machine", added.Machine.ID, "--ttl", "1h")
	var minted struct {
		TokenID string `json:"token_id"`
	}
	json.Unmarshal([]byte(out), &minted)
	if code != 0 || len(minted.TokenID) != 32 {
		t.Fatalf("token mint: %d %s", code, out)
	}
	if out, _, code := run(t, "issuer", "token", "revoke", "--socket", sock, minted.TokenID); code != 0 || !strings.Contains(out, "revoked") {
		t.Errorf("token revoke: %d %s", code, out)
	}
	if out, _, code := run(t, "issuer", "keys", "rotate", "--socket", sock, "--org", "dev"); code != 0 || !strings.Contains(out, `"state": "pending"`) {
		t.Errorf("keys rotate: %d %s", code, out)
	}
	if out, _, code := run(t, "issuer", "keys", "list", "--socket", sock); code != 0 || strings.Count(out, `"kind": "oidc"`) != 2 {
		t.Errorf("keys list: %d %s", code, out)
	}
	_, errOut, code = run(t, "issuer", "machine", "add", "--socket", sock, "--org", "Bad Org", "--app", "a", "--name", "n")
	if code != 1 || !strings.Contains(errOut, "org") {
		t.Errorf("invalid add: %d %s", code, errOut)
	}
	if out, _, code := run(t, "issuer", "machine", "remove", "--socket", sock, added.Machine.ID); code != 0 || !strings.Contains(out, "removed") {
		t.Errorf("machine remove: %d %s", code, out)
	}
}

// TestIssuerInitCLI_ForeignStateRefused: `wicket issuer init` on state
// another uid created exits non-zero naming the path and owner, rather than
// reporting the state as already initialized.
func TestIssuerInitCLI_ForeignStateRefused(t *testing.T) {
	sockettest.RequireRoot(t)
	dir := shortDir(t)
	state := filepath.Join(dir, "state")
	flags := []string{"--state-dir", state, "--admin-socket", filepath.Join(dir, "issuer.sock")}
	if out, errOut, code := run(t, append([]string{"issuer", "init"}, flags...)...); code != 0 {
		t.Fatalf("init: %d %q %q", code, out, errOut)
	}
	for _, p := range []string{state, filepath.Join(state, "seal.key"), filepath.Join(state, "state.db")} {
		if err := os.Chown(p, 65534, 65534); err != nil {
			t.Fatal(err)
		}
	}
	out, errOut, code := run(t, append([]string{"issuer", "init"}, flags...)...)
	if code == 0 || strings.Contains(out, "already initialized") {
		t.Fatalf("init on state owned by uid 65534: exit %d, stdout %q", code, out)
	}
	if !strings.Contains(errOut, state) || !strings.Contains(errOut, "uid 65534") {
		t.Errorf("stderr %q, want it to name %s and uid 65534", errOut, state)
	}
}
