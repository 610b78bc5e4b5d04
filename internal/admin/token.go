package admin

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"

	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/safedir"
)

// maxTokenFile bounds what is read from an admin token file.
const maxTokenFile = 4096

// LoadToken reads the optional admin token named by c (S-token). A token
// file must be a regular file (not a symlink) owned by root or the
// service's own uid and not readable by group or others, and a token must
// be at least 16 bytes: a short shared secret is a password, not a token.
// The checks apply to the descriptor that is read, not to the path.
func LoadToken(c config.Admin) ([]byte, error) {
	switch {
	case c.TokenFile != "":
		return loadTokenFile(c.TokenFile)
	case c.TokenEnv != "":
		v := strings.TrimSpace(os.Getenv(c.TokenEnv))
		if len(v) < 16 {
			return nil, fmt.Errorf("admin token env %s is unset or shorter than 16 bytes", c.TokenEnv)
		}
		return []byte(v), nil
	}
	return nil, nil
}

func loadTokenFile(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, fmt.Errorf("admin token file %q is a symlink", path)
		}
		return nil, fmt.Errorf("admin token: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("admin token file %q: %w", path, err)
	}
	switch {
	case !fi.Mode().IsRegular():
		return nil, fmt.Errorf("admin token file %q is not a regular file", path)
	case fi.Mode().Perm()&0o077 != 0:
		return nil, fmt.Errorf("admin token file %q is readable by group or others", path)
	}
	// Whoever owns the file chose the token (and could read it).
	if err := safedir.CheckOwner(path, fi, safedir.SelfOrRoot); err != nil {
		return nil, fmt.Errorf("admin token file: %w", err)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxTokenFile+1))
	if err != nil {
		return nil, fmt.Errorf("read admin token file %q: %w", path, err)
	}
	defer clear(data)
	if len(data) > maxTokenFile {
		return nil, fmt.Errorf("admin token file %q is larger than %d bytes", path, maxTokenFile)
	}
	tok := []byte(strings.TrimSpace(string(data)))
	if len(tok) < 16 {
		return nil, fmt.Errorf("admin token in %q is shorter than 16 bytes", path)
	}
	return tok, nil
}
