package seal

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"

	"github.com/wicket-sh/wicket/internal/safedir"
)

// maxKeyFileSize bounds what LoadKeyFile reads; a base64 key is 44 bytes.
const maxKeyFileSize = 1 << 10

// LoadKeyFile reads a sealing key stored base64 (standard encoding) with an
// optional trailing newline. Whoever can write or swap the key file holds
// the keys to the state, so the file's directory is opened through safedir
// (no symlink anywhere in the path, no ancestor another user can change),
// and the file, opened relative to it without following a symlink, must be
// a regular file owned by this process's uid that group and others cannot
// access. The checks apply to the descriptor that is read.
func LoadKeyFile(path string) ([]byte, error) {
	d, base, err := openKeyDir(path)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	f, err := d.OpenFile(base, os.O_RDONLY, 0)
	if errors.Is(err, syscall.ELOOP) {
		return nil, fmt.Errorf("seal: key file %s is not a regular file (symlink)", path)
	}
	if err != nil {
		return nil, fmt.Errorf("seal: key file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("seal: key file %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("seal: key file %s is not a regular file (%s)", path, fi.Mode().Type())
	}
	if err := safedir.CheckOwner(path, fi, safedir.SelfOnly); err != nil {
		return nil, fmt.Errorf("seal: key file: %w", err)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("seal: key file %s is accessible by group or others (mode %#o), want 0600", path, perm)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFileSize))
	if err != nil {
		return nil, fmt.Errorf("seal: reading key file %s: %w", path, err)
	}
	defer clear(data)
	key, err := decodeKey(data)
	if err != nil {
		return nil, fmt.Errorf("seal: key file %s: %w", path, err)
	}
	return key, nil
}

// openKeyDir opens path's directory through safedir.
func openKeyDir(path string) (*safedir.Dir, string, error) {
	if !filepath.IsAbs(path) {
		return nil, "", fmt.Errorf("seal: key file %s: want an absolute path", path)
	}
	dir, base := filepath.Split(filepath.Clean(path))
	d, err := safedir.Open(filepath.Clean(dir), safedir.Options{})
	if err != nil {
		return nil, "", fmt.Errorf("seal: key file %s: directory refused: %w", path, err)
	}
	return d, base, nil
}

// KeyFromEnv reads a sealing key from the environment variable name, in the
// same base64 format as a key file. The caller should unset the variable
// before starting any child process.
func KeyFromEnv(name string) ([]byte, error) {
	v, ok := os.LookupEnv(name)
	if !ok {
		return nil, fmt.Errorf("seal: environment variable %s is not set", name)
	}
	data := []byte(v)
	defer clear(data)
	key, err := decodeKey(data)
	if err != nil {
		return nil, fmt.Errorf("seal: environment variable %s: %w", name, err)
	}
	return key, nil
}

// GenerateKeyFile writes a new random key to path with mode 0600, in a
// directory opened through safedir like LoadKeyFile's. It never
// overwrites: if path exists (even as a dangling symlink) it fails with an
// error matching os.ErrExist.
func GenerateKeyFile(path string) error {
	key := make([]byte, KeySize)
	if _, err := rand.Read(key); err != nil {
		return fmt.Errorf("seal: generating key: %w", err)
	}
	enc := []byte(base64.StdEncoding.EncodeToString(key) + "\n")
	defer clear(key)
	defer clear(enc)

	d, base, err := openKeyDir(path)
	if err != nil {
		return err
	}
	defer d.Close()
	// O_EXCL (and the O_NOFOLLOW OpenFile adds) refuses whatever is
	// planted at the name, a dangling symlink included.
	f, err := d.OpenFile(base, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("seal: creating key file: %w", err)
	}
	_, err = f.Write(enc)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		// Don't leave a truncated key behind for the next start to load.
		d.Remove(base)
		return fmt.Errorf("seal: writing key file %s: %w", path, err)
	}
	// Sync the directory so the new entry, not only its contents, survives
	// a crash.
	if err := d.Sync(); err != nil {
		return fmt.Errorf("seal: syncing directory of key file %s: %w", path, err)
	}
	return nil
}

// decodeKey decodes a base64 key. Its errors never include the input: a
// malformed key is still mostly key.
func decodeKey(data []byte) ([]byte, error) {
	// The decoder skips '\r' and '\n', which covers the trailing newline.
	key := make([]byte, base64.StdEncoding.DecodedLen(len(data)))
	n, err := base64.StdEncoding.Decode(key, data)
	if err != nil {
		clear(key)
		return nil, errors.New("key is not valid standard base64")
	}
	if n != KeySize {
		clear(key)
		return nil, fmt.Errorf("key must decode to %d bytes, got %d", KeySize, n)
	}
	return key[:n], nil
}
