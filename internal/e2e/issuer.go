package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/sockettest"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/issuer"
)

// Issuer is a real issuer serving on a loopback port.
type Issuer struct {
	*issuer.Issuer
	URL  string // also the base of each org's OIDC issuer: URL/<org>
	logs *sockettest.Buffer
}

// ShortDir is a private directory with a path short enough for sockets,
// removed when the test ends.
func ShortDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "we")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// StartIssuer initializes fresh state and runs an issuer on 127.0.0.1
// until the test ends. Its log is printed if the test fails.
func StartIssuer(t testing.TB) *Issuer {
	t.Helper()
	return StartIssuerWith(t, nil)
}

// StartIssuerWith is StartIssuer with extra adjusting the configuration
// (a gateway upstream, say); nil changes nothing.
func StartIssuerWith(t testing.TB, extra func(*config.Issuer)) *Issuer {
	t.Helper()
	return StartIssuerOpts(t, extra, nil)
}

// StartIssuerOpts is StartIssuerWith with opt adjusting the issuer's
// Options too (nil changes nothing). When extra sets server.tls_cert the
// issuer serves TLS and URL is https.
func StartIssuerOpts(t testing.TB, extra func(*config.Issuer), opt func(*issuer.Options)) *Issuer {
	t.Helper()
	dir := ShortDir(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ln.Addr().String()
	ov := []config.IssuerOverride{func(c *config.Issuer) {
		c.State.Dir = filepath.Join(dir, "state")
		c.Admin.Path = filepath.Join(dir, "admin.sock")
		c.Server.PublicURL, c.Server.Listen = url, ln.Addr().String()
		if extra != nil {
			extra(c)
		}
		if c.Server.TLSCert != "" && c.Server.PublicURL == url {
			c.Server.PublicURL = "https://" + ln.Addr().String()
		}
	}}
	logs := &sockettest.Buffer{}
	opts := issuer.Options{
		Overrides: ov, Listener: ln,
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if opt != nil {
		opt(&opts)
	}
	r, err := issuer.Start(context.Background(), issuer.StartOptions{Init: true, Options: opts})
	if err != nil {
		t.Fatalf("issuer: %v\n%s", err, logs)
	}
	t.Cleanup(func() {
		stopped := make(chan error, 1)
		go func() { stopped <- r.Stop() }()
		select {
		case err := <-stopped:
			if err != nil {
				t.Errorf("issuer Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("issuer did not stop")
		}
		if t.Failed() {
			t.Logf("issuer log:\n%s", logs)
		}
	})
	return &Issuer{Issuer: r.Issuer, URL: r.Issuer.PublicURL(), logs: logs}
}

// Logs returns the issuer's log so far.
func (ti *Issuer) Logs() string { return ti.logs.String() }

// MachineToken registers a machine and returns its machine token.
func (ti *Issuer) MachineToken(t testing.TB, org, app, name string) string {
	t.Helper()
	_, tok, err := ti.AddMachine(context.Background(), api.MachineSpec{
		Name: name, Org: org, App: app, Region: "local", Image: "registry.test/app:1",
	})
	if err != nil {
		t.Fatalf("add machine %s/%s/%s: %v", org, app, name, err)
	}
	return tok.Token
}

// TokenSource gets OIDC tokens for one audience (the shape of
// tokenfile.Source).
type TokenSource func(ctx context.Context) (token string, expiresAt time.Time, err error)

// OIDCSource asks the issuer's HTTP API for tokens for aud with machine
// token mt, as the agent does for its callers.
func (ti *Issuer) OIDCSource(mt, aud string) TokenSource {
	return func(ctx context.Context) (string, time.Time, error) {
		body, _ := json.Marshal(map[string]string{"aud": aud})
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, ti.URL+"/v1/tokens/oidc", bytes.NewReader(body))
		if err != nil {
			return "", time.Time{}, err
		}
		req.Header.Set("Authorization", api.AuthScheme+" "+mt)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return "", time.Time{}, err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if resp.StatusCode != http.StatusOK {
			return "", time.Time{}, fmt.Errorf("issuer: %d %s", resp.StatusCode, strings.TrimSpace(string(b)))
		}
		var out api.TokenReply
		if err := json.Unmarshal(b, &out); err != nil {
			return "", time.Time{}, fmt.Errorf("issuer reply: %w", err)
		}
		return out.Token, out.ExpiresAt, nil
	}
}

// Must gets one token or fails the test.
func (src TokenSource) Must(t testing.TB) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tok, _, err := src(ctx)
	if err != nil {
		t.Fatalf("oidc token: %v", err)
	}
	return tok
}
