package client_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/client"
	"github.com/wicket-sh/wicket/internal/agent"
	"github.com/wicket-sh/wicket/internal/agent/agenttest"
	"github.com/wicket-sh/wicket/internal/wait"
)

// startAgent runs a real agent wired to a test issuer and returns its API
// socket once the first metadata fetch has succeeded.
func startAgent(t *testing.T) (*agenttest.Issuer, string) {
	t.Helper()
	return startAgentWith(t, "")
}

// startAgentWith is startAgent with more config; %[1]s in extra is the
// agent's run directory.
func startAgentWith(t *testing.T, extra string) (*agenttest.Issuer, string) {
	t.Helper()
	is := agenttest.New(t)
	dir, err := os.MkdirTemp("", "wcl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cfg := filepath.Join(dir, "agent.toml")
	if extra != "" {
		extra = fmt.Sprintf(extra, filepath.Join(dir, "run"))
	}
	os.WriteFile(cfg, []byte(fmt.Sprintf("[api]\nsocket_path = %q\n[admin]\nsocket_path = %q\n[issuer]\nurl = %q\n",
		filepath.Join(dir, "run", "api.sock"), filepath.Join(dir, "run", "admin.sock"), is.URL)+extra), 0o600)
	tok, err := agent.ParseMachineToken(is.MachineToken(t))
	if err != nil {
		t.Fatal(err)
	}
	a, err := agent.New(agent.Options{ConfigPath: cfg, MachineToken: tok, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	<-a.Ready()
	sock := filepath.Join(dir, "run", "api.sock")
	c := client.New(sock)
	wait.Eventually(t, 5*time.Second, func() bool {
		_, _, err := c.Metadata(context.Background())
		return err == nil
	}, "agent has metadata")
	return is, sock
}

func TestClient(t *testing.T) {
	is, sock := startAgent(t)
	c := client.New(sock)
	ctx := context.Background()

	m, etag, err := c.Metadata(ctx)
	if err != nil || m.MachineID != is.Machine().MachineID || m.Tags["role"] != "frontend" || etag == "" {
		t.Fatalf("Metadata = %+v %q %v", m, etag, err)
	}
	for key, want := range map[string]string{"region": "ams", "app": "web", "tags/role": "frontend"} {
		if got, err := c.Get(ctx, key); err != nil || got != want {
			t.Errorf("Get(%q) = %q, %v", key, got, err)
		}
	}
	_, err = c.Get(ctx, "tags/absent")
	var ce *client.Error
	if !errors.As(err, &ce) || ce.Status != 404 || ce.Code != api.CodeNotFound {
		t.Errorf("Get absent: %v", err)
	}
	for _, bad := range []string{"", "a/b", "tags/", "tags/..", "../x", "tags/a/b"} {
		if _, err := c.Get(ctx, bad); err == nil || errors.As(err, &ce) {
			t.Errorf("Get(%q) = %v, want a local refusal", bad, err)
		}
	}

	// Watch: unchanged → at the timeout; changed → at once.
	start := time.Now()
	_, e2, err := c.Watch(ctx, etag, time.Second)
	if err != nil || e2 != etag || time.Since(start) < 900*time.Millisecond {
		t.Errorf("Watch unchanged: %q %v after %v", e2, err, time.Since(start))
	}
	go func() {
		time.Sleep(100 * time.Millisecond)
		is.SetTags(map[string]string{"role": "watched"})
	}()
	m, e3, err := c.Watch(ctx, etag, 30*time.Second)
	if err != nil || e3 == etag || m.Tags["role"] != "watched" {
		t.Errorf("Watch changed: %+v %q %v", m, e3, err)
	}
	if _, _, err := c.Watch(ctx, etag, 500*time.Millisecond); err == nil {
		t.Error("watch timeout below 1s accepted")
	}

	tok, exp, err := c.OIDCToken(ctx, "sts.amazonaws.com")
	if err != nil || strings.Count(tok, ".") != 2 || time.Until(exp) < 5*time.Minute {
		t.Errorf("OIDCToken = %.20q… %v %v", tok, exp, err)
	}
	if tok2, _, err := c.OIDCToken(ctx, ""); err != nil || tok2 == tok {
		t.Errorf("default audience: %v", err)
	}
	_, _, err = c.OIDCToken(ctx, "bad audience")
	if !errors.As(err, &ce) || ce.Status != 400 || ce.Code != api.CodeBadRequest || strings.Contains(err.Error(), "audience") {
		t.Errorf("bad audience: %v", err)
	}
}

func TestClient_Errors(t *testing.T) {
	is, sock := startAgent(t)
	is.Stop()
	c := client.New(sock)
	_, _, err := c.OIDCToken(context.Background(), "never-cached")
	var ce *client.Error
	if !errors.As(err, &ce) || ce.Status != 503 || ce.Code != api.CodeUpstreamUnavailable {
		t.Errorf("issuer down: %v", err)
	}
	if !strings.Contains(err.Error(), "upstream_unavailable") {
		t.Errorf("message lacks the code: %q", err)
	}

	missing := client.New(filepath.Join(t.TempDir(), "none.sock"))
	_, _, err = missing.Metadata(context.Background())
	if err == nil || errors.As(err, &ce) || !strings.Contains(err.Error(), "none.sock") {
		t.Errorf("no agent: %v", err)
	}
}

func TestClient_DefaultSocket(t *testing.T) {
	t.Setenv(api.SocketEnv, "")
	if got := client.New("").Socket(); got != api.DefaultAPISocket {
		t.Errorf("default socket = %q", got)
	}
	t.Setenv(api.SocketEnv, "/run/x/api.sock")
	if got := client.New("").Socket(); got != "/run/x/api.sock" {
		t.Errorf("socket from env = %q", got)
	}
	if got := client.New("/explicit.sock").Socket(); got != "/explicit.sock" {
		t.Errorf("explicit socket = %q", got)
	}
}

// The SVID routes: the caller's X.509-SVID as a usable key pair, and a
// JWT-SVID for the audiences asked; a bad audience is the agent's 400.
func TestClient_SVIDs(t *testing.T) {
	_, sock := startAgentWith(t, "[spiffe]\nenabled = true\nsocket_path = \"%[1]s/spiffe.sock\"\n")
	c := client.New(sock)
	ctx := context.Background()
	s, err := c.X509SVID(ctx)
	if err != nil {
		t.Fatalf("X509SVID: %v", err)
	}
	if _, err := tls.X509KeyPair([]byte(s.X509SVID), []byte(s.X509SVIDKey)); err != nil || !strings.HasPrefix(s.SPIFFEID, "spiffe://") || s.Bundle == "" {
		t.Errorf("X509SVID for %s: key pair %v", s.SPIFFEID, err)
	}
	j, err := c.JWTSVID(ctx, "db")
	if err != nil || j.SPIFFEID != s.SPIFFEID || strings.Count(j.Token, ".") != 2 || time.Until(j.ExpiresAt) < time.Minute {
		t.Errorf("JWTSVID = %+v, %v", j, err)
	}
	var ce *client.Error
	if _, err := c.JWTSVID(ctx); !errors.As(err, &ce) || ce.Status != 400 {
		t.Errorf("JWTSVID without audience: %v, want 400", err)
	}
}
