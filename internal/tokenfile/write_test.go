package tokenfile

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/wicket-sh/wicket/internal/sockettest"
)

// token returns a distinct, self-checking token: a reader can tell a whole
// one from a torn or mixed one.
func token(i int) string {
	body := strings.Repeat(string(rune('a'+i%26)), 200+(i%9)*150)
	return fmt.Sprintf("tok-%d.%s.end-%d", i, body, i)
}

var tokenRE = regexp.MustCompile(`^tok-(\d+)\.([a-z])+\.end-(\d+)$`)

func wholeToken(b []byte) bool {
	m := tokenRE.FindSubmatch(b)
	return m != nil && bytes.Equal(m[1], m[3]) && string(b) == token(atoi(m[1]))
}

func atoi(b []byte) int {
	n := 0
	for _, c := range b {
		n = n*10 + int(c-'0')
	}
	return n
}

// listDir returns the names in dir, sorted.
func listDir(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

func TestWrite_AtomicReplace(t *testing.T) {
	// fsync on a disk costs ~10ms, which would stretch 500 writes over
	// seconds; rename's atomicity is the VFS's, the same on tmpfs.
	dir := t.TempDir()
	if os.Geteuid() == 0 {
		dir = mountTmpfs(t, "16m")
	}
	path := filepath.Join(dir, "token")
	if err := Write(path, []byte(token(0)), 0o440, -1); err != nil {
		t.Fatal(err)
	}

	var (
		wg             sync.WaitGroup
		done           = make(chan struct{})
		reads, bad     int
		firstBad       string
		start          = time.Now()
		readerDeadline = start.Add(time.Second)
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		writerDone := false
		for !writerDone || time.Now().Before(readerDeadline) {
			select {
			case <-done:
				writerDone = true
			default:
			}
			b, err := os.ReadFile(path)
			reads++
			if err != nil || !wholeToken(b) {
				if bad == 0 {
					firstBad = fmt.Sprintf("err=%v len=%d %.40q", err, len(b), b)
				}
				bad++
			}
		}
	}()
	for i := 1; i <= 500; i++ {
		if err := Write(path, []byte(token(i)), 0o440, -1); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	close(done)
	wg.Wait()
	t.Logf("%d reads during 500 writes in %s", reads, time.Since(start).Round(time.Millisecond))
	if bad > 0 {
		t.Fatalf("%d of %d reads saw a partial, empty or missing token; first: %s", bad, reads, firstBad)
	}
	if b, _ := os.ReadFile(path); string(b) != token(500) {
		t.Errorf("final content is not the last token")
	}
	if names := listDir(t, dir); len(names) != 1 {
		t.Errorf("directory holds %v, want only the token file", names)
	}
}

func TestWrite_Mode(t *testing.T) {
	old := syscall.Umask(0o077) // the final mode must not depend on the umask
	defer syscall.Umask(old)
	for _, mode := range []fs.FileMode{0o400, 0o440, 0o600, 0o644, 0o664} {
		t.Run(mode.String(), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "token")
			// Once fresh, once over an existing file with another mode.
			for _, prev := range []fs.FileMode{0, 0o600} {
				if prev != 0 {
					os.WriteFile(path, []byte("old"), prev)
				}
				if err := Write(path, []byte("t"), mode, -1); err != nil {
					t.Fatal(err)
				}
				fi, err := os.Stat(path)
				if err != nil {
					t.Fatal(err)
				}
				if got := fi.Mode().Perm(); got != mode {
					t.Errorf("mode %v, want %v", got, mode)
				}
			}
		})
	}
	if err := Write(filepath.Join(t.TempDir(), "t"), []byte("t"), 0o4755, -1); err == nil {
		t.Error("setuid bit accepted")
	}
}

func TestWrite_Group(t *testing.T) {
	sockettest.RequireRoot(t, "changing a file's group to an arbitrary gid needs root")
	path := filepath.Join(t.TempDir(), "token")
	for _, gid := range []int{4242, 0, 31337} {
		if err := Write(path, []byte("t"), 0o440, gid); err != nil {
			t.Fatal(err)
		}
		fi, _ := os.Stat(path)
		if got := int(fi.Sys().(*syscall.Stat_t).Gid); got != gid {
			t.Errorf("gid %d, want %d", got, gid)
		}
		if fi.Mode().Perm() != 0o440 {
			t.Errorf("mode %v after chown", fi.Mode())
		}
	}
	// -1 keeps the writer's group.
	if err := Write(path, []byte("t"), 0o440, -1); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(path)
	if got := int(fi.Sys().(*syscall.Stat_t).Gid); got != os.Getegid() {
		t.Errorf("gid %d with -1, want the writer's %d", got, os.Getegid())
	}
}

