package agent

import (
	"os"
	"strings"
	"testing"

	"github.com/wicket-sh/wicket/internal/agent/agenttest"
	"github.com/wicket-sh/wicket/internal/sockettest"
)

// TestMachineTokenFile_ForeignOwnerRefused: a machine token file owned by
// a uid other than root or the agent's own is refused even with mode 0600:
// whoever owns it chose the machine the agent speaks for. It is not
// unlinked either.
func TestMachineTokenFile_ForeignOwnerRefused(t *testing.T) {
	sockettest.RequireRoot(t)
	tok := agenttest.New(t).MachineToken(t)
	p := writeTokenFile(t, tok, 0o600)
	if err := os.Chown(p, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	_, err := MachineTokenFromFile(p, true)
	if err == nil {
		t.Fatal("machine token file owned by uid 65534 accepted")
	}
	if !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "uid 65534") {
		t.Errorf("err = %v, want it to name %s and uid 65534", err, p)
	}
	if strings.Contains(err.Error(), tok[4:24]) {
		t.Errorf("error quotes the token")
	}
	if _, err := os.Lstat(p); err != nil {
		t.Errorf("refused file was unlinked: %v", err)
	}
}
