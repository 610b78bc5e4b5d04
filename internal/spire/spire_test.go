package spire_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/wicket-sh/wicket/internal/spire"
	"github.com/wicket-sh/wicket/internal/spire/spiretest"
)

func selfSelector() string { return "unix:uid:" + strconv.Itoa(os.Getuid()) }

// A server and an agent come up, the agent serves the entry registered
// for this process, and go-spiffe gets an X.509-SVID for it that chains
// to the bundle the agent serves, and a JWT-SVID for an audience.
func TestDeployment_ServesEntryToGoSPIFFE(t *testing.T) {
	if testing.Short() {
		t.Skip("starts SPIRE's server and agent (seconds)")
	}
	const id = "spiffe://spire.test/workload/bench"
	d := spiretest.Start(t, spire.Options{
		Server:  spire.ServerOptions{X509SVIDTTL: 30 * time.Minute},
		Entries: []spire.Entry{{SPIFFEID: id, Selectors: []string{selfSelector()}}},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	xc, err := workloadapi.FetchX509Context(ctx, workloadapi.WithAddr(d.Agent.Addr()))
	if err != nil {
		t.Fatalf("FetchX509Context: %v", err)
	}
	sv := xc.DefaultSVID()
	if sv.ID.String() != id {
		t.Fatalf("SVID for %s, want %s", sv.ID, id)
	}
	if _, _, err := x509svid.Verify(sv.Certificates, xc.Bundles); err != nil {
		t.Fatalf("SVID does not verify against the served bundle: %v", err)
	}
	if life := sv.Certificates[0].NotAfter.Sub(sv.Certificates[0].NotBefore); life > 31*time.Minute || life < 29*time.Minute {
		t.Fatalf("SVID lives %s, want the configured 30m", life)
	}
	// The server's own bundle, as the CLI shows it, is the one served.
	bundlePEM, err := d.Server.Bundle(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := xc.Bundles.Get(spiffeid.RequireTrustDomainFromString("spire.test"))
	if b == nil || !containsCert(b.X509Authorities(), bundlePEM) {
		t.Fatalf("served bundle is not the server's: %s", bundlePEM)
	}
	js, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "db"}, workloadapi.WithAddr(d.Agent.Addr()))
	if err != nil {
		t.Fatalf("FetchJWTSVID: %v", err)
	}
	if js.ID.String() != id || len(js.Audience) != 1 || js.Audience[0] != "db" {
		t.Fatalf("JWT-SVID for %s %v, want %s [db]", js.ID, js.Audience, id)
	}
}

// containsCert reports whether some PEM certificate in pemData is one
// of certs.
func containsCert(certs []*x509.Certificate, pemData []byte) bool {
	for rest := pemData; ; {
		var blk *pem.Block
		if blk, rest = pem.Decode(rest); blk == nil {
			return false
		}
		for _, c := range certs {
			if bytes.Equal(c.Raw, blk.Bytes) {
				return true
			}
		}
	}
}

// The join token attests the node: it appears in no CLI output this
// package returns, no error and no log tail, although SPIRE itself
// writes it into the agent IDs it logs and lists.
func TestJoinToken_NeverShown(t *testing.T) {
	if testing.Short() {
		t.Skip("starts SPIRE's server and agent (seconds)")
	}
	d := spiretest.Start(t, spire.Options{})
	conf, err := os.ReadFile(filepath.Join(filepath.Dir(d.Agent.SocketPath()), "agent.conf"))
	if err != nil {
		t.Fatal(err)
	}
	token := tokenIn(t, string(conf))
	if fi, err := os.Stat(filepath.Join(filepath.Dir(d.Agent.SocketPath()), "agent.conf")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("agent.conf mode %v (%v), want 0600", fi.Mode().Perm(), err)
	}
	ctx := context.Background()
	out, err := d.Server.CLI(ctx, "agent", "list")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), token) {
		t.Fatal("agent list output holds the join token")
	}
	if !strings.Contains(string(out), "join_token/[join-token]") {
		t.Fatalf("agent list does not show the attested agent, redacted: %s", out)
	}
	// A failing command's error carries its output, redacted too.
	_, err = d.Server.CLI(ctx, "agent", "show", "-spiffeID", "spiffe://spire.test/spire/agent/join_token/"+token+"x")
	if err == nil {
		t.Fatal("agent show of an unknown agent succeeded")
	}
	if strings.Contains(err.Error(), token) {
		t.Fatal("CLI error holds the join token")
	}
	// A wait that fails shows the logs' tails; SPIRE logs the agent's ID.
	raw, _ := os.ReadFile(d.Server.Log())
	if !strings.Contains(string(raw), token) {
		t.Fatal("server.log does not hold the token: this test would prove nothing")
	}
	wctx, wcancel := context.WithCancel(ctx)
	wcancel()
	err = d.Agent.WaitServes(wctx, "spiffe://spire.test/never")
	if err == nil || !strings.Contains(err.Error(), "agent.log") {
		t.Fatalf("WaitServes for an unregistered ID: %v, want an error with the log's tail", err)
	}
	if strings.Contains(err.Error(), token) {
		t.Fatal("WaitServes error holds the join token")
	}
}

func tokenIn(t *testing.T, conf string) string {
	t.Helper()
	for _, line := range strings.Split(conf, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "join_token = "); ok {
			if tok, err := strconv.Unquote(v); err == nil && tok != "" {
				return tok
			}
		}
	}
	t.Fatal("no join_token in agent.conf")
	return ""
}

// A config SPIRE refuses is reported with the end of the server's log,
// and nothing is left running.
func TestStartServer_RefusedConfigShowsLogTail(t *testing.T) {
	bins := spiretest.Binaries(t)
	dir := t.TempDir()
	_, err := spire.StartServer(context.Background(), dir, spire.ServerOptions{Bins: bins, ServerHCL: `no_such_setting_xyz = "1"`})
	if err == nil {
		t.Fatal("server started with an unknown setting")
	}
	if !strings.Contains(err.Error(), "server.log") || !strings.Contains(err.Error(), "no_such_setting_xyz") {
		t.Fatalf("error does not show the log's tail naming the setting: %v", err)
	}
}

// Close stops the whole process group of each SPIRE process, within its
// bounds.
func TestClose_ProcessesGone(t *testing.T) {
	if testing.Short() {
		t.Skip("starts SPIRE's server and agent (seconds)")
	}
	bins := spiretest.Binaries(t)
	d, err := spire.Start(context.Background(), t.TempDir(), spire.Options{Server: spire.ServerOptions{Bins: bins, KeyManager: "disk"}})
	if err != nil {
		t.Fatal(err)
	}
	pids := []int{d.Agent.PID(), d.Server.PID()}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	for _, pid := range pids {
		// The group (pgid = the leader's pid) is empty: signal 0 finds
		// no member.
		if err := syscall.Kill(-pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Fatalf("process group %d still has members after Close (%v)", pid, err)
		}
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(d.Server.SocketPath()), "keys.json")); err != nil {
		t.Fatalf("disk key manager kept no keys: %v", err)
	}
}

func TestBinaries_MissingIsErrNoBinaries(t *testing.T) {
	if _, err := spire.Binaries(t.TempDir()); !errors.Is(err, spire.ErrNoBinaries) {
		t.Fatalf("Binaries(empty dir) = %v, want ErrNoBinaries", err)
	}
	t.Setenv(spire.BinDirEnv, "")
	if _, err := spire.Binaries(""); !errors.Is(err, spire.ErrNoBinaries) {
		t.Fatalf("Binaries(\"\") without %s = %v, want ErrNoBinaries", spire.BinDirEnv, err)
	}
}
