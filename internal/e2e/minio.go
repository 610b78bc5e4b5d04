package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/wicket-sh/wicket/internal/sockettest"
	"github.com/wicket-sh/wicket/internal/trust"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// MinIOBin finds the MinIO server that .ci/minio.sh installs:
// $WICKET_MINIO_BIN, else ${WICKET_CI_CACHE:-$HOME/.cache/wicket-ci}/bin/minio.
// Without it the test is skipped, except in CI ($CI set), where a missing
// MinIO is a failure: the end-to-end test must not silently stop running.
func MinIOBin(t testing.TB) string {
	t.Helper()
	bin := os.Getenv("WICKET_MINIO_BIN")
	if bin == "" {
		cache := os.Getenv("WICKET_CI_CACHE")
		if cache == "" {
			home, _ := os.UserHomeDir()
			cache = filepath.Join(home, ".cache", "wicket-ci")
		}
		bin = filepath.Join(cache, "bin", "minio")
	}
	if fi, err := os.Stat(bin); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
		msg := fmt.Sprintf("MinIO server not found at %s (run .ci/minio.sh, or set WICKET_MINIO_BIN)", bin)
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip("skipping: " + msg)
	}
	return bin
}

// MinIO is a MinIO server on a loopback port, trusting one wicket org's
// OIDC issuer for one client ID (audience) with the readwrite policy.
type MinIO struct {
	URL      string
	RoleARN  string
	ClientID string
	logs     *sockettest.Buffer
}

// MinIORoleARN is the role MinIO derives for an OpenID provider configured
// with a role policy: the one `wicket trust minio` prints, so the real
// MinIO these tests run checks that computation.
func MinIORoleARN(clientID string) string { return trust.MinIORoleARN(clientID) }

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// StartMinIO runs MinIO with openidConfigURL as its identity provider and
// waits until it is ready. It is killed when the test ends.
func StartMinIO(t testing.TB, openidConfigURL, clientID string) *MinIO {
	t.Helper()
	bin := MinIOBin(t)
	var (
		addr string
		logs *sockettest.Buffer
		cmd  *exec.Cmd
		exit chan error
	)
	// A port taken between freePort and MinIO's bind is retried once.
	for attempt := 0; ; attempt++ {
		addr = freePort(t)
		data := t.TempDir()
		logs = &sockettest.Buffer{}
		cmd = exec.Command(bin, "server", "--quiet", "--address", addr, data)
		cmd.Env = []string{
			"PATH=" + os.Getenv("PATH"),
			"HOME=" + data,
			"MINIO_ROOT_USER=" + randHex(10),
			"MINIO_ROOT_PASSWORD=" + randHex(20),
			"MINIO_BROWSER=off",
			"MINIO_UPDATE=off",
			"MINIO_IDENTITY_OPENID_CONFIG_URL=" + openidConfigURL,
			"MINIO_IDENTITY_OPENID_CLIENT_ID=" + clientID,
			"MINIO_IDENTITY_OPENID_ROLE_POLICY=readwrite",
		}
		cmd.Stdout, cmd.Stderr = logs, logs
		// Own process group, so nothing MinIO starts outlives the test.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			t.Fatalf("start minio: %v", err)
		}
		exit = make(chan error, 1)
		go func() { exit <- cmd.Wait() }()
		err := waitReady(t, "http://"+addr, MinIORoleARN(clientID), exit, 30*time.Second)
		if err == nil {
			break
		}
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exit
		if attempt == 0 && errors.Is(err, errExited) {
			t.Logf("minio exited at start (%v), retrying on another port; log:\n%s", err, logs)
			continue
		}
		t.Fatalf("minio: %v; log:\n%s", err, logs)
	}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		select {
		case <-exit:
		case <-time.After(10 * time.Second):
			t.Error("minio did not exit after SIGKILL")
		}
		if t.Failed() {
			t.Logf("minio log:\n%s", logs)
		}
	})
	return &MinIO{URL: "http://" + addr, RoleARN: MinIORoleARN(clientID), ClientID: clientID, logs: logs}
}

var errExited = errors.New("exited")

// waitReady polls MinIO until it is ready and knows the role ARN, or the
// process exits, or the timeout passes. /minio/health/ready answers 200
// before IAM has loaded the OpenID roles, so readiness for this test is an
// STS call that fails on the token (a placeholder) rather than on the role.
func waitReady(t testing.TB, base, roleARN string, exit chan error, timeout time.Duration) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	client := &http.Client{Timeout: time.Second}
	probe := url.Values{"Action": {"AssumeRoleWithWebIdentity"}, "Version": {"2011-06-15"},
		"RoleArn": {roleARN}, "RoleSessionName": {"probe"}, "WebIdentityToken": {"probe"}}.Encode()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	healthy := false
	for {
		if !healthy {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/minio/health/ready", nil)
			if resp, err := client.Do(req); err == nil {
				resp.Body.Close()
				healthy = resp.StatusCode == http.StatusOK
			}
		}
		if healthy {
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+"/", strings.NewReader(probe))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			if resp, err := client.Do(req); err == nil {
				b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
				resp.Body.Close()
				if resp.StatusCode == http.StatusBadRequest && !strings.Contains(string(b), "RoleArn") {
					return nil
				}
			}
		}
		select {
		case err := <-exit:
			exit <- err // for the cleanup's Wait
			return fmt.Errorf("%w: %v", errExited, err)
		case <-ctx.Done():
			return fmt.Errorf("not ready after %s (health ok: %v)", timeout, healthy)
		case <-tick.C:
		}
	}
}
