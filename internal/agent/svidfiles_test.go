package agent

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/wicket-sh/wicket/internal/agent/agenttest"
	"github.com/wicket-sh/wicket/internal/agent/feature/spiffe"
	"github.com/wicket-sh/wicket/internal/sockettest"
	"github.com/wicket-sh/wicket/internal/wait"
)

// svidFiles reads one [[svid_file]] directory and checks what a reader
// relies on: the key is the certificate's, the URI SAN is id, and the
// chain verifies against bundle.pem.
func svidFiles(t *testing.T, dir, id string) *x509.Certificate {
	t.Helper()
	chain, err := os.ReadFile(filepath.Join(dir, spiffe.SVIDFileName))
	if err != nil {
		t.Fatal(err)
	}
	key, err := os.ReadFile(filepath.Join(dir, spiffe.KeyFileName))
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := os.ReadFile(filepath.Join(dir, spiffe.BundleFileName))
	if err != nil {
		t.Fatal(err)
	}
	sv, err := x509svid.Parse(chain, key)
	if err != nil {
		t.Fatalf("svid.pem and svid_key.pem are not a pair: %v", err)
	}
	if sv.ID.String() != id || len(sv.Certificates[0].URIs) != 1 {
		t.Errorf("svid.pem for %s (URIs %v), want %s", sv.ID, sv.Certificates[0].URIs, id)
	}
	b, err := x509bundle.Parse(spiffeid.RequireTrustDomainFromString(sv.ID.TrustDomain().Name()), bundle)
	if err != nil {
		t.Fatalf("bundle.pem: %v", err)
	}
	if _, _, err := x509svid.Verify(sv.Certificates, b); err != nil {
		t.Errorf("svid.pem does not chain to bundle.pem: %v", err)
	}
	return sv.Certificates[0]
}

// fileStat is a file's mode and owner.
func fileStat(t *testing.T, path string) (os.FileMode, uint32, uint32) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return fi.Mode(), st.Uid, st.Gid
}

// svidFileStatus is svid_files in the agent's status, by dir.
func svidFileStatus(t *testing.T, g *guest) map[string]spiffe.FileStatus {
	t.Helper()
	var st struct {
		Files []spiffe.FileStatus `json:"svid_files"`
	}
	if err := json.Unmarshal([]byte(g.do("GET", g.admin, "/v1/status", "", nil).Body), &st); err != nil {
		t.Fatal(err)
	}
	out := map[string]spiffe.FileStatus{}
	for _, f := range st.Files {
		out[f.Dir] = f
	}
	return out
}

// reachableDir is a temporary directory other uids can get through (the
// test's own are 0700).
func reachableDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "wsvid")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func svidFileCfg(dir string, kv ...string) string {
	return "\n[[svid_file]]\ndir = \"" + dir + "\"\n" + strings.Join(kv, "\n") + "\n"
}

// The three files appear with the owner, group and modes asked for (the
// key 0440, the certificates 0444, all 65534:65534), readable by that
// uid; they hold the svid_name's SVID, which the guest API hands out too;
// status and metrics show the directory; the key is never logged.
func TestSVIDFiles_WrittenWithModesAndOwner(t *testing.T) {
	sockettest.RequireRoot(t, "files given to uid 65534")
	is := agenttest.New(t)
	dir := filepath.Join(reachableDir(t), "svid")
	g := startGuest(t, is, svidCfg+svidFileCfg(dir, `svid_name = "backend"`, `owner = "65534"`, `group = "65534"`, `mode = "0440"`))
	if err := g.agent.WaitStarted(t.Context()); err != nil {
		t.Fatal(err)
	}
	id := workloadSPIFFEID(is, "backend")
	leaf := svidFiles(t, dir, id)
	for name, want := range map[string]os.FileMode{spiffe.SVIDFileName: 0o444, spiffe.KeyFileName: 0o440, spiffe.BundleFileName: 0o444} {
		mode, uid, gid := fileStat(t, filepath.Join(dir, name))
		if !mode.IsRegular() || mode.Perm() != want || uid != 65534 || gid != 65534 {
			t.Errorf("%s: %v %d:%d, want a regular file %v 65534:65534", name, mode, uid, gid, want)
		}
		if err := readAs(filepath.Join(dir, name), 65534, 65534); err != nil {
			t.Errorf("uid 65534 cannot read %s: %v", name, err)
		}
	}
	if err := readAs(filepath.Join(dir, spiffe.KeyFileName), 65533, 65533); err == nil {
		t.Error("another uid reads the key")
	}
	st := svidFileStatus(t, g)[dir]
	if st.SPIFFEID != id || st.Writes != 1 || !st.ExpiresAt.Equal(leaf.NotAfter) || st.LastWrite.IsZero() || st.Failures != 0 {
		t.Errorf("status %+v", st)
	}
	m := g.do("GET", g.admin, "/metrics", "", nil).Body
	if !strings.Contains(m, `wicket_svid_file_writes_total{dir="`+dir+`"} 1`) || !strings.Contains(m, `wicket_svid_file_seconds_to_expiry{dir="`+dir+`"}`) {
		t.Errorf("metrics lack the directory's series:\n%s", m)
	}
	key, _ := os.ReadFile(filepath.Join(dir, spiffe.KeyFileName))
	keyLine := strings.Split(string(key), "\n")[1]
	for what, hay := range map[string]string{"logs": g.logs.String(), "status": g.do("GET", g.admin, "/v1/status", "", nil).Body, "metrics": m} {
		if strings.Contains(hay, keyLine[:40]) {
			t.Errorf("the private key appears in the %s", what)
		}
	}
	if n := is.X509SVIDCalls.Load(); n != 1 {
		t.Errorf("issuer signed %d svids, want 1", n)
	}
}

