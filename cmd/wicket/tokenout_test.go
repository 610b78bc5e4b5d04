package main

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/e2e"
)

// TestIssuerCLI_TokenOut: `machine add` and `token mint` with --token-out
// write the machine token alone (no newline) to a new 0600 file, print the
// rest of the JSON without it, and never overwrite or follow anything at
// the path; a refused path mints nothing. The token in the file works.
// On the old code the flag did not exist and the token was only in the
// printed JSON.
func TestIssuerCLI_TokenOut(t *testing.T) {
	var sock string
	ti := e2e.StartIssuerWith(t, func(c *config.Issuer) { sock = c.Admin.Path })
	dir := shortDir(t)

	addOut := filepath.Join(dir, "web-1.token")
	out, errOut, code := run(t, "issuer", "machine", "add", "--socket", sock, "--org", "dev", "--app", "dev-app",
		"--name", "web-1", "--token-out", addOut)
	if code != 0 {
		t.Fatalf("machine add --token-out: %d %s", code, errOut)
	}
	var added api.MachineAdded
	if err := json.Unmarshal([]byte(out), &added); err != nil || added.Machine.MachineID == "" || added.Token == nil || added.Token.TokenID == "" {
		t.Fatalf("machine add output %q: %v", out, err)
	}
	tok := checkTokenFile(t, addOut)
	if added.Token.Token != "" || strings.Contains(out, tok[4:40]) {
		t.Error("machine add --token-out printed the token")
	}
	// The file's token is the machine's: the issuer accepts it.
	req, _ := http.NewRequest("POST", ti.URL+"/v1/tokens/oidc", strings.NewReader(`{"aud":"x"}`))
	req.Header.Set("Authorization", api.AuthScheme+" "+tok)
	if res, err := http.DefaultClient.Do(req); err != nil || res.StatusCode != 200 {
		t.Fatalf("the token from --token-out: %v %v", err, res)
	} else {
		res.Body.Close()
	}

	mintOut := filepath.Join(dir, "web-1.2.token")
	out, errOut, code = run(t, "issuer", "token", "mint", "--socket", sock, "--machine", "dev/dev-app/web-1", "--token-out", mintOut)
	var minted api.MintedToken
	if code != 0 || json.Unmarshal([]byte(out), &minted) != nil || minted.TokenID == "" || minted.Token != "" {
		t.Fatalf("token mint --token-out: %d %q %s", code, out, errOut)
	}
	if tok2 := checkTokenFile(t, mintOut); tok2 == tok || strings.Contains(out, tok2[4:40]) {
		t.Error("token mint --token-out: same token, or printed")
	}

	// Nothing at the path is overwritten or followed, and nothing is minted.
	target := filepath.Join(dir, "elsewhere")
	link := filepath.Join(dir, "link")
	os.Symlink(target, link)
	for _, p := range []string{addOut, link} {
		before, _ := os.ReadFile(p)
		out, errOut, code := run(t, "issuer", "machine", "add", "--socket", sock, "--org", "dev", "--app", "dev-app",
			"--name", "web-2", "--token-out", p)
		if code == 0 || out != "" || !strings.Contains(errOut, "refusing to overwrite") {
			t.Errorf("--token-out %s over an existing name: %d %q %q", filepath.Base(p), code, out, errOut)
		}
		if after, _ := os.ReadFile(p); string(after) != string(before) {
			t.Errorf("%s changed", filepath.Base(p))
		}
	}
	if _, err := os.Lstat(target); err == nil {
		t.Error("--token-out followed a symlink")
	}
	if _, errOut, code := run(t, "issuer", "machine", "show", "--socket", sock, "dev/dev-app/web-2"); code == 0 {
		t.Errorf("a refused --token-out still registered the machine (%s)", errOut)
	}
}

// checkTokenFile returns the machine token in path after checking the
// file is 0600 and holds the token alone.
func checkTokenFile(t *testing.T, path string) string {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	if fi.Mode().Perm() != 0o600 || !strings.HasPrefix(string(b), "fm2_") || strings.ContainsAny(string(b), "\n \t") {
		t.Fatalf("token file mode %v, content prefix %q, length %d", fi.Mode(), string(b[:min(4, len(b))]), len(b))
	}
	return string(b)
}
