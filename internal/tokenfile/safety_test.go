package tokenfile

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wicket-sh/wicket/internal/sockettest"
)

// nobody is the second uid the ownership tests hand files to.
const nobody = 65534

// TestTokenFile_DirSwappedForSymlinkRefused: once Write has checked the
// token file's directory, swapping that directory for a symlink to another
// one must not make the token (or a temporary file) appear there.
func TestTokenFile_DirSwappedForSymlinkRefused(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "tokens")
	victim := filepath.Join(base, "victim")
	for _, d := range []string{dir, victim} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// Any entry created in victim, even one removed again, moves its
	// mtime off this past value.
	past := time.Now().Add(-time.Hour).Truncate(time.Second)
	if err := os.Chtimes(victim, past, past); err != nil {
		t.Fatal(err)
	}
	swapped := false
	testHookDirChecked = func() {
		if swapped {
			return
		}
		swapped = true
		if err := os.Rename(dir, dir+".old"); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(victim, dir); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { testHookDirChecked = nil })

	err := Write(filepath.Join(dir, "aws"), []byte("header.payload.sig"), 0o440, -1)
	if !swapped {
		t.Fatalf("the test hook never ran (err %v)", err)
	}
	if names := listDir(t, victim); len(names) != 0 {
		t.Fatalf("files created in the symlink target after the swap: %v (err %v)", names, err)
	}
	if fi, serr := os.Stat(victim); serr != nil || !fi.ModTime().Equal(past) {
		t.Fatalf("the symlink target was written to (an entry created there, then removed) after the swap (err %v)", err)
	}
	// The write, if it succeeded, went into the directory that was checked.
	if err == nil {
		if b, rerr := os.ReadFile(filepath.Join(dir+".old", "aws")); rerr != nil || string(b) != "header.payload.sig" {
			t.Errorf("write reported success but the checked directory holds %q (%v)", b, rerr)
		}
	}
}

// TestTokenFile_DirSwapRaceNoFileOutside races Write against another
// thread that keeps exchanging the token file's directory with a symlink
// to another directory (renameat2 RENAME_EXCHANGE, atomic): whatever the
// interleaving, nothing may be created in the symlink's target. Bounded in
// count and time.
func TestTokenFile_DirSwapRaceNoFileOutside(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "tokens")
	victim := filepath.Join(base, "victim")
	link := filepath.Join(base, "link")
	for _, d := range []string{dir, victim} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(victim, link); err != nil {
		t.Fatal(err)
	}
	if err := unix.Renameat2(unix.AT_FDCWD, dir, unix.AT_FDCWD, link, unix.RENAME_EXCHANGE); err != nil {
		sockettest.Unavailable(t, "renameat2 RENAME_EXCHANGE unavailable here: %v", err)
	}
	unix.Renameat2(unix.AT_FDCWD, dir, unix.AT_FDCWD, link, unix.RENAME_EXCHANGE) // back

	stop := make(chan struct{})
	swapperDone := make(chan int)
	go func() {
		n := 0
		for {
			select {
			case <-stop:
				swapperDone <- n
				return
			default:
			}
			if unix.Renameat2(unix.AT_FDCWD, dir, unix.AT_FDCWD, link, unix.RENAME_EXCHANGE) == nil {
				n++
			}
		}
	}()
	deadline := time.Now().Add(2 * time.Second)
	writes, ok := 0, 0
	for writes < 3000 && time.Now().Before(deadline) {
		writes++
		if Write(filepath.Join(dir, "aws"), []byte("header.payload.sig"), 0o440, -1) == nil {
			ok++
		}
		if names := listDir(t, victim); len(names) != 0 {
			close(stop)
			<-swapperDone
			t.Fatalf("after %d writes, files created in the symlink target: %v", writes, names)
		}
	}
	close(stop)
	swaps := <-swapperDone
	t.Logf("%d writes (%d succeeded) against %d directory swaps", writes, ok, swaps)
}

// TestTokenFile_ForeignOwnedAncestorRefused: an ancestor of the token
// file's directory owned by another (non-root) user could be renamed away
// and replaced by that user, so the write is refused, naming the ancestor
// and its owner.
func TestTokenFile_ForeignOwnedAncestorRefused(t *testing.T) {
	sockettest.RequireRoot(t)
	base := t.TempDir()
	foreign := filepath.Join(base, "foreign")
	dir := filepath.Join(foreign, "tokens")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(foreign, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	err := Write(filepath.Join(dir, "aws"), []byte("SECRET.payload.sig"), 0o440, -1)
	if err == nil {
		t.Fatal("write under a directory owned by uid 65534 accepted")
	}
	if !strings.Contains(err.Error(), foreign) || !strings.Contains(err.Error(), "uid 65534") {
		t.Errorf("err = %v, want it to name %s and uid 65534", err, foreign)
	}
	if strings.Contains(err.Error(), "SECRET") {
		t.Errorf("error contains the token: %v", err)
	}
	if names := listDir(t, dir); len(names) != 0 {
		t.Errorf("files created: %v", names)
	}
}

// TestTokenFile_ForeignOwnedTargetRefused: in a shared sticky directory
// another user can claim the token file's name first; the writer refuses
// to take over a file another user owns rather than silently replacing it.
func TestTokenFile_ForeignOwnedTargetRefused(t *testing.T) {
	sockettest.RequireRoot(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "aws")
	if err := os.WriteFile(path, []byte("planted"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(path, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	err := Write(path, []byte("header.payload.sig"), 0o440, -1)
	if err == nil || !strings.Contains(err.Error(), "uid 65534") {
		t.Fatalf("err = %v, want a refusal naming uid 65534", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "planted" {
		t.Errorf("foreign file replaced")
	}
}

// TestTokenFile_StaleCleanupSkipsForeignFiles: stale-temporary cleanup
// only removes files this service owns.
func TestTokenFile_StaleCleanupSkipsForeignFiles(t *testing.T) {
	sockettest.RequireRoot(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "token")
	mine := filepath.Join(dir, ".token"+tmpInfix+"01")
	theirs := filepath.Join(dir, ".token"+tmpInfix+"02")
	for _, p := range []string{mine, theirs} {
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chown(theirs, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	RemoveStale(path)
	if _, err := os.Lstat(mine); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("own stale file kept: %v", err)
	}
	if _, err := os.Lstat(theirs); err != nil {
		t.Errorf("another user's file removed: %v", err)
	}
}