// TestWrite_RefusesNonRegularTarget: a symlink is never replaced (nor
// written through), and neither is a directory or a FIFO.
func TestWrite_RefusesNonRegularTarget(t *testing.T) {
	for _, tc := range []struct {
		name, want string
		make       func(t *testing.T, path string)
	}{
		{"symlink", "symlink", func(t *testing.T, path string) {
			target := filepath.Join(filepath.Dir(path), "target")
			os.WriteFile(target, []byte("precious"), 0o600)
			if err := os.Symlink(target, path); err != nil {
				t.Fatal(err)
			}
		}},
		{"dangling symlink", "symlink", func(t *testing.T, path string) {
			os.Symlink(filepath.Join(filepath.Dir(path), "nowhere"), path)
		}},
		{"directory", "directory", func(t *testing.T, path string) { os.Mkdir(path, 0o700) }},
		{"fifo", "not a regular file", func(t *testing.T, path string) {
			if err := syscall.Mkfifo(path, 0o600); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "token")
			tc.make(t, path)
			before := listDir(t, dir)
			err := Write(path, []byte("SECRET-TOKEN"), 0o440, -1)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to say %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "SECRET") {
				t.Errorf("error contains the token: %v", err)
			}
			if after := listDir(t, dir); strings.Join(after, ",") != strings.Join(before, ",") {
				t.Errorf("directory changed: %v → %v", before, after)
			}
			if b, err := os.ReadFile(filepath.Join(dir, "target")); err == nil && string(b) != "precious" {
				t.Errorf("symlink target overwritten: %q", b)
			}
		})
	}
}

// mountTmpfs mounts a size-limited tmpfs on a new directory, or skips.
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	sockettest.RequireRoot(t, "mounting a size-limited tmpfs needs root")
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size+",mode=0700", "tmpfs", dir).CombinedOutput(); err != nil {
		sockettest.Unavailable(t, "cannot mount tmpfs (%v: %s)", err, bytes.TrimSpace(out))
	}
	t.Logf("tmpfs of %s mounted on %s", size, dir)
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

// fill writes to a filler file until the filesystem is full.
func fill(t *testing.T, dir string) {
	t.Helper()
	f, err := os.Create(filepath.Join(dir, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 4096)
	for i := 0; ; i++ {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("filling: %v", err)
			}
			return
		}
		if i > 1<<16 {
			t.Fatal("filesystem never filled up")
		}
	}
}

// TestWrite_DiskFullKeepsOldFile is the "disk full when writing token
// files → old file kept" fault (docs/soak.md).
func TestWrite_DiskFullKeepsOldFile(t *testing.T) {
	dir := mountTmpfs(t, "64k")
	path := filepath.Join(dir, "token")
	old := token(1)
	if err := Write(path, []byte(old), 0o440, -1); err != nil {
		t.Fatal(err)
	}
	fill(t, dir)

	big := "SECRET" + strings.Repeat("x", 256<<10)
	err := Write(path, []byte(big), 0o440, -1)
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("err = %v, want ENOSPC", err)
	}
	if strings.Contains(err.Error(), "SECRET") {
		t.Errorf("error contains the token: %.200s", err)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != old {
		t.Errorf("old file not intact: %v, %d bytes", err, len(b))
	}
	if names := listDir(t, dir); strings.Join(names, ",") != "filler,token" {
		t.Errorf("directory holds %v, want filler and token only (no temporary file)", names)
	}

	// Once there is room again, writes work.
	os.Remove(filepath.Join(dir, "filler"))
	if err := Write(path, []byte(token(2)), 0o440, -1); err != nil {
		t.Fatalf("after freeing space: %v", err)
	}
}

