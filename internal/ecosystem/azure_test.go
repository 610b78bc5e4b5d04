package ecosystem

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wicket-sh/wicket/internal/wait"
)

const (
	azTenant = "00000000-0000-0000-0000-000000000002"
	azClient = "00000000-0000-0000-0000-000000000001"
	// azSDKCache is the longest time an Azure SDK keeps a token file's
	// content before reading it again (Go azidentity: 10 minutes;
	// @azure/identity and Python: 5).
	azSDKCache = 10 * time.Minute
)

type azResult struct {
	OK    bool
	Error string
}

// TestAzureIdentity: @azure/identity's WorkloadIdentityCredential with the
// environment the agent gives a workload for [azure], against an Entra
// stand-in that verifies the client assertion (issuer, audience and the
// federated credential's subject pinned); the negative cases are refused.
// Rotation: the agent replaces the file between two token requests, and
// the second request's assertion is still valid at the latest moment an
// SDK can present the file's old content (replaced at 80 % of its life,
// then cached up to azSDKCache). With the 10-minute tokens the agent used
// to write, that moment is past the old token's expiry: the control case
// shows Entra's AADSTS700024.
func TestAzureIdentity(t *testing.T) {
	needNode(t)
	done(t, "azure-identity")
	version := npmVersion(t, "@azure/identity")

	for _, tc := range []struct {
		name, ttl string // ttl: the token file's, "" for [azure]'s default
		wantOK    bool
	}{
		{"default ttl", "", true},
		{"control: 10-minute tokens", "10m", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var en *entra
			tokenFile := filepath.Join(t.TempDir(), "tokens", "azure")
			agentCfg := func(ttl string) string {
				s := fmt.Sprintf("[[token_file]]\npath = %q\naudience = \"api://AzureADTokenExchange\"\n", tokenFile)
				if ttl != "" {
					s += fmt.Sprintf("ttl = %q\n", ttl)
				}
				return s + fmt.Sprintf("[azure]\nclient_id = %q\ntenant_id = %q\ntoken_file = %q\nauthority_host = %q\n", azClient, azTenant, tokenFile, en.URL+"/")
			}
			w := newWorld(t, func(w *world) string {
				en = newEntra(t, w.issuer, azTenant, azClient, w.subject)
				return agentCfg(tc.ttl)
			})
			env := append(w.ag.WorkloadEnv(), "NODE_EXTRA_CA_CERTS="+en.CA)
			if !contains(env, "AZURE_FEDERATED_TOKEN_FILE="+tokenFile) || !contains(env, "AZURE_AUTHORITY_HOST="+en.URL+"/") {
				t.Fatalf("workload env %q", env)
			}
			if tc.wantOK {
				t.Run("negative cases", func(t *testing.T) {
					for name, tok := range w.bad(t, "api://AzureADTokenExchange") {
						f := filepath.Join(t.TempDir(), "bad")
						os.WriteFile(f, []byte(tok), 0o600)
						var r []azResult
						runJSON(t, js("azure.mjs"), append(append([]string{}, env...), "AZURE_FEDERATED_TOKEN_FILE="+f),
							map[string]any{"scopes": []string{"https://vault.azure.net/.default"}}, &r)
						if len(r) != 1 || r[0].OK || !strings.Contains(r[0].Error, "AADSTS") {
							t.Errorf("%s: %+v", name, r)
						} else {
							t.Logf("%s refused: %s", name, r[0].Error)
						}
					}
				})
			}

			old := readFile(t, tokenFile)
			iat, exp := claimTimes(t, old)
			marker := filepath.Join(t.TempDir(), "rotated")
			en.mu.Lock()
			base := len(en.seen) // the negative cases' assertions came before
			en.mu.Unlock()
			type run struct {
				r   []azResult
				err error
			}
			results := make(chan run, 1)
			clean := baseEnv(t)
			go func() {
				var r []azResult
				err := runJSONErr(clean, js("azure.mjs"), env, map[string]any{
					"scopes":   []string{"https://storage.azure.com/.default", "https://vault.azure.net/.default"},
					"wait_for": marker,
				}, &r)
				results <- run{r, err}
			}()
			wait.Eventually(t, time.Minute, func() bool { en.mu.Lock(); defer en.mu.Unlock(); return len(en.seen) > base }, "the first token request did not reach Entra")

			// The agent replaces the file (a reload that changes the
			// file's ttl gets it a new token at once).
			newTTL := "59m"
			if tc.ttl != "" {
				newTTL = "9m"
			}
			if err := os.WriteFile(filepath.Join(w.ag.Dir, "agent.toml"), []byte(agentFileHead(t, w)+agentCfg(newTTL)), 0o600); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			if _, err := w.ag.Reload(ctx); err != nil {
				t.Fatalf("reload: %v", err)
			}
			wait.Eventually(t, 20*time.Second, func() bool { return readFile(t, tokenFile) != old }, "the agent did not replace the token file")
			// Entra's clock: the latest moment an SDK may present what it
			// read just before the replacement.
			at := iat.Add(time.Duration(0.8 * float64(exp.Sub(iat)))).Add(azSDKCache)
			en.mu.Lock()
			en.now = func() time.Time { return at }
			en.mu.Unlock()
			os.WriteFile(marker, nil, 0o600)

			var r []azResult
			select {
			case got := <-results:
				if got.err != nil {
					t.Fatal(got.err)
				}
				r = got.r
			case <-time.After(3 * time.Minute):
				t.Fatal("azure.mjs did not finish")
			}
			if len(r) != 2 || !r[0].OK {
				t.Fatalf("token requests: %+v (refusals %q)", r, en.refused)
			}
			en.mu.Lock()
			sameAssertion := len(en.seen) == base+2 && en.seen[base] == en.seen[base+1]
			en.mu.Unlock()
			t.Logf("token life %s; second request presented the %s assertion, checked at iat+%s", exp.Sub(iat),
				map[bool]string{true: "cached (old)", false: "new"}[sameAssertion], at.Sub(iat).Round(time.Second))
			if tc.wantOK && !r[1].OK {
				t.Errorf("after rotation: %s", r[1].Error)
			}
			if !tc.wantOK && (r[1].OK || !strings.Contains(r[1].Error, "AADSTS700024")) {
				t.Errorf("control with 10-minute tokens: %+v, want AADSTS700024", r[1])
			}
		})
	}
	tested("@azure/identity", version, "`WorkloadIdentityCredential` with `[azure]`'s environment and token file (1 h tokens), a token request after the file was replaced; Entra stand-in")
}

// agentFileHead is the part of the agent's config that e2e.StartAgent
// wrote before the test's own TOML.
func agentFileHead(t *testing.T, w *world) string {
	t.Helper()
	return fmt.Sprintf("[api]\nsocket_path = %q\n[admin]\nsocket_path = %q\n[issuer]\nurl = %q\n", w.ag.APISocket, w.ag.AdminSocket, w.ti.URL)
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// claimTimes returns a JWT's iat and exp.
func claimTimes(t *testing.T, tok string) (iat, exp time.Time) {
	t.Helper()
	c := decodeClaims(t, strings.Split(tok, ".")[1])
	i, _ := c["iat"].(float64)
	e, _ := c["exp"].(float64)
	return time.Unix(int64(i), 0), time.Unix(int64(e), 0)
}
