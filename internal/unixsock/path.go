package unixsock

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// MaxPathLen is the longest socket path accepted: sun_path holds 108 bytes
// including the terminating NUL.
const MaxPathLen = 107

// ValidatePath checks the socket path itself (S-path): absolute, clean (no
// "..", no "." or doubled separators) and short enough for sun_path.
func ValidatePath(path string) error {
	switch {
	case path == "":
		return errors.New("socket path is empty")
	case !filepath.IsAbs(path):
		return fmt.Errorf("socket path %q is not absolute", path)
	case len(path) > MaxPathLen:
		return fmt.Errorf("socket path %q is %d bytes, longer than %d", path, len(path), MaxPathLen)
	case strings.ContainsRune(path, 0):
		return fmt.Errorf("socket path contains a NUL byte")
	}
	for _, elem := range strings.Split(path, "/") {
		if elem == ".." {
			return fmt.Errorf("socket path %q contains \"..\"", path)
		}
	}
	if filepath.Clean(path) != path || strings.HasSuffix(path, "/") {
		return fmt.Errorf("socket path %q is not clean (want %q)", path, filepath.Clean(path))
	}
	return nil
}

// prepareDir makes sure the socket's parent directory exists and is safe
// (S-path). A missing directory is created with dirMode and owned by this
// process. An existing one must be a real directory (not a symlink), owned by
// this process's user or root, and not writable by group or others unless it
// is root-owned and sticky (like /tmp): otherwise another user could swap the
// socket for something else between our checks and our use.
func prepareDir(dir string, dirMode fs.FileMode, gid int) error {
	fi, err := os.Lstat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		if err := createDir(dir, dirMode, gid); err != nil {
			return err
		}
		fi, err = os.Lstat(dir)
	}
	if err != nil {
		return fmt.Errorf("inspect socket directory %q: %w", dir, err)
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		return fmt.Errorf("socket directory %q is a symlink; refusing", dir)
	}
	if !fi.IsDir() {
		return fmt.Errorf("socket directory %q is not a directory", dir)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("socket directory %q: cannot read owner", dir)
	}
	euid := uint32(os.Geteuid())
	if st.Uid != euid && st.Uid != 0 {
		return fmt.Errorf("socket directory %q is owned by uid %d, not by uid %d or root", dir, st.Uid, euid)
	}
	perm := fi.Mode()
	if perm&0o022 != 0 {
		sticky := perm&fs.ModeSticky != 0
		if !(sticky && st.Uid == 0) {
			return fmt.Errorf("socket directory %q is writable by group or others (mode %04o); refusing", dir, perm.Perm())
		}
	}
	return nil
}

// createDir makes dir with mode and group. The last component is made with
// Mkdir, which fails if anything (a planted symlink) appeared since our
// Lstat, and its owner and mode are set through a descriptor opened with
// O_NOFOLLOW, never by path: a path-based chmod would follow a symlink
// swapped in meanwhile and change a directory that is not ours.
func createDir(dir string, mode fs.FileMode, gid int) error {
	if err := os.MkdirAll(filepath.Dir(dir), mode); err != nil {
		return fmt.Errorf("create socket directory %q: %w", dir, err)
	}
	if err := os.Mkdir(dir, mode); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil // whatever is there now is inspected by the caller
		}
		return fmt.Errorf("create socket directory %q: %w", dir, err)
	}
	fd, err := syscall.Open(dir, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open socket directory %q: %w", dir, err)
	}
	defer syscall.Close(fd)
	if gid >= 0 {
		if err := syscall.Fchown(fd, -1, gid); err != nil {
			return fmt.Errorf("set group of socket directory %q: %w", dir, err)
		}
	}
	// Mkdir is subject to the umask; set the exact mode we promised.
	if err := syscall.Fchmod(fd, uint32(mode.Perm())); err != nil {
		return fmt.Errorf("set mode of socket directory %q: %w", dir, err)
	}
	return nil
}
