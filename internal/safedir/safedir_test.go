package safedir

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/wicket-sh/wicket/internal/sockettest"
)

func TestOpen_SymlinkAnywhereRefused(t *testing.T) {
	d := t.TempDir()
	real := filepath.Join(d, "real")
	if err := os.MkdirAll(filepath.Join(real, "sub"), 0o700); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(d, "link")
	os.Symlink(real, link)
	for _, p := range []string{link, filepath.Join(link, "sub")} {
		_, err := Open(p, Options{})
		if !errors.Is(err, ErrUntrusted) || !strings.Contains(err.Error(), link+" is a symlink") {
			t.Errorf("Open(%s): err = %v, want a symlink refusal naming %s", p, err, link)
		}
	}
	if _, err := MkdirAll(filepath.Join(link, "new"), 0o700, -1, SelfOrRoot); err == nil {
		t.Error("MkdirAll through a symlink accepted")
	}
	if _, err := os.Lstat(filepath.Join(real, "new")); err == nil {
		t.Error("directory created through the symlink")
	}
}

func TestOpen_RelativeOrUncleanRefused(t *testing.T) {
	for _, p := range []string{"rel/dir", "/tmp/../etc", "/tmp/./x", "/tmp//x", ""} {
		if _, err := Open(p, Options{}); !errors.Is(err, ErrUntrusted) {
			t.Errorf("Open(%q): err = %v", p, err)
		}
	}
}

func TestOpen_WritableRefusedStickyRootAllowed(t *testing.T) {
	d := t.TempDir()
	ww := filepath.Join(d, "ww")
	os.Mkdir(ww, 0o700)
	os.Chmod(ww, 0o777)
	os.Mkdir(filepath.Join(ww, "in"), 0o700)
	for _, p := range []string{ww, filepath.Join(ww, "in")} {
		if _, err := Open(p, Options{}); err == nil || !strings.Contains(err.Error(), ww+" is writable") {
			t.Errorf("Open(%s): err = %v, want %s refused as writable", p, err, ww)
		}
	}
	if os.Geteuid() == 0 {
		os.Chmod(ww, os.ModeSticky|0o777) // root-owned and sticky, like /tmp
		dir, err := Open(filepath.Join(ww, "in"), Options{})
		if err != nil {
			t.Fatalf("under a root-owned sticky directory: %v", err)
		}
		dir.Close()
	}
}

func TestMkdirAll_ModeAndGroup(t *testing.T) {
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	p := filepath.Join(t.TempDir(), "a", "b")
	gid := -1
	if os.Geteuid() == 0 {
		gid = 4242
	}
	dir, err := MkdirAll(p, 0o750, gid, SelfOrRoot)
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	for _, q := range []string{filepath.Dir(p), p} {
		fi, err := os.Lstat(q)
		if err != nil || fi.Mode().Perm() != 0o750 {
			t.Errorf("%s: mode %v (%v), want 0750", q, fi.Mode().Perm(), err)
		}
	}
	if fi, _ := os.Lstat(p); gid >= 0 && fi.Sys().(*syscall.Stat_t).Gid != uint32(gid) {
		t.Errorf("gid %d, want %d", fi.Sys().(*syscall.Stat_t).Gid, gid)
	}
	// The Dir works relative to its descriptor.
	f, err := dir.OpenFile("f", os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := dir.Rename("f", "g"); err != nil {
		t.Fatal(err)
	}
	if fi, err := dir.Lstat("g"); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("Lstat g: %v %v", fi, err)
	}
	if names, err := dir.Names(); err != nil || strings.Join(names, ",") != "g" {
		t.Errorf("Names = %v, %v", names, err)
	}
	if err := dir.Remove("g"); err != nil {
		t.Fatal(err)
	}
	if _, err := dir.OpenFile("../escape", os.O_WRONLY|os.O_CREATE, 0o600); !errors.Is(err, ErrUntrusted) {
		t.Errorf("a name with a separator accepted: %v", err)
	}
}

func TestOpen_ForeignOwnerRefused(t *testing.T) {
	sockettest.RequireRoot(t)
	d := t.TempDir()
	foreign := filepath.Join(d, "foreign")
	os.MkdirAll(filepath.Join(foreign, "in"), 0o755)
	os.Chown(foreign, 65534, 65534)
	for _, p := range []string{foreign, filepath.Join(foreign, "in")} {
		if _, err := Open(p, Options{}); err == nil || !strings.Contains(err.Error(), foreign+" is owned by uid 65534") {
			t.Errorf("Open(%s): err = %v, want %s refused for uid 65534", p, err, foreign)
		}
	}
	// SelfOnly: root-owned is not enough for a non-root service, and a
	// root service accepts only root.
	dir, err := Open(d, Options{Owner: SelfOnly})
	if err != nil {
		t.Fatalf("own directory refused under SelfOnly: %v", err)
	}
	dir.Close()
}

func TestCheckOwner(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	os.WriteFile(p, nil, 0o600)
	fi, _ := os.Stat(p)
	if err := CheckOwner(p, fi, SelfOnly); err != nil {
		t.Errorf("own file: %v", err)
	}
	if os.Geteuid() != 0 {
		return
	}
	os.Chown(p, 65534, 65534)
	fi, _ = os.Stat(p)
	if err := CheckOwner(p, fi, SelfOrRoot); err == nil || !strings.Contains(err.Error(), p+" is owned by uid 65534") {
		t.Errorf("foreign file: err = %v", err)
	}
}
