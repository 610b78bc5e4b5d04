// Package safedir opens directories so that no other user can redirect
// what a service later does in them, and states the ownership rules for
// the files a service trusts.
//
// Open walks a path from "/" one component at a time with openat and
// O_NOFOLLOW, so no symlink is followed anywhere in the path, and checks
// every directory on the way: it must be owned by root or by this
// process's effective uid, and must not be writable by group or others
// unless it is root-owned and sticky (like /tmp, where nobody can rename
// or remove another user's entries). Such a chain cannot be changed by any
// other non-root user, so the path keeps naming the directory that was
// checked; the returned Dir also pins it: files are created, renamed,
// removed and synced relative to its descriptor, never by path.
package safedir

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ErrUntrusted is wrapped by every refusal of a path because of its type,
// owner or mode, so callers can tell it from I/O errors.
var ErrUntrusted = errors.New("untrusted path")

// Owners says who may own the final directory of a walk or a checked file.
type Owners int

const (
	// SelfOrRoot admits this process's effective uid and root.
	SelfOrRoot Owners = iota
	// SelfOnly admits this process's effective uid alone (root only when
	// the process runs as root).
	SelfOnly
)

// Options tunes Open and MkdirAll. The zero value is SelfOrRoot for the
// final directory, nothing created.
type Options struct {
	// Owner is the rule for the final directory; ancestors always follow
	// SelfOrRoot.
	Owner Owners
	// Create makes missing components: each with Mode (exactly, whatever
	// the umask), and the final one also with group GID when GID >= 0.
	Create bool
	Mode   fs.FileMode
	GID    int
}

// Dir is a directory opened by Open. Its methods take single names, never
// paths, and never follow a symlink at that name.
type Dir struct {
	fd   int
	path string
}

// Open opens the directory at path, which must be absolute and clean,
// after checking every component as the package comment describes.
func Open(path string, opts Options) (*Dir, error) {
	if !filepath.IsAbs(path) || filepath.Clean(path) != path {
		return nil, fmt.Errorf("%s: %w: want an absolute, clean path", path, ErrUntrusted)
	}
	euid := uint32(os.Geteuid())
	fd, err := unix.Open("/", walkFlags|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /: %w", err)
	}
	cur := "/"
	names := strings.Split(strings.TrimPrefix(path, "/"), "/")
	if path == "/" {
		names = nil
	}
	for i := 0; ; i++ {
		last := i == len(names)
		owner := SelfOrRoot
		if last {
			owner = opts.Owner
		}
		if err := checkDirFD(fd, cur, euid, owner); err != nil {
			unix.Close(fd)
			return nil, err
		}
		if last {
			return &Dir{fd: fd, path: cur}, nil
		}
		next, err := openChild(fd, cur, names[i], i == len(names)-1, opts)
		unix.Close(fd)
		if err != nil {
			return nil, err
		}
		fd, cur = next, filepath.Join(cur, names[i])
	}
}

// MkdirAll is Open with Create set: missing directories are made with
// mode (and the final one with group gid, unless gid is -1).
func MkdirAll(path string, mode fs.FileMode, gid int, owner Owners) (*Dir, error) {
	return Open(path, Options{Owner: owner, Create: true, Mode: mode, GID: gid})
}

