package admin

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/sockettest"
)

// TestAdminTokenFile_ForeignOwnerRefused (S-token): a token file owned by
// a uid other than root or the service's own is refused even with mode
// 0600: its owner chose the token, and could have read it.
func TestAdminTokenFile_ForeignOwnerRefused(t *testing.T) {
	sockettest.RequireRoot(t)
	p := filepath.Join(t.TempDir(), "admin.token")
	if err := os.WriteFile(p, []byte("SECRET-0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadToken(config.Admin{TokenFile: p}); err != nil {
		t.Fatalf("own file refused: %v", err)
	}
	if err := os.Chown(p, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	_, err := LoadToken(config.Admin{TokenFile: p})
	if err == nil {
		t.Fatal("admin token file owned by uid 65534 accepted")
	}
	if !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "uid 65534") {
		t.Errorf("err = %v, want it to name %s and uid 65534", err, p)
	}
	if strings.Contains(err.Error(), "SECRET") {
		t.Errorf("error contains the token: %v", err)
	}
}
