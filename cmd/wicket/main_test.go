package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/wicket-sh/wicket/internal/sockettest"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

var wicketBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "wicket-bin")
	if err != nil {
		panic(err)
	}
	wicketBin = filepath.Join(dir, "wicket")
	out, err := exec.Command("go", "build", "-o", wicketBin, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build wicket: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// shortDir returns a private directory with a path short enough for sockets.
func shortDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "wc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func run(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, wicketBin, args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("run %v: %v", args, err)
	}
	return o.String(), e.String(), code
}

func writeConfig(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "agent.toml")
	cfg := fmt.Sprintf("[api]\nsocket_path = %q\n[admin]\nsocket_path = %q\n",
		filepath.Join(dir, "run", "api.sock"), filepath.Join(dir, "run", "admin.sock"))
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// startAgent starts `wicket agent` and waits for both sockets.
func startAgent(t *testing.T, dir string) (*exec.Cmd, *sockettest.Buffer) {
	t.Helper()
	cmd := exec.Command(wicketBin, "agent", "--config", writeConfig(t, dir))
	logs := &sockettest.Buffer{}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := net.Dial("unix", filepath.Join(dir, "run", "admin.sock")); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent did not start:\n%s", logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	return cmd, logs
}

func TestVersion(t *testing.T) {
	out, _, code := run(t, "version")
	if code != 0 || !strings.HasPrefix(out, "wicket ") || !strings.Contains(out, "commit") {
		t.Errorf("version: %d %q", code, out)
	}
}

func TestCheckConfig(t *testing.T) {
	dir := shortDir(t)
	good := writeConfig(t, dir)
	if out, _, code := run(t, "agent", "--check-config", good); code != 0 || !strings.Contains(out, "config ok") {
		t.Errorf("valid config: %d %q", code, out)
	}
	bad := filepath.Join(dir, "bad.toml")
	os.WriteFile(bad, []byte("[api]\nsocket_mode = \"0666\"\n"), 0o600)
	if _, errOut, code := run(t, "agent", "--check-config", bad); code != 1 || !strings.Contains(errOut, "socket_mode") {
		t.Errorf("invalid config: %d %q", code, errOut)
	}
	if _, errOut, code := run(t, "agent", "--check-config", filepath.Join(dir, "missing.toml")); code != 1 || !strings.Contains(errOut, "no such file") {
		t.Errorf("missing config: %d %q", code, errOut)
	}
}

// S-cleanup: on SIGTERM the agent removes its own sockets but leaves one that
// someone else put at its path after it started.
func TestSIGTERM_RemovesOwnSocketsOnly(t *testing.T) {
	dir := shortDir(t)
	cmd, logs := startAgent(t, dir)
	api := filepath.Join(dir, "run", "api.sock")
	admin := filepath.Join(dir, "run", "admin.sock")

	os.Remove(api)
	theirs, err := net.Listen("unix", api)
	if err != nil {
		t.Fatal(err)
	}
	theirs.(*net.UnixListener).SetUnlinkOnClose(false)
	defer theirs.Close()

	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("agent exit after SIGTERM: %v\n%s", err, logs)
	}
	if _, err := os.Lstat(admin); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("own admin socket left behind: %v", err)
	}
	fi, err := os.Lstat(api)
	if err != nil || fi.Mode()&fs.ModeSocket == 0 {
		t.Fatalf("someone else's socket removed: %v", err)
	}
	c, err := net.Dial("unix", api)
	if err != nil {
		t.Errorf("their socket no longer works: %v", err)
	} else {
		c.Close()
	}
}

