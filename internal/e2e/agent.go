package e2e

import (
	"context"
	"fmt"
	"github.com/wicket-sh/wicket/internal/sockettest"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/wicket-sh/wicket/internal/agent"
)

// Agent is a real agent running in-process against an issuer.
type Agent struct {
	*agent.Agent
	APISocket, AdminSocket string
	Dir                    string // holds the sockets and the config
	logs                   *sockettest.Buffer
}

// StartAgent runs an agent whose [issuer] is issuerURL, holding
// machineToken, with extra TOML appended to its config right after the
// issuer's url (token files, [aws], a policy...), until the test ends. Its log is printed if the
// test fails.
func StartAgent(t testing.TB, issuerURL, machineToken, extra string) *Agent {
	t.Helper()
	return StartAgentWith(t, issuerURL, machineToken, extra, nil)
}

// StartAgentWith is StartAgent with opt adjusting the agent's Options
// (its clock, say); nil changes nothing.
func StartAgentWith(t testing.TB, issuerURL, machineToken, extra string, opt func(*agent.Options)) *Agent {
	t.Helper()
	dir := ShortDir(t)
	api, admin := filepath.Join(dir, "run", "api.sock"), filepath.Join(dir, "run", "admin.sock")
	cfg := fmt.Sprintf("[api]\nsocket_path = %q\n[admin]\nsocket_path = %q\n[issuer]\nurl = %q\n%s",
		api, admin, issuerURL, extra)
	ta := startAgent(t, dir, cfg, machineToken, opt)
	ta.APISocket, ta.AdminSocket = api, admin
	return ta
}

// StartAgentConfig runs an agent with the whole config cfg (written to
// dir/agent.toml), holding machineToken, until the test ends; for tests
// that set the sockets' own keys. APISocket and AdminSocket are left to
// the caller, who chose them.
func StartAgentConfig(t testing.TB, dir, cfg, machineToken string) *Agent {
	t.Helper()
	return startAgent(t, dir, cfg, machineToken, nil)
}

func startAgent(t testing.TB, dir, cfg, machineToken string, opt func(*agent.Options)) *Agent {
	t.Helper()
	ta := &Agent{Dir: dir, logs: &sockettest.Buffer{}}
	cfgPath := filepath.Join(dir, "agent.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	// An empty machineToken leaves the agent to read it as configured
	// (extra's token_file lines land in [issuer]).
	var mt agent.MachineToken
	if machineToken != "" {
		var err error
		if mt, err = agent.ParseMachineToken(machineToken); err != nil {
			t.Fatal(err)
		}
	}
	opts := agent.Options{
		ConfigPath: cfgPath, MachineToken: mt,
		Logger: slog.New(slog.NewTextHandler(ta.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if opt != nil {
		opt(&opts)
	}
	a, err := agent.New(opts)
	if err != nil {
		t.Fatalf("agent: %v", err)
	}
	ta.Agent = a
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("agent Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("agent did not stop")
		}
		if t.Failed() {
			t.Logf("agent log:\n%s", ta.logs)
		}
	})
	select {
	case <-a.Ready():
	case err := <-done:
		t.Fatalf("agent Run: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("agent not ready after 10s")
	}
	return ta
}

// Logs returns the agent's log so far.
func (ta *Agent) Logs() string { return ta.logs.String() }

// WicketBin builds the wicket command into a temporary directory, for
// tests that run it as a process.
func WicketBin(t testing.TB) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "wicket")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/wicket-sh/wicket/cmd/wicket").CombinedOutput()
	if err != nil {
		t.Fatalf("build wicket: %v\n%s", err, out)
	}
	return bin
}
