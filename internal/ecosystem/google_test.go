package ecosystem

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const gcpProviderAud = "//iam.googleapis.com/projects/123456789/locations/global/workloadIdentityPools/wicket/providers/dev"

// gcpConfig runs `wicket gcp config` as docs/federation.md does, with the
// STS stand-in as token_url (the one change: Google's STS cannot run
// here), and returns the environment it printed.
func gcpConfig(t *testing.T, sts *googleSTS, args ...string) []string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "gcp.json")
	cmd := exec.Command(wicketBin(t), append([]string{"gcp", "config", "--output", out, "--project", "my-project"}, args...)...)
	b, err := cmd.Output()
	if err != nil {
		t.Fatalf("wicket gcp config: %v", err)
	}
	raw, _ := os.ReadFile(out)
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil || m["token_url"] != "https://sts.googleapis.com/v1/token" {
		t.Fatalf("credentials file: %s", raw)
	}
	m["token_url"] = sts.URL + "/v1/token"
	raw, _ = json.Marshal(m)
	if err := os.WriteFile(out, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	var env []string
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		kv := strings.TrimPrefix(l, "export ")
		k, v, _ := strings.Cut(kv, "=")
		env = append(env, k+"="+strings.Trim(v, "'"))
	}
	return append(env, "NODE_EXTRA_CA_CERTS="+sts.CA)
}

// TestGoogleAuthLibrary: google-auth-library with the credentials file
// `wicket gcp config` writes, executable-sourced and file-sourced, against
// an STS stand-in that verifies the subject token; the project comes from
// the GOOGLE_CLOUD_PROJECT that wicket printed. The negative cases in the
// token file are refused.
func TestGoogleAuthLibrary(t *testing.T) {
	needNode(t)
	done(t, "google-auth-library")
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "tokens", "gcp")
	w := newWorld(t, func(w *world) string {
		return "[[token_file]]\npath = \"" + tokenFile + "\"\naudience = \"" + gcpProviderAud + "\"\n"
	})
	sts := newGoogleSTS(t, w.issuer, gcpProviderAud, w.subject)
	version := npmVersion(t, "google-auth-library")
	type result struct {
		OK             bool
		Token, Project string
		Error          string
	}
	get := func(t *testing.T, env []string) result {
		t.Helper()
		var r result
		runJSON(t, js("google.mjs"), env, map[string]any{}, &r)
		return r
	}
	check := func(t *testing.T, r result) {
		t.Helper()
		if !r.OK || !strings.HasPrefix(r.Token, "ya29.standin-") || r.Project != "my-project" {
			t.Errorf("google-auth-library: %+v", r)
		}
	}

	t.Run("executable source", func(t *testing.T) {
		env := gcpConfig(t, sts, "--audience", gcpProviderAud, "--executable", "--socket", w.ag.APISocket)
		if !contains(env, "GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES=1") || !contains(env, "GOOGLE_CLOUD_PROJECT=my-project") {
			t.Fatalf("gcp config printed %q", env)
		}
		check(t, get(t, env))
		tested("google-auth-library", version, "`wicket gcp config --executable` (runs `wicket gcp executable`), `GOOGLE_CLOUD_PROJECT` from its output; STS stand-in")
	})
	t.Run("file source", func(t *testing.T) {
		env := gcpConfig(t, sts, "--audience", gcpProviderAud, "--token-file", tokenFile)
		check(t, get(t, env))
		tested("google-auth-library", version, "`wicket gcp config --token-file` (the agent's `[[token_file]]`); STS stand-in")
	})
	t.Run("negative cases", func(t *testing.T) {
		for name, tok := range w.bad(t, gcpProviderAud) {
			f := filepath.Join(t.TempDir(), "bad")
			os.WriteFile(f, []byte(tok), 0o600)
			r := get(t, gcpConfig(t, sts, "--audience", gcpProviderAud, "--token-file", f))
			if r.OK {
				t.Errorf("%s: an access token", name)
			} else {
				t.Logf("%s refused: %s", name, r.Error)
			}
		}
		// A provider the token was not made for.
		r := get(t, gcpConfig(t, sts, "--audience", strings.Replace(gcpProviderAud, "providers/dev", "providers/other", 1), "--token-file", tokenFile))
		if r.OK {
			t.Error("another provider's audience: an access token")
		}
	})
	if len(sts.subjects) < 2 {
		t.Errorf("the STS stand-in accepted %d subject tokens, want one per source", len(sts.subjects))
	}
}
