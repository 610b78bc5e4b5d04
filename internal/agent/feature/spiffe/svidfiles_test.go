package spiffe

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/wicket-sh/wicket/internal/sockettest"
)

func TestMain(m *testing.M) { sockettest.Main(m) }

// readPID aims the signal only where the pid file's writer could aim it
// themselves: no symlink on the path, no pid 1, and a pid file another
// user wrote names only that user's processes.
func TestReadPID_WhoMayAimTheSignal(t *testing.T) {
	sockettest.RequireRoot(t, "pid files and processes of uid 65534")
	dir := t.TempDir()
	theirs := exec.Command("sleep", "30")
	theirs.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}}
	if err := theirs.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { theirs.Process.Kill(); theirs.Wait() }()
	self := strconv.Itoa(os.Getpid())
	write := func(name, content string, uid int) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		os.Chown(p, uid, uid)
		return p
	}
	if p, err := readPID(write("root.pid", self, 0)); err != nil || strconv.Itoa(p.pid) != self {
		t.Errorf("root's pid file: %d, %v", p.pid, err)
	} else {
		p.close()
	}
	if p, err := readPID(write("their-own.pid", strconv.Itoa(theirs.Process.Pid), 65534)); err != nil || p.pid != theirs.Process.Pid {
		t.Errorf("uid 65534's pid file naming its own process: %d, %v", p.pid, err)
	} else {
		// The held process gets the signal.
		if err := p.signal(syscall.SIGTERM); err != nil {
			t.Errorf("signal through the pidfd: %v", err)
		}
		p.close()
		if err := theirs.Wait(); err == nil {
			t.Error("their process did not get the signal")
		}
	}
	// A directory the workload's uid may write: a root-owned pid file
	// there (a hard link to a root daemon's, say) aims at nothing.
	theirDir := filepath.Join(dir, "theirs")
	os.Mkdir(theirDir, 0o755)
	os.Chown(theirDir, 65534, 65534)
	rootInTheirs := filepath.Join(theirDir, "daemon.pid")
	os.WriteFile(rootInTheirs, []byte(self+"\n"), 0o644)
	link := filepath.Join(dir, "link.pid")
	os.Symlink(filepath.Join(dir, "root.pid"), link)
	linkedDir := filepath.Join(t.TempDir(), "d")
	os.Symlink(dir, linkedDir)
	for name, tc := range map[string]struct{ path, want string }{
		"foreign naming root":     {write("forged.pid", self, 65534), "pid file of uid 65534 names pid"},
		"pid 1":                   {write("one.pid", "1", 0), "above 1"},
		"not a number":            {write("junk.pid", "12abc", 0), "above 1"},
		"symlink":                 {link, "symlink"},
		"through a symlinked dir": {filepath.Join(linkedDir, "root.pid"), "symlink"},
		"missing":                 {filepath.Join(dir, "none.pid"), "missing"},
		"root's in their dir":     {rootInTheirs, "directory another user can change"},
		"relative":                {"root.pid", "absolute"},
	} {
		if _, err := readPID(tc.path); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want a refusal with %q", name, err, tc.want)
		}
	}
}