// openChild opens name under parent without following a symlink, creating
// it first when asked to.
func openChild(parent int, parentPath, name string, final bool, opts Options) (int, error) {
	path := filepath.Join(parentPath, name)
	const flags = unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
	fd, err := unix.Openat(parent, name, walkFlags|flags, 0)
	if errors.Is(err, unix.ENOENT) && opts.Create {
		// mkdirat fails if anything appeared at the name meanwhile; we
		// then open (and check) whatever is there instead.
		created := false
		if err := unix.Mkdirat(parent, name, uint32(opts.Mode.Perm())); err == nil {
			created = true
		} else if !errors.Is(err, unix.EEXIST) {
			return -1, fmt.Errorf("create directory %s: %w", path, err)
		}
		// A directory we made gets its mode and group through a real
		// descriptor (fchmod refuses an O_PATH one).
		open := walkFlags
		if created {
			open = unix.O_RDONLY
		}
		fd, err = unix.Openat(parent, name, open|flags, 0)
		if err == nil && created {
			if err := setUp(fd, path, opts, final); err != nil {
				unix.Close(fd)
				return -1, err
			}
		}
	}
	if err == nil {
		return fd, nil
	}
	if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
		var st unix.Stat_t
		if unix.Fstatat(parent, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil {
			if st.Mode&unix.S_IFMT == unix.S_IFLNK {
				return -1, fmt.Errorf("%s is a symlink; refusing to follow it (%w)", path, ErrUntrusted)
			}
			return -1, fmt.Errorf("%s is not a directory (%w)", path, ErrUntrusted)
		}
	}
	return -1, fmt.Errorf("open directory %s: %w", path, err)
}

// setUp gives a directory we just created its exact mode (mkdir is subject
// to the umask) and, for the final one, its group, through the descriptor.
func setUp(fd int, path string, opts Options, final bool) error {
	if final && opts.GID >= 0 {
		if err := unix.Fchown(fd, -1, opts.GID); err != nil {
			return fmt.Errorf("set group of directory %s: %w", path, err)
		}
	}
	if err := unix.Fchmod(fd, uint32(opts.Mode.Perm())); err != nil {
		return fmt.Errorf("set mode of directory %s: %w", path, err)
	}
	return nil
}

func checkDirFD(fd int, path string, euid uint32, owner Owners) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("inspect directory %s: %w", path, err)
	}
	if err := checkOwner(path, st.Uid, euid, owner); err != nil {
		return err
	}
	if st.Mode&0o022 != 0 && !(st.Mode&unix.S_ISVTX != 0 && st.Uid == 0) {
		return fmt.Errorf("%s is writable by group or others (mode %04o) and not a root-owned sticky directory; refusing (%w)",
			path, st.Mode&0o7777, ErrUntrusted)
	}
	return nil
}

func checkOwner(path string, uid, euid uint32, owner Owners) error {
	switch {
	case uid == euid:
		return nil
	case uid == 0 && owner == SelfOrRoot:
		return nil
	case owner == SelfOnly:
		return fmt.Errorf("%s is owned by uid %d, not by this service's uid %d (%w)", path, uid, euid, ErrUntrusted)
	default:
		return fmt.Errorf("%s is owned by uid %d, not by this service's uid %d or root (%w)", path, uid, euid, ErrUntrusted)
	}
}

// CheckOwner refuses fi (the result of a stat of path, ideally of an open
// descriptor) unless its owner fits owner: a file someone else owns holds
// what that user chose, and that user may have read it.
func CheckOwner(path string, fi fs.FileInfo, owner Owners) error {
	uid, ok := UID(fi)
	if !ok {
		return fmt.Errorf("%s: cannot read its owner (%w)", path, ErrUntrusted)
	}
	return checkOwner(path, uid, uint32(os.Geteuid()), owner)
}

// UID returns the owner recorded in fi, from os.Stat and friends or from
// Dir.Lstat.
func UID(fi fs.FileInfo) (uint32, bool) {
	switch st := fi.Sys().(type) {
	case *syscall.Stat_t:
		return st.Uid, true
	case *unix.Stat_t:
		return st.Uid, true
	}
	return 0, false
}

// Path is the directory's path as it was opened.
func (d *Dir) Path() string { return d.path }

// Close releases the descriptor.
func (d *Dir) Close() error { return unix.Close(d.fd) }

