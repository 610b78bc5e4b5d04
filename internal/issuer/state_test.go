package issuer

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/sockettest"
)

// initState initializes issuer state under dir (state dir dir/state) and
// returns the overrides that name it.
func initState(t *testing.T, dir string) []config.IssuerOverride {
	t.Helper()
	ov := []config.IssuerOverride{issuerConfig(dir, nil)}
	cfg, err := config.LoadIssuer("", ov...)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Init(context.Background(), cfg); err != nil {
		t.Fatalf("Init: %v", err)
	}
	return ov
}

// TestIssuerState_ForeignOwnerRefused: a state directory, seal key or
// state file owned by another uid was planted (or is held) by that user,
// who then knows the seal key and can mint tokens the issuer accepts; the
// issuer refuses to start on it, naming the path and the owner.
func TestIssuerState_ForeignOwnerRefused(t *testing.T) {
	sockettest.RequireRoot(t)
	for _, name := range []string{"", "seal.key", "state.db"} { // "": the state directory itself
		t.Run("state/"+name, func(t *testing.T) {
			dir := t.TempDir()
			ov := initState(t, dir)
			p := filepath.Join(dir, "state", name)
			if err := os.Chown(p, 65534, 65534); err != nil {
				t.Fatal(err)
			}
			s, err := New(context.Background(), Options{Overrides: ov})
			if err == nil {
				s.store.Close()
				t.Fatalf("issuer started with %s owned by uid 65534", p)
			}
			t.Logf("refused: %v", err)
			if !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "uid 65534") {
				t.Errorf("err = %v, want it to name %s and uid 65534", err, p)
			}
		})
	}
}

// TestIssuerState_WritableAncestorRefused: a directory above the state
// that another user can write (not sticky) lets that user rename the state
// away and put its own in its place, so the issuer refuses it.
func TestIssuerState_WritableAncestorRefused(t *testing.T) {
	sockettest.RequireRoot(t)
	dir := filepath.Join(t.TempDir(), "shared")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ov := initState(t, dir)
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	s, err := New(context.Background(), Options{Overrides: ov})
	if err == nil {
		s.store.Close()
		t.Fatal("issuer started on state under a world-writable directory")
	}
	t.Logf("refused: %v", err)
	if !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "writable") {
		t.Errorf("err = %v, want it to name %s as writable", err, dir)
	}
	cfg, _ := config.LoadIssuer("", ov...)
	if _, err := Init(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), dir) {
		t.Errorf("Init under a world-writable directory: err = %v, want a refusal naming %s", err, dir)
	}
}

// TestIssuerInit_ForeignStateRefused: init on state another user created
// must fail loudly, not report it as already initialized.
func TestIssuerInit_ForeignStateRefused(t *testing.T) {
	sockettest.RequireRoot(t)
	dir := t.TempDir()
	ov := initState(t, dir)
	state := filepath.Join(dir, "state")
	for _, p := range []string{state, filepath.Join(state, "seal.key"), filepath.Join(state, "state.db")} {
		if err := os.Chown(p, 65534, 65534); err != nil {
			t.Fatal(err)
		}
	}
	cfg, _ := config.LoadIssuer("", ov...)
	res, err := Init(context.Background(), cfg)
	if err == nil {
		t.Fatalf("Init accepted state owned by uid 65534 (created=%v)", res.Created)
	}
	t.Logf("refused: %v", err)
	if !strings.Contains(err.Error(), state) || !strings.Contains(err.Error(), "uid 65534") {
		t.Errorf("err = %v, want it to name %s and uid 65534", err, state)
	}
}