// sighupCounter is a real child process that appends a line to a file on
// each SIGHUP and names itself in a pid file; it ends within a minute.
func sighupCounter(t *testing.T, dir string) (pidFile, hups string) {
	t.Helper()
	pidFile, hups = filepath.Join(dir, "child.pid"), filepath.Join(dir, "hups")
	script := `trap 'echo hup >> "$1"' HUP; echo $$ > "$2.tmp"; mv "$2.tmp" "$2"; i=0; while [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done`
	cmd := exec.Command("/bin/sh", "-c", script, "sh", hups, pidFile)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	wait.Eventually(t, 10*time.Second, func() bool { _, err := os.Stat(pidFile); return err == nil }, "the child's pid file")
	return pidFile, hups
}

func lines(path string) int {
	b, _ := os.ReadFile(path)
	return bytes.Count(b, []byte("\n"))
}

// After each write (the first, and each renewal at half-life on the
// agent's clock) the files hold the new SVID, the process in pid_file
// gets the signal and the command runs, without a shell's help and with
// nothing but PATH in its environment.
func TestSVIDFiles_RotationSignalsAndRunsCommand(t *testing.T) {
	sockettest.RequireRoot(t, "the policy names uid 0")
	is := agenttest.New(t)
	tmp := t.TempDir()
	dir := filepath.Join(tmp, "svid")
	pidFile, hups := sighupCounter(t, tmp)
	ran := filepath.Join(tmp, "ran")
	clk := &skewClock{}
	g := startGuestWith(t, is, svidCfg+svidFileCfg(dir, `signal = "SIGHUP"`, `pid_file = "`+pidFile+`"`,
		fmt.Sprintf(`command = ["/bin/sh", "-c", "env >> %s; echo end >> %s"]`, ran, ran)), Options{Now: clk.now})
	id := machineSPIFFEID(is)
	wait.Eventually(t, 10*time.Second, func() bool { return lines(hups) == 1 && strings.Count(readString(ran), "end") == 1 }, "the first write signalled and ran the command")
	first := svidFiles(t, dir, id)
	env := strings.TrimSuffix(readString(ran), "end\n")
	if vars := strings.Fields(env); len(vars) == 0 || !slicesEvery(vars, func(v string) bool {
		return strings.HasPrefix(v, "PATH=") || strings.HasPrefix(v, "PWD=") || strings.HasPrefix(v, "SHLVL=") || strings.HasPrefix(v, "_=")
	}) {
		t.Errorf("the command's environment is not just PATH (and what sh adds):\n%s", env)
	}

	// Past half-life (1h ± 6 min): the cache renews, the files follow.
	clk.jump(40 * time.Minute)
	wait.Eventually(t, 20*time.Second, func() bool { return lines(hups) == 2 && strings.Count(readString(ran), "end") == 2 }, "the renewal signalled and ran the command")
	second := svidFiles(t, dir, id)
	if second.Equal(first) {
		t.Error("the files still hold the first svid after the renewal")
	}
	if st := svidFileStatus(t, g)[dir]; st.Writes != 2 || st.Notified != 2 || st.NotifyFailures != 0 {
		t.Errorf("status %+v, want 2 writes and 2 notifications", st)
	}
	if logs := g.logs.String(); !strings.Contains(logs, `msg="svid file signalled"`) || !strings.Contains(logs, `msg="svid file command run"`) {
		t.Errorf("notifications not logged:\n%s", logs)
	}
}

