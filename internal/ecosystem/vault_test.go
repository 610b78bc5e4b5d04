package ecosystem

import (
	"context"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"

	jwtauth "github.com/hashicorp/vault-plugin-auth-jwt"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/wicket-sh/wicket/internal/trust"
)

// vaultModule is the plugin's module path, for its version.
const vaultModule = "github.com/hashicorp/vault-plugin-auth-jwt"

// vaultBackend is Vault's JWT auth method (the plugin's own code) on
// in-memory storage, as `vault auth enable jwt` mounts it.
func vaultBackend(t *testing.T) (logical.Backend, logical.Storage) {
	t.Helper()
	storage := &logical.InmemStorage{}
	b, err := jwtauth.Factory(context.Background(), &logical.BackendConfig{
		System:      &logical.StaticSystemView{DefaultLeaseTTLVal: time.Hour, MaxLeaseTTLVal: 24 * time.Hour},
		StorageView: storage,
	})
	if err != nil {
		t.Fatal(err)
	}
	return b, storage
}

// vaultWrite is `vault write auth/jwt/PATH k=v...`.
func vaultWrite(t *testing.T, b logical.Backend, s logical.Storage, path string, data map[string]any) (*logical.Response, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req := &logical.Request{Operation: logical.UpdateOperation, Path: path, Storage: s, Data: data, Connection: &logical.Connection{RemoteAddr: "127.0.0.1"}}
	// As Vault's router does: a write to a path that does not exist yet
	// is a create.
	if checked, exists, err := b.HandleExistenceCheck(ctx, req); err == nil && checked && !exists {
		req.Operation = logical.CreateOperation
	}
	resp, err := b.HandleRequest(ctx, req)
	if err == nil && resp != nil && resp.IsError() {
		err = resp.Error()
	}
	return resp, err
}

// TestVault_JWTAuth: Vault's JWT auth plugin configured with what
// `wicket trust vault` prints, as docs/federation.md shows (discovery URL,
// bound issuer, a role with bound audience, org and app bound as strings,
// claim mappings), logging in with the machine's token; --machine's
// bound_subject pins one machine; the negative cases are refused.
func TestVault_JWTAuth(t *testing.T) {
	done(t, "vault")
	w := newWorld(t, nil)
	b, s := vaultBackend(t)
	asMap := func(v any) map[string]any {
		t.Helper()
		raw, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]any{}
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	target := func(machine string) trust.Target {
		t.Helper()
		tg, err := trust.NewTarget(w.issuer, "dev", "dev-app", machine, false)
		if err != nil {
			t.Fatal(err)
		}
		return tg
	}
	roleFor := func(machine string) map[string]any {
		t.Helper()
		r, err := trust.VaultRoleConfig(target(machine), "vault.example.com", []string{"dev-app"})
		if err != nil {
			t.Fatal(err)
		}
		return asMap(r)
	}
	// vault write auth/jwt/config @config.json (wicket trust vault --part config)
	if _, err := vaultWrite(t, b, s, "config", asMap(trust.VaultAuthConfig(target("")))); err != nil {
		t.Fatalf("config: %v", err)
	}
	// vault write auth/jwt/role/dev-app @role.json (wicket trust vault)
	if _, err := vaultWrite(t, b, s, "role/dev-app", roleFor("")); err != nil {
		t.Fatalf("role: %v", err)
	}
	// wicket trust vault --machine web-1 / web-2: bound_subject.
	for _, m := range []string{"web-1", "web-2"} {
		if _, err := vaultWrite(t, b, s, "role/"+m, roleFor(m)); err != nil {
			t.Fatalf("role with bound_subject: %v", err)
		}
	}

	login := func(role, jwt string) (*logical.Response, error) {
		return vaultWrite(t, b, s, "login", map[string]any{"role": role, "jwt": jwt})
	}
	good := w.token(t, "vault.example.com")
	for _, r := range []string{"dev-app", "web-1"} {
		resp, err := login(r, good)
		if err != nil || resp == nil || resp.Auth == nil {
			t.Fatalf("login role %s: %v", r, err)
		}
		md := resp.Auth.Alias.Metadata
		if resp.Auth.Alias.Name != w.subject || md["machine_id"] == "" || md["region"] != "local" || !contains(resp.Auth.Policies, "dev-app") {
			t.Errorf("role %s: alias %q metadata %v policies %v", r, resp.Auth.Alias.Name, md, resp.Auth.Policies)
		}
	}
	if _, err := login("web-2", good); err == nil {
		t.Error("bound_subject of another machine accepted this one")
	}
	for name, tok := range w.bad(t, "vault.example.com") {
		if _, err := login("dev-app", tok); err == nil {
			t.Errorf("%s accepted", name)
		} else {
			t.Logf("%s refused: %s", name, firstLine(err.Error()))
		}
	}
	// Another app of the same org: the bound claims refuse it.
	otherApp := w.ti.MachineToken(t, "dev", "other-app", "web-1")
	tok, _, err := w.ti.OIDCSource(otherApp, "vault.example.com")(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := login("dev-app", tok); err == nil {
		t.Error("another app's token accepted by the role bound to dev-app")
	}
	tested("Vault JWT auth (`vault-plugin-auth-jwt`, in process)", moduleVersion(t, vaultModule), "`wicket trust vault`'s config and role: discovery URL, bound issuer, bound audiences, bound claims, claim mappings; `bound_subject`")
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

// moduleVersion is the version of a module in this build's go.mod (test
// binaries carry no dependency list in their build info).
func moduleVersion(t *testing.T, path string) string {
	t.Helper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Version}}", path).Output()
	if err != nil || len(strings.TrimSpace(string(out))) == 0 {
		t.Fatalf("version of %s: %v", path, err)
	}
	return strings.TrimSpace(string(out))
}
