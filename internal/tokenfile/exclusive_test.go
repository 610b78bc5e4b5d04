package tokenfile

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCreateExclusive_NeverOverwrites: an existing file, a symlink (even
// a dangling one) and a directory at the path are refused and left as
// they were; a new file gets exactly the mode asked, whatever the umask,
// and only what Commit wrote.
func TestCreateExclusive_NeverOverwrites(t *testing.T) {
	dir := t.TempDir()
	existing := filepath.Join(dir, "existing")
	os.WriteFile(existing, []byte("keep"), 0o600)
	link := filepath.Join(dir, "link")
	os.Symlink(filepath.Join(dir, "nowhere"), link)
	for _, p := range []string{existing, link, dir + "/sub"} {
		if p == dir+"/sub" {
			os.Mkdir(p, 0o700)
		}
		if e, err := CreateExclusive(p, 0o600); err == nil {
			e.Abort()
			t.Errorf("%s: created over what was there", p)
		}
	}
	if b, _ := os.ReadFile(existing); string(b) != "keep" {
		t.Errorf("existing file changed: %q", b)
	}
	if _, err := os.Lstat(filepath.Join(dir, "nowhere")); err == nil {
		t.Error("created the symlink's target")
	}

	p := filepath.Join(dir, "new")
	e, err := CreateExclusive(p, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Commit([]byte("secret")); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(p)
	if b, _ := os.ReadFile(p); string(b) != "secret" || fi.Mode().Perm() != 0o600 {
		t.Errorf("new file %q mode %v", b, fi.Mode())
	}
	if _, err := CreateExclusive(p, 0o600); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("second create: %v", err)
	}

	// Abort leaves nothing behind.
	a := filepath.Join(dir, "aborted")
	e, err = CreateExclusive(a, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	e.Abort()
	if _, err := os.Lstat(a); err == nil {
		t.Error("aborted file left behind")
	}
}
