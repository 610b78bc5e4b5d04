package admin

import (
	"fmt"
	"os"
	"strings"

	"github.com/wicket-sh/wicket/internal/config"
)

// LoadToken reads the optional admin token named by c (S-token). A token
// file must not be readable by group or others, and a token must be at
// least 16 bytes: a short shared secret is a password, not a token.
func LoadToken(c config.Admin) ([]byte, error) {
	switch {
	case c.TokenFile != "":
		data, err := config.ReadFile(c.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("admin token: %w", err)
		}
		fi, err := os.Stat(c.TokenFile)
		if err == nil && fi.Mode().Perm()&0o077 != 0 {
			return nil, fmt.Errorf("admin token file %q is readable by group or others", c.TokenFile)
		}
		tok := []byte(strings.TrimSpace(string(data)))
		if len(tok) < 16 {
			return nil, fmt.Errorf("admin token in %q is shorter than 16 bytes", c.TokenFile)
		}
		return tok, nil
	case c.TokenEnv != "":
		v := strings.TrimSpace(os.Getenv(c.TokenEnv))
		if len(v) < 16 {
			return nil, fmt.Errorf("admin token env %s is unset or shorter than 16 bytes", c.TokenEnv)
		}
		return []byte(v), nil
	}
	return nil, nil
}
