// Package tokenfile keeps a token file fresh for tools that read a token
// from disk (AWS_WEB_IDENTITY_TOKEN_FILE, AZURE_FEDERATED_TOKEN_FILE, GCP
// file-sourced credentials): every write is an atomic replace, so a reader
// sees the old token or the new one, never a partial one, and a failed
// write leaves the old file in place.
package tokenfile

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/wicket-sh/wicket/internal/safedir"
)

// tmpInfix marks our temporary files: ".<base>.wicket-tmp-<random>".
const tmpInfix = ".wicket-tmp-"

// Write atomically replaces the file at path with data, with the given
// permission bits and group (gid -1 keeps the writer's group).
//
// The directory is opened once (safedir: walked from / without following
// any symlink, every component owned by root or this user and not writable
// by others unless root-owned and sticky), and everything after happens
// relative to that descriptor, so swapping the directory or an ancestor for
// a symlink cannot redirect the write. The data goes to a new temporary
// file in that directory (created exclusively, mode 0600 while it is
// written), is fsynced, gets its final mode and group, and is renamed over
// path; the directory is fsynced last. On any failure the previous file is
// left as it was and the temporary file is removed. A path that is a
// symlink, a directory, any other non-regular file or a file another user
// owns is refused. Errors never contain data.
func Write(path string, data []byte, mode fs.FileMode, gid int) error {
	return WriteOwned(path, data, mode, -1, gid)
}

// WriteOwned is Write that also gives the file to owner uid (-1 keeps the
// writer's): the new file is chowned before the rename, and an existing
// file at path may be owned by uid too (it is the one this writer gave
// it), besides this user and root. The directory's rules are Write's: the
// owner gets a file in it, never a say over the directory.
func WriteOwned(path string, data []byte, mode fs.FileMode, uid, gid int) error {
	if mode&^fs.ModePerm != 0 {
		return fmt.Errorf("token file %s: mode %#o has bits beyond permissions", path, uint32(mode))
	}
	d, base, err := openDir(path)
	if err != nil {
		return err
	}
	defer d.Close()
	if testHookDirChecked != nil {
		testHookDirChecked()
	}
	if err := checkTarget(d, path, base, uid); err != nil {
		return err
	}
	var rnd [8]byte
	rand.Read(rnd[:])
	tmp := "." + base + tmpInfix + hex.EncodeToString(rnd[:])

	// O_EXCL (and the O_NOFOLLOW OpenFile adds) refuse whatever was planted
	// at the temporary name.
	f, err := d.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("token file %s: create temporary file: %w", path, stripPath(err))
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
			d.Remove(tmp)
		}
	}()
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("token file %s: write: %w", path, stripPath(err))
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("token file %s: fsync: %w", path, stripPath(err))
	}
	// Owner and group before mode, so the final mode is exactly what was
	// asked for (chown clears set-id bits, and there are none).
	if uid >= 0 || gid >= 0 {
		if err := f.Chown(uid, gid); err != nil {
			return fmt.Errorf("token file %s: chown to %d:%d: %w", path, uid, gid, stripPath(err))
		}
	}
	if err := f.Chmod(mode); err != nil {
		return fmt.Errorf("token file %s: chmod: %w", path, stripPath(err))
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("token file %s: close: %w", path, stripPath(err))
	}
	// Check the target again right before the rename: in a shared sticky
	// directory another user may have claimed the name meanwhile (rename
	// replaces a symlink itself rather than writing through it anyway).
	if err := checkTarget(d, path, base, uid); err != nil {
		return err
	}
	if err := d.Rename(tmp, base); err != nil {
		return fmt.Errorf("token file %s: rename: %w", path, stripPath(err))
	}
	ok = true
	if err := d.Sync(); err != nil {
		return fmt.Errorf("token file %s: fsync directory: %w", path, err)
	}
	return nil
}

// openDir opens path's directory through safedir and returns it with the
// file's base name.
func openDir(path string) (*safedir.Dir, string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, "", fmt.Errorf("token file %s: %w", path, err)
	}
	dir, base := filepath.Split(abs)
	if base == "" {
		return nil, "", fmt.Errorf("token file %s: no file name", path)
	}
	d, err := safedir.Open(filepath.Clean(dir), safedir.Options{})
	if err != nil {
		return nil, "", fmt.Errorf("token file %s: directory refused: %w", path, err)
	}
	return d, base, nil
}

// checkTarget refuses to replace anything but a regular file owned by this
// user or root, or by owner when owner >= 0.
func checkTarget(d *safedir.Dir, path, base string, owner int) error {
	fi, err := d.Lstat(base)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("token file %s: %w", path, stripPath(err))
	case fi.Mode()&fs.ModeSymlink != 0:
		return fmt.Errorf("token file %s: is a symlink, refusing to replace it", path)
	case fi.IsDir():
		return fmt.Errorf("token file %s: is a directory", path)
	case !fi.Mode().IsRegular():
		return fmt.Errorf("token file %s: not a regular file (%s)", path, fi.Mode().Type())
	}
	if uid, ok := safedir.UID(fi); ok && owner >= 0 && uid == uint32(owner) {
		return nil
	}
	if err := safedir.CheckOwner(path, fi, safedir.SelfOrRoot); err != nil {
		return fmt.Errorf("token file: refusing to replace it: %w", err)
	}
	return nil
}

// stripPath drops the *PathError wrapper (whose path is the temporary
// file's name) so messages name the token file once.
func stripPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	var le *os.LinkError
	if errors.As(err, &le) {
		return le.Err
	}
	return err
}

// RemoveStale removes temporary files a crashed writer left next to path.
// They hold a token, mode 0600, so only the writer's user could read them.
// Only regular files this user owns are removed, through the directory's
// descriptor: in a shared directory another user's files are left alone.
func RemoveStale(path string) error {
	d, base, err := openDir(path)
	if err != nil {
		return err
	}
	defer d.Close()
	names, err := d.Names()
	if err != nil {
		return err
	}
	prefix := "." + base + tmpInfix
	euid := uint32(os.Geteuid())
	var errs []error
	for _, name := range names {
		if !strings.HasPrefix(name, prefix) {
			continue
		}
		fi, err := d.Lstat(name)
		if err != nil || !fi.Mode().IsRegular() {
			continue
		}
		if uid, ok := safedir.UID(fi); !ok || uid != euid {
			continue
		}
		if err := d.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// testHookDirChecked runs once the directory has been opened and checked,
// before anything is created: a test swaps the directory there.
var testHookDirChecked func()
