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
	"syscall"
)

// tmpInfix marks our temporary files: ".<base>.wicket-tmp-<random>".
const tmpInfix = ".wicket-tmp-"

// Write atomically replaces the file at path with data, with the given
// permission bits and group (gid -1 keeps the writer's group).
//
// The data goes to a new temporary file in the same directory (created
// exclusively, mode 0600 while it is written), is fsynced, gets its final
// mode and group, and is renamed over path; the directory is fsynced last.
// On any failure the previous file is left as it was and the temporary file
// is removed. A path that is a symlink, a directory or any other non-regular
// file is refused. Errors never contain data.
func Write(path string, data []byte, mode fs.FileMode, gid int) error {
	if mode&^fs.ModePerm != 0 {
		return fmt.Errorf("token file %s: mode %#o has bits beyond permissions", path, uint32(mode))
	}
	if err := checkTarget(path); err != nil {
		return err
	}
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	var rnd [8]byte
	rand.Read(rnd[:])
	tmp := filepath.Join(dir, "."+base+tmpInfix+hex.EncodeToString(rnd[:]))

	// O_EXCL also refuses to follow a symlink planted at the temp name.
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("token file %s: create temporary file: %w", path, stripPath(err))
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("token file %s: write: %w", path, stripPath(err))
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("token file %s: fsync: %w", path, stripPath(err))
	}
	// Group before mode, so the final mode is exactly what was asked for.
	if gid >= 0 {
		if err := f.Chown(-1, gid); err != nil {
			return fmt.Errorf("token file %s: chown to group %d: %w", path, gid, stripPath(err))
		}
	}
	if err := f.Chmod(mode); err != nil {
		return fmt.Errorf("token file %s: chmod: %w", path, stripPath(err))
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("token file %s: close: %w", path, stripPath(err))
	}
	// Check again right before the rename: the window is small, and rename
	// replaces a symlink itself rather than writing through it anyway.
	if err := checkTarget(path); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("token file %s: rename: %w", path, stripPath(err))
	}
	ok = true
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("token file %s: fsync directory: %w", path, err)
	}
	return nil
}

// checkTarget refuses to replace anything but a regular file.
func checkTarget(path string) error {
	// The directory must be a real one: writing through a symlinked
	// directory would put the token (and a rename) wherever it points.
	if di, err := os.Lstat(filepath.Dir(path)); err == nil && (di.Mode()&fs.ModeSymlink != 0 || !di.IsDir()) {
		return fmt.Errorf("token file %s: its directory is a symlink or not a directory, refusing", path)
	}
	fi, err := os.Lstat(path)
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
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return stripPath(err)
	}
	defer d.Close()
	return stripPath(d.Sync())
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
func RemoveStale(path string) error {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	prefix := "." + base + tmpInfix
	var errs []error
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), prefix) || !e.Type().IsRegular() {
			continue
		}
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
