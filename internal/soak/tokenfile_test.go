package soak

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wicket-sh/wicket/internal/sockettest"
	"github.com/wicket-sh/wicket/internal/wait"
)

// mountTmpfs mounts a size-limited tmpfs, or skips.
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	sockettest.RequireRoot(t, "mounting a size-limited tmpfs needs root")
	dir := shortDir(t)
	mnt := filepath.Join(dir, "full")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size+",mode=0700", "tmpfs", mnt).CombinedOutput(); err != nil {
		sockettest.Unavailable(t, "cannot mount tmpfs (%v: %s)", err, bytes.TrimSpace(out))
	}
	// Registered after shortDir's cleanup, so it runs before it.
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	})
	return mnt
}

// fillUp writes to a filler file until the filesystem is full.
func fillUp(t *testing.T, dir string) {
	t.Helper()
	f, err := os.Create(filepath.Join(dir, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 4096)
	for i := 0; i < 1<<16; i++ {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("filling: %v", err)
			}
			return
		}
	}
	t.Fatal("filesystem never filled up")
}

func listNames(t *testing.T, dir string) string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return strings.Join(names, ",")
}

// TestTokenFileOnFullFilesystem is the fault "disk full when writing
// token files → old file kept", through the real agent: a [[token_file]]
// on a 64 KiB tmpfs is written once, the filesystem is filled, and the
// agent's refreshes fail: the old file stays whole, no temporary file is
// left behind, the failures are counted in /metrics, and once there is
// room again the file is refreshed.
func TestTokenFileOnFullFilesystem(t *testing.T) {
	skipShort(t)
	mnt := mountTmpfs(t, "64k")
	path := filepath.Join(mnt, "token")
	// Tokens live one minute (the issuer's shortest) and the file is
	// renewed at 10% of that: a refresh every few seconds.
	sys := startSystem(t, agentConfig{Extra: fmt.Sprintf("[[token_file]]\npath = %q\naudience = \"soak-file\"\nrefresh = \"10%%\"\n", path)},
		"[oidc]\ntoken_ttl = \"1m\"\n")
	a := sys.agent
	failures := fmt.Sprintf("wicket_token_file_failures_total{path=%q}", path)
	refreshes := fmt.Sprintf("wicket_token_file_refreshes_total{path=%q}", path)

	var old []byte
	if !wait.Until(20*time.Second, func() bool {
		b, err := os.ReadFile(path)
		old = b
		return err == nil && strings.Count(string(b), ".") == 2
	}) {
		t.Fatalf("token file never written:\n%s", a.logs)
	}
	fillUp(t, mnt)
	failedBefore := a.metric(t, failures)
	if !wait.Until(60*time.Second, func() bool { return a.metric(t, failures) > failedBefore }) {
		t.Fatalf("no refresh failure counted with the filesystem full (%s = %v):\n%s", failures, a.metric(t, failures), a.logs)
	}
	if b, err := os.ReadFile(path); err != nil || !bytes.Equal(b, old) {
		t.Errorf("old token file not kept whole: %v, %d bytes (was %d)", err, len(b), len(old))
	}
	if names := listNames(t, mnt); names != "filler,token" {
		t.Errorf("tmpfs holds %s, want filler and token only (no temporary file)", names)
	}
	if strings.Contains(a.logs.String(), string(old)) {
		t.Error("agent log holds the token")
	}
	a.healthy(t)
	t.Logf("failures counted: %v", a.metric(t, failures))

	// Room again: the next attempt succeeds.
	okBefore := a.metric(t, refreshes)
	os.Remove(filepath.Join(mnt, "filler"))
	if !wait.Until(90*time.Second, func() bool { return a.metric(t, refreshes) > okBefore }) {
		t.Fatalf("token file not refreshed after space came back:\n%s", a.logs)
	}
	if b, err := os.ReadFile(path); err != nil || strings.Count(string(b), ".") != 2 {
		t.Errorf("token file after recovery: %v %q", err, b)
	}
	if names := listNames(t, mnt); names != "token" {
		t.Errorf("tmpfs holds %s after recovery, want token only", names)
	}
	checkRSS(t, a.proc, "after the full filesystem")
}
