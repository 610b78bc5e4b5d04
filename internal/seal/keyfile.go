package seal

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// maxKeyFileSize bounds what LoadKeyFile reads; a base64 key is 44 bytes.
const maxKeyFileSize = 1 << 10

// LoadKeyFile reads a sealing key stored base64 (standard encoding) with an
// optional trailing newline. It refuses anything but a regular file (a
// symlink could point the issuer at a file an attacker controls) and a file
// that group or others can access (the key must stay with its owner).
func LoadKeyFile(path string) ([]byte, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, fmt.Errorf("seal: key file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("seal: key file %s is not a regular file (%s)", path, fi.Mode().Type())
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("seal: key file: %w", err)
	}
	defer f.Close()
	// Check what was opened, not only what Lstat saw: the path could have
	// been swapped for a symlink in between.
	ofi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("seal: key file %s: %w", path, err)
	}
	if !os.SameFile(fi, ofi) {
		return nil, fmt.Errorf("seal: key file %s changed while being opened", path)
	}
	if perm := ofi.Mode().Perm(); perm&0o077 != 0 {
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

// GenerateKeyFile writes a new random key to path with mode 0600. It never
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

	// O_EXCL also refuses to follow a symlink planted at path.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
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
		os.Remove(path)
		return fmt.Errorf("seal: writing key file %s: %w", path, err)
	}
	// Sync the directory so the new entry, not only its contents, survives
	// a crash.
	if err := syncDir(filepath.Dir(path)); err != nil {
		return fmt.Errorf("seal: syncing directory of key file %s: %w", path, err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
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
