package spiffetest

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wicket-sh/wicket/internal/sockettest"
)

// spireBin returns the path of a SPIRE v1.13.3 binary from
// WICKET_SPIRE_BIN_DIR (.ci/spire.sh builds them); without it the test
// skips, or fails when CI is set.
func spireBin(t *testing.T, name string) string {
	t.Helper()
	dir := os.Getenv("WICKET_SPIRE_BIN_DIR")
	if dir == "" {
		sockettest.Unavailable(t, "WICKET_SPIRE_BIN_DIR is not set (bash .ci/spire.sh builds SPIRE v1.13.3 and prints the directory)")
	}
	p := filepath.Join(dir, name)
	if _, err := os.Stat(p); err != nil {
		sockettest.Unavailable(t, "%s: %v", p, err)
	}
	return p
}

func runSPIRE(t *testing.T, bin string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	return string(out), err
}

// SPIRE's own CLI, an unmodified SPIFFE program, gets an X.509-SVID and a
// JWT-SVID from wicket's Workload API and validates the JWT-SVID there.
func TestSPIRECLI_FetchAndValidate(t *testing.T) {
	bin := spireBin(t, "spire-agent")
	e := setup(t)
	out, err := runSPIRE(t, bin, "api", "fetch", "x509", "-socketPath", e.sock, "-output", "json")
	if err != nil {
		t.Fatalf("spire-agent api fetch x509: %v\n%s", err, out)
	}
	if !strings.Contains(out, machineID) {
		t.Fatalf("fetch x509 output does not name %s:\n%s", machineID, out)
	}
	out, err = runSPIRE(t, bin, "api", "fetch", "jwt", "-socketPath", e.sock, "-audience", "db", "-output", "json")
	if err != nil {
		t.Fatalf("spire-agent api fetch jwt: %v\n%s", err, out)
	}
	var fetched []struct {
		SVIDs []struct {
			SPIFFEID string `json:"spiffe_id"`
			SVID     string `json:"svid"`
		} `json:"svids"`
	}
	if err := json.Unmarshal([]byte(out), &fetched); err != nil || len(fetched) == 0 || len(fetched[0].SVIDs) != 1 {
		t.Fatalf("fetch jwt output %q: %v", out, err)
	}
	sv := fetched[0].SVIDs[0]
	if sv.SPIFFEID != machineID {
		t.Fatalf("jwt svid for %s, want %s", sv.SPIFFEID, machineID)
	}
	out, err = runSPIRE(t, bin, "api", "validate", "jwt", "-socketPath", e.sock, "-audience", "db", "-svid", sv.SVID)
	if err != nil || !strings.Contains(out, "SVID is valid") {
		t.Fatalf("spire-agent api validate jwt: %v\n%s", err, out)
	}
	if out, err := runSPIRE(t, bin, "api", "validate", "jwt", "-socketPath", e.sock, "-audience", "other", "-svid", sv.SVID); err == nil {
		t.Fatalf("validated for an audience it was not issued for:\n%s", out)
	}
}
