package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/client"
	"github.com/wicket-sh/wicket/client/issuer"
	"github.com/wicket-sh/wicket/internal/admintoken"
	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/e2e"
	"github.com/wicket-sh/wicket/internal/sockettest"
)

func TestMain(m *testing.M) { sockettest.Main(m) }

// hostToken mints a root admin token on a real issuer and attenuates it
// the way a platform provisions one host: org acme, app web, region fra.
func hostToken(t *testing.T, ti *e2e.Issuer) string {
	t.Helper()
	root, err := ti.MintAdminToken(context.Background(), api.AdminTokenRequest{Label: "host-fra-1"})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := admintoken.Attenuate(root.Token, admintoken.Scope{Orgs: []string{"acme"}, Apps: []string{"web"}, Regions: []string{"fra"},
		Ops: []admintoken.Op{admintoken.OpMachineAdd, admintoken.OpMachineRemove, admintoken.OpTokenMint}, MaxMachineTTL: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "admin-token")
	if err := os.WriteFile(p, []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestOrchestrator_CreateHandDestroy runs the example's loop against a
// real issuer and a real agent: the machine registered by the example
// boots from the token file it was handed (read once, unlinked), gets its
// metadata and an OIDC token, and stops working once destroyed.
func TestOrchestrator_CreateHandDestroy(t *testing.T) {
	ti := e2e.StartIssuerWith(t, func(c *config.Issuer) { c.RemoteAdmin.Listen = "127.0.0.1:0" })
	c, err := issuer.New(issuer.Config{URL: "http://" + ti.RemoteAdminAddr().String(), TokenFile: hostToken(t, ti)})
	if err != nil {
		t.Fatal(err)
	}
	o := &Orchestrator{Issuer: c, Org: "acme", App: "web", Region: "fra", Root: e2e.ShortDir(t), IssuerPublicURL: ti.URL}
	ctx := context.Background()
	m, err := o.Create(ctx, "web-1")
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(m.tokenPath())
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v %v, want mode 0600", fi, err)
	}
	if life := time.Until(m.ExpiresAt); life > 24*time.Hour || life < 23*time.Hour {
		t.Errorf("machine token lives %v, want the host token's 24h cap", life)
	}
	cfg, _ := os.ReadFile(filepath.Join(m.Dir, "etc", "wicket", "agent.toml"))
	if !strings.Contains(string(cfg), "token_unlink = true") {
		t.Errorf("agent.toml: %s", cfg)
	}

	// "Boot": the machine's agent reads the file it was handed.
	ag := e2e.StartAgent(t, ti.URL, "", "token_file = \""+m.tokenPath()+"\"\ntoken_unlink = true\n")
	if _, err := os.Stat(m.tokenPath()); !os.IsNotExist(err) {
		t.Errorf("token file still there after the agent read it: %v", err)
	}
	wc := client.New(ag.APISocket)
	md, _, err := wc.Metadata(ctx)
	if err != nil || md.MachineID != m.ID || md.Region != "fra" {
		t.Fatalf("metadata = %+v, %v", md, err)
	}
	if tok, _, err := wc.OIDCToken(ctx, "sts.amazonaws.com"); err != nil || tok == "" {
		t.Fatalf("oidc token: %v", err)
	}

	// Renew hands a fresh token; destroy removes the machine, and
	// repeating it is harmless.
	old := m.TokenID
	if err := o.Renew(ctx, m); err != nil || m.TokenID == old {
		t.Fatalf("Renew: %v (token %s, was %s)", err, m.TokenID, old)
	}
	if err := o.Destroy(ctx, m); err != nil {
		t.Fatal(err)
	}
	if err := o.Destroy(ctx, m); err != nil {
		t.Fatalf("second Destroy: %v", err)
	}
	if _, err := os.Stat(m.Dir); !os.IsNotExist(err) {
		t.Errorf("machine directory left: %v", err)
	}
	if _, err := ti.Store().GetMachine(ctx, m.ID); err == nil {
		t.Error("machine still registered after Destroy")
	}
	// The agent's next fresh token request is refused by the issuer.
	if _, _, err := wc.OIDCToken(ctx, "other-audience"); err == nil {
		t.Error("a destroyed machine still gets OIDC tokens")
	}
}

// TestOrchestrator_Main runs the program's command line: create two
// machines, hold, destroy them.
func TestOrchestrator_Main(t *testing.T) {
	ti := e2e.StartIssuerWith(t, func(c *config.Issuer) { c.RemoteAdmin.Listen = "127.0.0.1:0" })
	root := e2e.ShortDir(t)
	var out bytes.Buffer
	err := run(context.Background(), []string{"-issuer-url", "http://" + ti.RemoteAdminAddr().String(), "-admin-token-file", hostToken(t, ti),
		"-org", "acme", "-app", "web", "-region", "fra", "-root", root, "-count", "2", "-hold", "10ms"}, &out)
	if err != nil {
		t.Fatalf("run: %v\n%s", err, &out)
	}
	if strings.Count(out.String(), "created ") != 2 || strings.Count(out.String(), "destroyed ") != 2 {
		t.Errorf("output:\n%s", &out)
	}
	if ms, _ := ti.Store().ListMachines(context.Background()); len(ms) != 0 {
		t.Errorf("%d machines left registered", len(ms))
	}
	// Outside its scope the program fails with the issuer's code.
	err = run(context.Background(), []string{"-issuer-url", "http://" + ti.RemoteAdminAddr().String(), "-admin-token-file", hostToken(t, ti),
		"-org", "acme", "-app", "web", "-region", "ord", "-root", root}, &out)
	if issuer.Code(err) != api.CodeForbidden {
		t.Errorf("region ord: %v, want forbidden", err)
	}
}