// Sync flushes the directory's entries (after a create or rename).
func (d *Dir) Sync() error {
	f, err := d.reopen()
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// Stat describes the directory itself.
func (d *Dir) Stat() (fs.FileInfo, error) {
	var st unix.Stat_t
	if err := unix.Fstat(d.fd, &st); err != nil {
		return nil, &fs.PathError{Op: "stat", Path: d.path, Err: err}
	}
	return newFileInfo(filepath.Base(d.path), &st), nil
}

// OpenFile opens name in the directory with flag (O_NOFOLLOW and
// O_CLOEXEC are always added) and, when creating, perm.
func (d *Dir) OpenFile(name string, flag int, perm fs.FileMode) (*os.File, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	fd, err := unix.Openat(d.fd, name, flag|unix.O_NOFOLLOW|unix.O_CLOEXEC, uint32(perm.Perm()))
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: filepath.Join(d.path, name), Err: err}
	}
	return os.NewFile(uintptr(fd), filepath.Join(d.path, name)), nil
}

// Lstat describes name without following a symlink.
func (d *Dir) Lstat(name string) (fs.FileInfo, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Fstatat(d.fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return nil, &fs.PathError{Op: "lstat", Path: filepath.Join(d.path, name), Err: err}
	}
	return newFileInfo(name, &st), nil
}

// Rename renames oldName to newName, both in the directory.
func (d *Dir) Rename(oldName, newName string) error {
	if err := checkName(oldName); err != nil {
		return err
	}
	if err := checkName(newName); err != nil {
		return err
	}
	if err := unix.Renameat(d.fd, oldName, d.fd, newName); err != nil {
		return &os.LinkError{Op: "rename", Old: filepath.Join(d.path, oldName), New: filepath.Join(d.path, newName), Err: err}
	}
	return nil
}

// Remove unlinks name (not a directory).
func (d *Dir) Remove(name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	if err := unix.Unlinkat(d.fd, name, 0); err != nil {
		return &fs.PathError{Op: "remove", Path: filepath.Join(d.path, name), Err: err}
	}
	return nil
}

// Names lists the directory's entries.
func (d *Dir) Names() ([]string, error) {
	f, err := d.reopen()
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
}

// reopen returns a readable descriptor for the directory itself (d's may
// be an O_PATH one), with its own offset.
func (d *Dir) reopen() (*os.File, error) {
	fd, err := unix.Openat(d.fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: d.path, Err: err}
	}
	return os.NewFile(uintptr(fd), d.path), nil
}

// checkName refuses anything but one plain directory entry name.
func checkName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return fmt.Errorf("%q is not a plain file name (%w)", name, ErrUntrusted)
	}
	return nil
}

// fileInfo is what Dir.Lstat reports. Sys is the *unix.Stat_t; ModTime is
// not filled in (nothing here needs it).
type fileInfo struct {
	name string
	st   unix.Stat_t
}

func newFileInfo(name string, st *unix.Stat_t) fs.FileInfo { return &fileInfo{name: name, st: *st} }

func (fi *fileInfo) Name() string       { return fi.name }
func (fi *fileInfo) Size() int64        { return fi.st.Size }
func (fi *fileInfo) ModTime() time.Time { return time.Time{} }
func (fi *fileInfo) IsDir() bool        { return fi.Mode().IsDir() }
func (fi *fileInfo) Sys() any           { return &fi.st }

func (fi *fileInfo) Mode() fs.FileMode {
	m := uint32(fi.st.Mode)
	mode := fs.FileMode(m & 0o777)
	switch m & unix.S_IFMT {
	case unix.S_IFDIR:
		mode |= fs.ModeDir
	case unix.S_IFLNK:
		mode |= fs.ModeSymlink
	case unix.S_IFIFO:
		mode |= fs.ModeNamedPipe
	case unix.S_IFSOCK:
		mode |= fs.ModeSocket
	case unix.S_IFCHR:
		mode |= fs.ModeDevice | fs.ModeCharDevice
	case unix.S_IFBLK:
		mode |= fs.ModeDevice
	}
	if m&unix.S_ISUID != 0 {
		mode |= fs.ModeSetuid
	}
	if m&unix.S_ISGID != 0 {
		mode |= fs.ModeSetgid
	}
	if m&unix.S_ISVTX != 0 {
		mode |= fs.ModeSticky
	}
	return mode
}
