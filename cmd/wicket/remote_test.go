package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/wicket-sh/wicket/internal/sockettest"
)

// runIn is run with stdin.
func runIn(t *testing.T, stdin string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, wicketBin, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run %v: %v", args, err)
	}
	return o.String(), e.String(), code
}

// TestIssuerCLI_RemoteSameOutput: every `wicket issuer machine|token`
// command gives the same output through --issuer-url --admin-token-file as
// through --socket; admin tokens are minted on the socket and attenuated
// offline.
func TestIssuerCLI_RemoteSameOutput(t *testing.T) {
	dir := shortDir(t)
	sock := filepath.Join(dir, "issuer.sock")
	pub, remote := freeAddr(t), freeAddr(t)
	cfg := filepath.Join(dir, "issuer.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("[server]\nlisten = %q\npublic_url = \"http://%s\"\n[state]\ndir = %q\n[admin]\nsocket_path = %q\n[remote_admin]\nlisten = %q\n",
		pub, pub, filepath.Join(dir, "state"), sock, remote)), 0o600)
	if out, e, code := run(t, "issuer", "init", "--config", cfg); code != 0 {
		t.Fatalf("init: %s %s", out, e)
	}
	cmd := exec.Command(wicketBin, "issuer", "--config", cfg)
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

	out, e, code := run(t, "issuer", "admin-token", "mint", "--socket", sock, "--label", "host-fra-1", "--ttl", "1000h")
	var root struct {
		Token   string `json:"token"`
		TokenID string `json:"token_id"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &root) != nil || root.Token == "" {
		t.Fatalf("admin-token mint: %d %s %s", code, out, e)
	}
	narrow, e, code := runIn(t, root.Token, "issuer", "admin-token", "attenuate", "--org", "acme", "--app", "web", "--region", "fra",
		"--ops", "machine.add,machine.get,machine.update,machine.remove,token.mint,token.revoke", "--max-machine-ttl", "24h", "--ttl", "720h", "--source-addr", "127.0.0.0/8")
	if code != 0 || !strings.HasPrefix(narrow, "fm2_") {
		t.Fatalf("attenuate: %d %q %s", code, narrow, e)
	}
	tokFile := filepath.Join(dir, "host-fra-1")
	os.WriteFile(tokFile, []byte(narrow), 0o600)
	viaSocket := []string{"--socket", sock}
	viaRemote := []string{"--issuer-url", "http://" + remote, "--admin-token-file", tokFile}

	ids := regexp.MustCompile(`\b[0-9a-f]{16}\b|\b[0-9a-f]{32}\b|fm2_[A-Za-z0-9+/=]+|\d{4}-\d\d-\d\dT[0-9:.]+Z`)
	masked := func(s, name string) string { return ids.ReplaceAllString(strings.ReplaceAll(s, name, "NAME"), "X") }
	both := func(args func(name string) []string) (sockOut, remOut string) {
		t.Helper()
		var outs [2]string
		for i, via := range [][]string{viaSocket, viaRemote} {
			name := []string{"m-sock", "m-remote"}[i]
			a := args(name)
			o, e, code := run(t, append(append([]string{"issuer"}, a...), via...)...)
			if code != 0 {
				t.Fatalf("%v via %v: %d %s", a, via[0], code, e)
			}
			outs[i] = o
			if m := masked(o, name); i == 1 && m != masked(outs[0], "m-sock") {
				t.Errorf("%v differs:\nsocket: %s\nremote: %s", a, outs[0], o)
			}
		}
		return outs[0], outs[1]
	}
	both(func(n string) []string {
		return []string{"machine", "add", "--org", "acme", "--app", "web", "--name", n, "--region", "fra", "--tag", "role=web", "--token-ttl", "12h"}
	})
	both(func(n string) []string {
		return []string{"machine", "update", "acme/web/" + n, "--tag", "color=blue", "--untag", "role"}
	})
	both(func(n string) []string { return []string{"machine", "show", "acme/web/" + n} })
	mintS, mintR := both(func(n string) []string { return []string{"token", "mint", "--machine", "acme/web/" + n, "--ttl", "2h"} })
	for i, out := range []string{mintS, mintR} {
		var mt struct{ Token string }
		json.Unmarshal([]byte(out), &mt)
		os.WriteFile(filepath.Join(dir, fmt.Sprint("mt", i)), []byte(mt.Token), 0o600)
	}
	// --token-out: the token goes to a new 0600 file on both transports,
	// and the rest of the reply is the same.
	outS, outR := both(func(n string) []string {
		return []string{"token", "mint", "--machine", "acme/web/" + n, "--ttl", "1h", "--token-out", filepath.Join(dir, "out-"+n)}
	})
	for _, n := range []string{"m-sock", "m-remote"} {
		b, err := os.ReadFile(filepath.Join(dir, "out-"+n))
		fi, _ := os.Stat(filepath.Join(dir, "out-"+n))
		if err != nil || !strings.HasPrefix(string(b), "fm2_") || fi.Mode().Perm() != 0o600 {
			t.Errorf("--token-out for %s: %v %q", n, err, b[:min(len(b), 8)])
		}
	}
	if strings.Contains(outS, "fm2_") || strings.Contains(outR, "fm2_") {
		t.Error("--token-out also printed the token")
	}
	n := 0
	both(func(string) []string {
		n++
		return []string{"token", "revoke", "--machine-token-file", filepath.Join(dir, fmt.Sprint("mt", n-1)), "--reason", "rotated"}
	})
	// Read-only commands on the same state: byte for byte.
	for _, a := range [][]string{{"machine", "list"}, {"machine", "show", "acme/web/m-sock"}} {
		s, _, _ := run(t, append(append([]string{"issuer"}, a...), viaSocket...)...)
		r, _, _ := run(t, append(append([]string{"issuer"}, a...), viaRemote...)...)
		if s != r || !strings.Contains(s, "m-sock") {
			t.Errorf("%v: socket %q, remote %q", a, s, r)
		}
	}
	// Errors: the same envelope on stderr, exit status 1.
	_, es, cs := run(t, append([]string{"issuer", "machine", "show", "nope"}, viaSocket...)...)
	_, er, cr := run(t, append([]string{"issuer", "machine", "show", "nope"}, viaRemote...)...)
	if cs != 1 || cr != 1 || es != er {
		t.Errorf("error: socket %d %q, remote %d %q", cs, es, cr, er)
	}
	both(func(n string) []string { return []string{"machine", "remove", "acme/web/" + n} })
	// Out of scope through the CLI: 403 and its code.
	_, e, code = run(t, append([]string{"issuer", "machine", "add", "--org", "other", "--app", "web", "--name", "x"}, viaRemote...)...)
	if code != 1 || !strings.Contains(e, `"code":"forbidden"`) {
		t.Errorf("out of scope: %d %s", code, e)
	}
	// List and revoke admin tokens on the socket; the copy dies with the root.
	out, _, _ = run(t, "issuer", "admin-token", "list", "--socket", sock)
	if !strings.Contains(out, root.TokenID) || !strings.Contains(out, "host-fra-1") || strings.Contains(out, root.Token) {
		t.Errorf("admin-token list: %s", out)
	}
	if _, e, code := run(t, "issuer", "admin-token", "revoke", root.TokenID, "--socket", sock, "--reason", "host gone"); code != 0 {
		t.Fatalf("admin-token revoke: %s", e)
	}
	_, e, code = run(t, append([]string{"issuer", "machine", "list"}, viaRemote...)...)
	if code != 1 || !strings.Contains(e, `"code":"unauthorized"`) {
		t.Errorf("after revocation: %d %s", code, e)
	}
	if strings.Contains(logs.String(), narrow[4:40]) || strings.Contains(logs.String(), root.Token[4:40]) {
		t.Error("an admin token in the issuer log")
	}
	// Flags that do not go together.
	if _, e, code := run(t, "issuer", "machine", "list", "--socket", sock, "--issuer-url", "http://"+remote, "--admin-token-file", tokFile); code == 0 || !strings.Contains(e, "--issuer-url") {
		t.Errorf("--socket with --issuer-url: %d %s", code, e)
	}
}