// S-stale: a live socket at the path → "already in use", non-zero exit, and
// the other listener keeps working.
func TestAgent_LiveSocketInUse(t *testing.T) {
	dir := shortDir(t)
	os.Mkdir(filepath.Join(dir, "run"), 0o700)
	api := filepath.Join(dir, "run", "api.sock")
	other, err := net.Listen("unix", api)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	accepted := make(chan struct{}, 10)
	go func() {
		for {
			c, err := other.Accept()
			if err != nil {
				return
			}
			accepted <- struct{}{}
			c.Close()
		}
	}()
	_, errOut, code := run(t, "agent", "--config", writeConfig(t, dir))
	if code == 0 || !strings.Contains(errOut, "socket already in use") {
		t.Fatalf("agent over live socket: exit %d, stderr %q", code, errOut)
	}
	<-accepted // the liveness probe
	c, err := net.Dial("unix", api)
	if err != nil {
		t.Fatalf("other listener broken: %v", err)
	}
	c.Close()
}

func TestAdminCLI(t *testing.T) {
	dir := shortDir(t)
	_, logs := startAgent(t, dir)
	admin := filepath.Join(dir, "run", "admin.sock")
	out, _, code := run(t, "admin", "--socket", admin, "status")
	if code != 0 || !strings.Contains(out, `"config_generation": 1`) {
		t.Errorf("admin status: %d %q", code, out)
	}
	if out, _, code := run(t, "admin", "--socket", admin, "health"); code != 0 || !strings.Contains(out, `"ok"`) {
		t.Errorf("admin health: %d %q", code, out)
	}
	if out, _, code := run(t, "admin", "--socket", admin, "reload"); code != 0 || !strings.Contains(out, `"generation": 2`) {
		t.Errorf("admin reload: %d %q", code, out)
	}
	// Break the config: reload fails with a generic message, exit 1.
	os.WriteFile(filepath.Join(dir, "agent.toml"), []byte("[api\n"), 0o600)
	_, errOut, code := run(t, "admin", "--socket", admin, "reload")
	if code != 1 || strings.TrimSpace(errOut) != `{"error":"reload failed","code":"reload_failed"}` {
		t.Errorf("failed reload: %d %q", code, errOut)
	}
	if _, errOut, code := run(t, "admin", "--socket", filepath.Join(dir, "nope.sock"), "status"); code != 1 || !strings.Contains(errOut, "cannot reach admin socket") {
		t.Errorf("unreachable socket: %d %q", code, errOut)
	}
	if !strings.Contains(logs.String(), "reload failed") {
		t.Errorf("agent log lacks reload failure:\n%s", logs)
	}
}

// SIGHUP reloads like the admin command does.
func TestSIGHUP_Reloads(t *testing.T) {
	dir := shortDir(t)
	cmd, logs := startAgent(t, dir)
	cmd.Process.Signal(syscall.SIGHUP)
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(logs.String(), "generation=2") {
		if time.Now().After(deadline) {
			t.Fatalf("no reload after SIGHUP:\n%s", logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The agent holds the machine token: it must be non-dumpable (no core
// dump; /proc/PID/environ and mem closed to same-uid processes). The kernel
// shows a non-dumpable process's /proc files as owned by root, so run the
// agent as an unprivileged uid and look at the owner.
func TestAgent_NonDumpable(t *testing.T) {
	uid := uint32(os.Geteuid())
	dir := shortDir(t)
	bin := wicketBin
	var cred *syscall.Credential
	if uid == 0 {
		uid = 65534
		cred = &syscall.Credential{Uid: uid, Gid: uid, Groups: []uint32{}}
		bin = publicCopy(t, wicketBin)
		if err := os.Chown(dir, int(uid), int(uid)); err != nil {
			t.Fatal(err)
		}
	}
	cfg := writeConfig(t, dir)
	os.Chown(cfg, int(uid), int(uid))
	cmd := exec.Command(bin, "agent", "--config", cfg)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	logs := &sockettest.Buffer{}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(logs.String(), "agent ready") {
		if time.Now().After(deadline) {
			t.Fatalf("agent not ready:\n%s", logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
	fi, err := os.Stat(fmt.Sprintf("/proc/%d/environ", cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	if owner := fi.Sys().(*syscall.Stat_t).Uid; owner != 0 {
		t.Errorf("/proc/<agent>/environ owned by uid %d, not root: the agent (uid %d) is dumpable", owner, uid)
	}
}