func readString(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

func slicesEvery(s []string, f func(string) bool) bool {
	for _, v := range s {
		if !f(v) {
			return false
		}
	}
	return true
}

// A pid file another user wrote directs the signal only at that user's
// processes: one naming a root process is refused, the process is not
// signalled, and the failure shows in status.
func TestSVIDFiles_ForeignPIDFileCannotAimTheSignal(t *testing.T) {
	sockettest.RequireRoot(t, "a pid file of uid 65534")
	is := agenttest.New(t)
	tmp := t.TempDir()
	_, hups := sighupCounter(t, tmp) // root's process
	forged := filepath.Join(tmp, "forged.pid")
	pid, _ := os.ReadFile(filepath.Join(tmp, "child.pid"))
	os.WriteFile(forged, pid, 0o644)
	os.Chown(forged, 65534, 65534)
	dir := filepath.Join(tmp, "svid")
	g := startGuest(t, is, svidCfg+svidFileCfg(dir, `signal = "SIGHUP"`, `pid_file = "`+forged+`"`))
	wait.Eventually(t, 10*time.Second, func() bool { return svidFileStatus(t, g)[dir].NotifyFailures == 1 }, "the notification refused")
	if st := svidFileStatus(t, g)[dir]; st.Writes != 1 || !strings.Contains(st.LastNotifyError, "pid file of uid 65534") {
		t.Errorf("status %+v", st)
	}
	// The refusal comes before any kill(2): the process was not signalled.
	if n := lines(hups); n != 0 {
		t.Errorf("the root process got %d signals through a pid file of uid 65534", n)
	}
}

// A directory another user owns is refused, as a token file's: nothing is
// written into it, and status shows the failures.
func TestSVIDFiles_ForeignDirRefused(t *testing.T) {
	sockettest.RequireRoot(t, "a directory of uid 65534")
	is := agenttest.New(t)
	dir := filepath.Join(t.TempDir(), "theirs")
	os.Mkdir(dir, 0o755)
	os.Chown(dir, 65534, 65534)
	g := startGuest(t, is, svidCfg+svidFileCfg(dir))
	wait.Eventually(t, 10*time.Second, func() bool { return svidFileStatus(t, g)[dir].Failures >= 1 }, "the write refused")
	st := svidFileStatus(t, g)[dir]
	if st.Writes != 0 || !strings.Contains(st.LastError, "uid 65534") {
		t.Errorf("status %+v, want no write and the refusal", st)
	}
	names, _ := os.ReadDir(dir)
	if len(names) != 0 {
		t.Errorf("files written into a directory of uid 65534: %v", names)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	if err := g.agent.WaitStarted(ctx); err == nil {
		t.Error("WaitStarted returned before the svid file was written")
	}
}

// A bundle change rewrites the files without a new SVID: after a CA
// rotation, once the agent refreshes the bundle (its refresh hint, on the
// agent's clock), bundle.pem holds both CAs and the same svid.pem still
// chains to it.
func TestSVIDFiles_BundleChangeRewrites(t *testing.T) {
	sockettest.RequireRoot(t, "the policy names uid 0")
	is := agenttest.New(t)
	dir := filepath.Join(t.TempDir(), "svid")
	clk := &skewClock{}
	g := startGuestWith(t, is, svidCfg+svidFileCfg(dir), Options{Now: clk.now})
	if err := g.agent.WaitStarted(t.Context()); err != nil {
		t.Fatal(err)
	}
	first := svidFiles(t, dir, machineSPIFFEID(is))
	if err := is.RotateCA(); err != nil {
		t.Fatal(err)
	}
	// Past the 5 min refresh hint, well before the SVID's half-life.
	clk.jump(6 * time.Minute)
	wait.Eventually(t, 20*time.Second, func() bool { return svidFileStatus(t, g)[dir].Writes == 2 }, "the files rewritten for the new bundle")
	b, _ := os.ReadFile(filepath.Join(dir, spiffe.BundleFileName))
	if n := strings.Count(string(b), "BEGIN CERTIFICATE"); n != 2 {
		t.Errorf("bundle.pem holds %d CAs after the rotation, want 2", n)
	}
	if now := svidFiles(t, dir, machineSPIFFEID(is)); !now.Equal(first) {
		t.Error("the svid changed: the rewrite was for the bundle only")
	}
	if n := is.X509SVIDCalls.Load(); n != 1 {
		t.Errorf("issuer signed %d svids, want 1", n)
	}
}

// An issuer out of reach when the writer starts: the failures are
// counted and retried with backoff, and the files appear once it is back.
func TestSVIDFiles_IssuerDownAtStartThenWritten(t *testing.T) {
	sockettest.RequireRoot(t, "the policy names uid 0")
	is := agenttest.New(t)
	is.Stop()
	dir := filepath.Join(t.TempDir(), "svid")
	g := startGuest(t, is, svidCfg+svidFileCfg(dir))
	wait.Eventually(t, 10*time.Second, func() bool { return svidFileStatus(t, g)[dir].Failures >= 1 }, "the failed fetch counted")
	if _, err := os.Stat(filepath.Join(dir, spiffe.SVIDFileName)); err == nil {
		t.Fatal("svid.pem written without an issuer")
	}
	is.Start(t)
	wait.Eventually(t, 30*time.Second, func() bool { return svidFileStatus(t, g)[dir].Writes == 1 }, "the files written once the issuer is back")
	svidFiles(t, dir, machineSPIFFEID(is))
	if st := svidFileStatus(t, g)[dir]; st.ConsecutiveFailures != 0 || st.LastError != "" {
		t.Errorf("status after the write: %+v", st)
	}
}
