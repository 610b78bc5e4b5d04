package tokenfile

import (
	"fmt"
	"io/fs"
	"os"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/wicket-sh/wicket/internal/safedir"
)

// Exclusive is a new file claimed by CreateExclusive for a secret that is
// not known yet (a machine token the issuer is about to mint): claiming
// the name first means a name that is already taken fails before anything
// is minted, and nothing already there is ever overwritten.
type Exclusive struct {
	d    *safedir.Dir
	f    *os.File
	fi   fs.FileInfo // the created inode, to remove nothing else
	base string
	path string
}

// CreateExclusive creates path with exactly mode (O_CREAT|O_EXCL, never
// following a symlink), in a directory opened and checked as Write opens
// it: walked from / without following any symlink, every component owned
// by root or this user and not writable by others unless root-owned and
// sticky. Whatever exists at path, a dangling symlink included, makes it
// fail. The file stays empty until Commit; Abort removes it.
func CreateExclusive(path string, mode fs.FileMode) (*Exclusive, error) {
	if mode&^fs.ModePerm != 0 {
		return nil, fmt.Errorf("token file %s: mode %#o has bits beyond permissions", path, uint32(mode))
	}
	d, base, err := openDir(path)
	if err != nil {
		return nil, err
	}
	f, err := d.OpenFile(base, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		d.Close()
		if os.IsExist(err) {
			return nil, fmt.Errorf("token file %s: already exists, refusing to overwrite it", path)
		}
		return nil, fmt.Errorf("token file %s: create: %w", path, stripPath(err))
	}
	// The umask may have narrowed the mode; set exactly what was asked.
	if err := f.Chmod(mode); err != nil {
		f.Close()
		d.Remove(base)
		d.Close()
		return nil, fmt.Errorf("token file %s: chmod: %w", path, stripPath(err))
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		d.Remove(base)
		d.Close()
		return nil, fmt.Errorf("token file %s: stat: %w", path, stripPath(err))
	}
	return &Exclusive{d: d, f: f, fi: fi, base: base, path: path}, nil
}

// Commit writes data, fsyncs the file and its directory, and closes both.
// On failure the file is removed: a partial secret is never left behind.
func (e *Exclusive) Commit(data []byte) error {
	defer e.d.Close()
	fail := func(what string, err error) error {
		e.f.Close()
		e.remove()
		return fmt.Errorf("token file %s: %s: %w", e.path, what, stripPath(err))
	}
	if _, err := e.f.Write(data); err != nil {
		return fail("write", err)
	}
	if err := e.f.Sync(); err != nil {
		return fail("fsync", err)
	}
	if err := e.f.Close(); err != nil {
		e.remove()
		return fmt.Errorf("token file %s: close: %w", e.path, stripPath(err))
	}
	if err := e.d.Sync(); err != nil {
		return fmt.Errorf("token file %s: fsync directory: %w", e.path, err)
	}
	return nil
}

// Abort removes the still empty file, when what was to fill it failed.
func (e *Exclusive) Abort() {
	e.f.Close()
	e.remove()
	e.d.Close()
}

// remove unlinks the name only while it still is the file created here.
func (e *Exclusive) remove() {
	cur, err := e.d.Lstat(e.base)
	if err != nil {
		return
	}
	d1, i1, ok1 := inode(e.fi)
	d2, i2, ok2 := inode(cur)
	if ok1 && ok2 && d1 == d2 && i1 == i2 {
		e.d.Remove(e.base)
	}
}

// inode reads the device and inode numbers from os.Stat's or
// safedir.Dir.Lstat's FileInfo.
func inode(fi fs.FileInfo) (dev, ino uint64, ok bool) {
	switch st := fi.Sys().(type) {
	case *syscall.Stat_t:
		return uint64(st.Dev), st.Ino, true
	case *unix.Stat_t:
		return uint64(st.Dev), st.Ino, true
	}
	return 0, 0, false
}
