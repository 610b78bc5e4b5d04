package main

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/issuer"
	"github.com/wicket-sh/wicket/internal/store/bolt"
	"github.com/wicket-sh/wicket/internal/store/etcd/etcdtest"
)

// TestIssuerMigrateCLI copies a single-node state into etcd the way an
// operator does, twice (the second run copies nothing new), and refuses a
// state file an issuer still holds.
func TestIssuerMigrateCLI(t *testing.T) {
	dir := shortDir(t)
	stateDir := filepath.Join(dir, "state")
	cfg, err := config.LoadIssuer("", func(c *config.Issuer) {
		c.State.Dir = stateDir
		c.Admin.Path = filepath.Join(dir, "admin.sock")
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := issuer.Init(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	s, err := issuer.New(ctx, issuer.Options{Overrides: []config.IssuerOverride{func(c *config.Issuer) { *c = *cfg }}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.AddMachine(ctx, api.MachineSpec{Org: "dev", App: "web", Name: "m1"}); err != nil {
		t.Fatal(err)
	}
	s.Store().Close()

	cl := etcdtest.Start(t, 1)
	to := "etcd:" + strings.Join(cl.Endpoints(), ",")
	args := []string{"issuer", "migrate", "--from", "bbolt:" + stateDir, "--to", to, "--etcd-prefix", "/cli/"}
	out, errOut, code := run(t, args...)
	// One macaroon key from init, one OIDC key for org dev.
	if code != 0 || !strings.Contains(out, "copied 2 keys, 0 revocations, 1 machines (0 already there)") {
		t.Fatalf("migrate: %d %q %q", code, out, errOut)
	}
	if !strings.Contains(out, "seal key") {
		t.Errorf("migrate does not remind of the seal key: %q", out)
	}
	if out, errOut, code := run(t, args...); code != 0 || !strings.Contains(out, "0 machines (1 already there)") {
		t.Errorf("second migrate: %d %q %q", code, out, errOut)
	}

	held, err := bolt.Open(filepath.Join(stateDir, "state.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if _, errOut, code := run(t, args...); code == 0 || !strings.Contains(errOut, "stop the issuer") {
		t.Errorf("migrate of a held state file: %d %q", code, errOut)
	}
}

func TestIssuerMigrateCLI_BadArgs(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "state.db")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--from", "/var/lib/wicket/state.db", "--to", "etcd:http://127.0.0.1:2379"}, "want bbolt:PATH"},
		{[]string{"--from", "bbolt:" + filepath.Join(dir, "missing.db"), "--to", "etcd:http://127.0.0.1:2379"}, "no such file"},
		{[]string{"--from", "bbolt:" + file, "--to", "http://127.0.0.1:2379"}, "want etcd:URL"},
		{[]string{"--from", "bbolt:" + file, "--to", "etcd:http://10.0.0.1:2379"}, "not loopback"},
		{[]string{"--to", "etcd:http://127.0.0.1:2379"}, `"from" not set`},
	}
	for _, tt := range tests {
		_, errOut, code := run(t, append([]string{"issuer", "migrate"}, tt.args...)...)
		if code == 0 || !strings.Contains(errOut, tt.want) {
			t.Errorf("migrate %q: %d %q, want an error mentioning %q", tt.args, code, errOut, tt.want)
		}
	}
}