func TestRemoveStale(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "token")
	for _, n := range []string{".token" + tmpInfix + "0123", ".token" + tmpInfix + "ffff", ".other" + tmpInfix + "1", "token", "keep"} {
		os.WriteFile(filepath.Join(dir, n), nil, 0o600)
	}
	if err := RemoveStale(path); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(listDir(t, dir), ","); got != ".other"+tmpInfix+"1,keep,token" {
		t.Errorf("left %s", got)
	}
}

// TestWrite_UnwritableDirKeepsOldFile: a directory the writer cannot
// create files in (EACCES; as root, a read-only mount: EROFS) fails the
// write and changes nothing.
func TestWrite_UnwritableDirKeepsOldFile(t *testing.T) {
	var dir string
	var want syscall.Errno
	if os.Geteuid() == 0 {
		dir, want = mountTmpfs(t, "64k"), syscall.EROFS
	} else {
		dir, want = t.TempDir(), syscall.EACCES
	}
	path := filepath.Join(dir, "token")
	if err := Write(path, []byte(token(1)), 0o440, -1); err != nil {
		t.Fatal(err)
	}
	if want == syscall.EROFS {
		if out, err := exec.Command("mount", "-o", "remount,ro", dir).CombinedOutput(); err != nil {
			sockettest.Unavailable(t, "cannot remount read-only (%v: %s)", err, bytes.TrimSpace(out))
		}
	} else {
		os.Chmod(dir, 0o500)
		t.Cleanup(func() { os.Chmod(dir, 0o700) })
	}
	err := Write(path, []byte("SECRET"+token(2)), 0o440, -1)
	if !errors.Is(err, want) {
		t.Fatalf("err = %v, want %v", err, want)
	}
	if strings.Contains(err.Error(), "SECRET") {
		t.Errorf("error contains the token: %v", err)
	}
	if b, _ := os.ReadFile(path); string(b) != token(1) {
		t.Errorf("old file changed")
	}
	if names := listDir(t, dir); strings.Join(names, ",") != "token" {
		t.Errorf("directory holds %v", names)
	}
}

// A token file whose directory is a symlink is refused: the token would
// land wherever the link points.
func TestWrite_SymlinkedDirectoryRefused(t *testing.T) {
	d := t.TempDir()
	victim := filepath.Join(d, "victim")
	os.Mkdir(victim, 0o755)
	link := filepath.Join(d, "tokens")
	if err := os.Symlink(victim, link); err != nil {
		t.Fatal(err)
	}
	if err := Write(filepath.Join(link, "aws"), []byte("header.payload.sig"), 0o440, -1); err == nil {
		t.Fatal("write through a symlinked directory accepted")
	}
	if ents, _ := os.ReadDir(victim); len(ents) != 0 {
		t.Errorf("files written into the symlink target: %v", ents)
	}
}

// TestWriteOwned_OwnerAndOnlyThatOwnerReplaced: the file gets the owner
// and group asked for, and a rewrite replaces a file that owner holds;
// a file of any other user stays refused.
func TestWriteOwned_OwnerAndOnlyThatOwnerReplaced(t *testing.T) {
	sockettest.RequireRoot(t, "giving a file to another uid needs root")
	dir := t.TempDir()
	path := filepath.Join(dir, "svid_key.pem")
	for i := range 2 {
		if err := WriteOwned(path, []byte(token(i)), 0o400, 65534, 65534); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		fi, _ := os.Stat(path)
		st := fi.Sys().(*syscall.Stat_t)
		if st.Uid != 65534 || st.Gid != 65534 || fi.Mode().Perm() != 0o400 {
			t.Errorf("write %d: %d:%d %v, want 65534:65534 0400", i, st.Uid, st.Gid, fi.Mode().Perm())
		}
		if b, _ := os.ReadFile(path); string(b) != token(i) {
			t.Errorf("write %d: content not replaced", i)
		}
	}
	other := filepath.Join(dir, "other.pem")
	os.WriteFile(other, []byte("planted"), 0o644)
	os.Chown(other, 65533, 65533)
	if err := WriteOwned(other, []byte("x"), 0o400, 65534, 65534); err == nil || !strings.Contains(err.Error(), "uid 65533") {
		t.Errorf("file of uid 65533 with owner 65534: %v, want a refusal", err)
	}
	// Without an owner, the file another uid holds is refused as before.
	if err := Write(path, []byte("x"), 0o440, -1); err == nil {
		t.Error("Write replaced a file uid 65534 owns")
	}
}
