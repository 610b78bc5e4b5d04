package unixsock

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wicket-sh/wicket/internal/sockettest"
)

// TestSocketPath_ForeignOwnedAncestorRefused (S-path): not only the
// socket's own directory but every ancestor must be owned by root or the
// service: a user owning an ancestor can rename it away and put a
// directory of its own in its place between our check and the bind.
func TestSocketPath_ForeignOwnedAncestorRefused(t *testing.T) {
	sockettest.RequireRoot(t)
	d := sockDir(t)
	foreign := filepath.Join(d, "foreign")
	dir := filepath.Join(foreign, "run")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(foreign, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "api.sock")
	l, err := Listen(Config{Path: p})
	if err == nil {
		l.Close()
		t.Fatal("socket under a directory owned by uid 65534 accepted")
	}
	if !strings.Contains(err.Error(), foreign) || !strings.Contains(err.Error(), "uid 65534") {
		t.Errorf("err = %v, want it to name %s and uid 65534", err, foreign)
	}
	if _, err := os.Lstat(p); err == nil {
		t.Error("socket created")
	}
}

// TestSocketPath_SymlinkedAncestorRefused (S-path): an ancestor that is a
// symlink is refused as well, not followed.
func TestSocketPath_SymlinkedAncestorRefused(t *testing.T) {
	d := sockDir(t)
	real := filepath.Join(d, "real")
	if err := os.MkdirAll(filepath.Join(real, "run"), 0o700); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(d, "link")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(link, "run", "api.sock")
	l, err := Listen(Config{Path: p})
	if err == nil {
		l.Close()
		t.Fatal("socket under a symlinked ancestor accepted")
	}
	if !strings.Contains(err.Error(), "symlink") || !strings.Contains(err.Error(), link) {
		t.Errorf("err = %v, want a symlink refusal naming %s", err, link)
	}
	if _, err := os.Lstat(filepath.Join(real, "run", "api.sock")); err == nil {
		t.Error("socket created through the symlinked ancestor")
	}
}
