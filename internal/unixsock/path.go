package unixsock

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"

	"github.com/wicket-sh/wicket/internal/safedir"
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
// (S-path), through safedir: the path is walked from / without following
// any symlink, and the directory and every ancestor must be owned by this
// process's user or root and not writable by group or others unless
// root-owned and sticky (like /tmp). Otherwise another user could rename
// a component away and put one of its own in its place between our checks
// and the bind. A missing directory (and missing ancestors) is created
// with dirMode, the directory itself with group gid (unless -1), its mode
// and group set through its descriptor, never by path.
func prepareDir(dir string, dirMode fs.FileMode, gid int) error {
	d, err := safedir.MkdirAll(dir, dirMode, gid, safedir.SelfOrRoot)
	if err != nil {
		return fmt.Errorf("socket directory %q refused: %w", dir, err)
	}
	return d.Close()
}
