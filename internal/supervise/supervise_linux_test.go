package supervise

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/wicket-sh/wicket/internal/sockettest"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
)

// The test binary doubles as the supervisor under test and as the
// workload it runs, so that a Supervisor, which reaps every child of its
// process, never runs inside the test process itself.
const (
	roleEnv = "SUPERVISE_TEST_ROLE"
	specEnv = "SUPERVISE_TEST_SPEC"
	// caughtLine is printed by the supervisor helper once New has returned:
	// from then on its signals are caught.
	caughtLine = "supervise-test: signals caught"
)

type helperSpec struct {
	Args        []string
	Env         []string
	Dir         string
	Cred        *Credential
	StopTimeout time.Duration
	NeverReady  bool
	CancelAfter time.Duration
	NonDumpable bool
	ReloadFile  string
}

func TestMain(m *testing.M) {
	switch os.Getenv(roleEnv) {
	case "supervisor":
		os.Exit(supervisorMain())
	case "probe":
		os.Exit(probeMain())
	case "ttyprobe":
		os.Exit(ttyProbeMain())
	}
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

func supervisorMain() int {
	var sp helperSpec
	if err := json.Unmarshal([]byte(os.Getenv(specEnv)), &sp); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	if sp.NonDumpable {
		if err := SetNonDumpable(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 3
		}
	}
	var reload func()
	if sp.ReloadFile != "" {
		reload = func() { os.WriteFile(sp.ReloadFile, []byte("reloaded\n"), 0o644) }
	}
	s, err := New(Config{
		Path: sp.Args[0], Args: sp.Args, Dir: sp.Dir, Env: sp.Env, Cred: sp.Cred,
		StopTimeout: sp.StopTimeout, Reload: reload,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	defer s.Close()
	fmt.Fprintln(os.Stderr, caughtLine)
	ready := make(chan struct{})
	if !sp.NeverReady {
		close(ready)
	}
	ctx := context.Background()
	if sp.CancelAfter > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, sp.CancelAfter)
		defer cancel()
	}
	st, err := s.Run(ctx, ready)
	var se *StartError
	switch {
	case errors.As(err, &se):
		fmt.Fprintln(os.Stderr, err)
		return se.ExitCode()
	case err != nil:
		fmt.Fprintln(os.Stderr, "run:", err)
		return 3
	}
	return st.ExitCode()
}

// probeOut is what the workload probe reports about itself.
type probeOut struct {
	FDs           []string // descriptors from 3 up, with their targets
	Status        map[string]string
	Cwd           string
	ParentEnviron string // "marker", "no marker" or the error opening it
	ParentMem     string // "ok" or the error opening it
	// Pgrp and TPGID are the probe's process group and its terminal's
	// foreground group (-1 without a terminal), from /proc/self/stat.
	Pgrp, TPGID int
}

const environMarker = "SUPERVISE_TEST_MARKER=present"

func probeMain() int {
	var out probeOut
	// First, before this process opens anything itself.
	ents, _ := os.ReadDir("/proc/self/fd")
	self := fmt.Sprintf("/proc/%d/fd", os.Getpid())
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil || n < 3 {
			continue
		}
		target, _ := os.Readlink("/proc/self/fd/" + e.Name())
		flags, err := unix.FcntlInt(uintptr(n), unix.F_GETFD, 0)
		if target == self || err != nil || flags&unix.FD_CLOEXEC != 0 {
			// The directory being read, or one the runtime opened (Go
			// opens everything close-on-exec): anything inherited
			// through exec is by definition not close-on-exec.
			continue
		}
		out.FDs = append(out.FDs, e.Name()+" -> "+target)
	}
	out.Status = map[string]string{}
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && (k == "Uid" || k == "Gid" || k == "Groups") {
				out.Status[k] = strings.Join(strings.Fields(v), " ")
			}
		}
	}
	out.Cwd, _ = os.Getwd()
	if b, err := os.ReadFile("/proc/self/stat"); err == nil {
		// pid (comm) state ppid pgrp session tty_nr tpgid ...
		if i := bytes.LastIndexByte(b, ')'); i > 0 {
			if f := strings.Fields(string(b[i+1:])); len(f) > 5 {
				out.Pgrp, _ = strconv.Atoi(f[2])
				out.TPGID, _ = strconv.Atoi(f[5])
			}
		}
	}
	ppid := os.Getppid()
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", ppid)); err != nil {
		out.ParentEnviron = err.Error()
	} else if bytes.Contains(b, []byte(environMarker)) {
		out.ParentEnviron = "marker"
	} else {
		out.ParentEnviron = "no marker"
	}
	if f, err := os.Open(fmt.Sprintf("/proc/%d/mem", ppid)); err != nil {
		out.ParentMem = err.Error()
	} else {
		f.Close()
		out.ParentMem = "ok"
	}
	json.NewEncoder(os.Stdout).Encode(out)
	return 0
}

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// helperBinary copies the test binary where any uid may execute it (go
// test builds it in a private directory).
func helperBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		self, err := os.Executable()
		if err != nil {
			binErr = err
			return
		}
		dir, err := os.MkdirTemp("", "supervise-test")
		if err == nil {
			err = os.Chmod(dir, 0o755)
		}
		if err != nil {
			binErr = err
			return
		}
		data, err := os.ReadFile(self)
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "helper.test")
		binErr = os.WriteFile(binPath, data, 0o755)
	})
	if binErr != nil {
		t.Fatalf("helper binary: %v", binErr)
	}
	return binPath
}

func requireRoot(t *testing.T) {
	t.Helper()
	sockettest.RequireRoot(t, "needs root to run the workload as another uid")
}

// sharedDir returns a directory every uid may write to.
func sharedDir(t *testing.T) string {
	t.Helper()
	d := t.TempDir()
	if err := os.Chmod(d, 0o777); err != nil {
		t.Fatal(err)
	}
	return d
}

type helper struct {
	cmd            *exec.Cmd
	stdout, stderr *sockettest.Buffer
	done           chan struct{}
	code           int
}

// startSupervisor runs the supervisor helper with sp; setup may adjust
// the command before it starts.
func startSupervisor(t *testing.T, sp helperSpec, setup func(*exec.Cmd)) *helper {
	t.Helper()
	spec, err := json.Marshal(sp)
	if err != nil {
		t.Fatal(err)
	}
	h := &helper{stdout: &sockettest.Buffer{}, stderr: &sockettest.Buffer{}, done: make(chan struct{})}
	h.cmd = exec.Command(helperBinary(t))
	h.cmd.Env = []string{roleEnv + "=supervisor", specEnv + "=" + string(spec), environMarker}
	h.cmd.Stdout, h.cmd.Stderr = h.stdout, h.stderr
	h.cmd.Dir = "/"
	if setup != nil {
		setup(h.cmd)
	}
	if err := h.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		h.cmd.Wait()
		h.code = h.cmd.ProcessState.ExitCode()
		close(h.done)
	}()
	t.Cleanup(func() {
		h.cmd.Process.Kill()
		<-h.done
	})
	h.waitFor(t, "signals caught", func() bool { return strings.Contains(h.stderr.String(), caughtLine) })
	return h
}

func (h *helper) waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	// Generous: a loaded machine forks slowly, and a passing
	// condition returns at once.
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		select {
		case <-h.done:
			if cond() {
				return
			}
			t.Fatalf("supervisor exited (%d) before %s\nstderr:\n%s", h.code, what, h.stderr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s\nstderr:\n%s", what, h.stderr)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (h *helper) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-h.done:
		return h.code
	case <-time.After(d):
		t.Fatalf("supervisor still running after %v\nstderr:\n%s", d, h.stderr)
	}
	return 0
}

func (h *helper) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := h.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %v: %v", sig, err)
	}
}

func fileExists(p string) func() bool {
	return func() bool { _, err := os.Stat(p); return err == nil }
}

// The exit status is the workload's, 128+N when signal N killed it, and
// the shell's 127/126 when it cannot be started.
func TestRun_ExitStatus(t *testing.T) {
	dir := t.TempDir()
	noexec := filepath.Join(dir, "noexec")
	os.WriteFile(noexec, []byte("#!/bin/sh\n"), 0o644)
	tests := []struct {
		name string
		args []string
		want int
	}{
		{"exit 0", []string{"/bin/sh", "-c", "exit 0"}, 0},
		{"exit 7", []string{"/bin/sh", "-c", "exit 7"}, 7},
		{"killed by SIGKILL", []string{"/bin/sh", "-c", "kill -KILL $$"}, 137},
		{"killed by SIGTERM", []string{"/bin/sh", "-c", "kill -TERM $$"}, 143},
		{"not found", []string{filepath.Join(dir, "missing")}, 127},
		{"not executable", []string{noexec}, 126},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := startSupervisor(t, helperSpec{Args: tt.args}, nil)
			if got := h.wait(t, 15*time.Second); got != tt.want {
				t.Errorf("exit %d, want %d\nstderr:\n%s", got, tt.want, h.stderr)
			}
		})
	}
}

// A nil Env is an empty environment, never the supervisor's own.
func TestRun_NilEnvIsEmpty(t *testing.T) {
	h := startSupervisor(t, helperSpec{Args: []string{"/usr/bin/env"}}, nil)
	if code := h.wait(t, 15*time.Second); code != 0 {
		t.Fatalf("exit %d\n%s", code, h.stderr)
	}
	if out := h.stdout.String(); out != "" {
		t.Errorf("workload environment not empty:\n%s", out)
	}

}

func runProbe(t *testing.T, sp helperSpec, setup func(*exec.Cmd)) probeOut {
	t.Helper()
	sp.Args = []string{helperBinary(t)}
	sp.Env = append(sp.Env, roleEnv+"=probe")
	h := startSupervisor(t, sp, setup)
	if code := h.wait(t, 15*time.Second); code != 0 {
		t.Fatalf("probe: exit %d\n%s", code, h.stderr)
	}
	var out probeOut
	if err := json.Unmarshal([]byte(h.stdout.String()), &out); err != nil {
		t.Fatalf("probe output %q: %v\n%s", h.stdout, err, h.stderr)
	}
	return out
}

// Descriptors the supervisor inherited without close-on-exec do not reach
// the workload.
func TestRun_NoInheritedFDs(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	leak := func(c *exec.Cmd) { c.ExtraFiles = []*os.File{w, r} }

	// Control: a plain exec from this test does pass them on, and the
	// probe sees them.
	ctl := exec.Command(helperBinary(t))
	ctl.Env = []string{roleEnv + "=probe"}
	leak(ctl)
	b, err := ctl.Output()
	var direct probeOut
	if err != nil || json.Unmarshal(b, &direct) != nil || !slices.ContainsFunc(direct.FDs, func(s string) bool { return strings.HasPrefix(s, "4 -> pipe:") }) {
		t.Fatalf("control probe should see the leaked descriptors 3 and 4: %v %s", err, b)
	}

	if out := runProbe(t, helperSpec{}, leak); len(out.FDs) != 0 {
		t.Errorf("workload inherited descriptors: %q", out.FDs)
	}
}

// S-identity: the workload runs with exactly the uid, gid and
// supplementary groups asked for, none of the supervisor's.
func TestRun_Credential(t *testing.T) {
	requireRoot(t)
	tests := []struct {
		name string
		cred Credential
		want map[string]string
	}{
		{"groups", Credential{UID: 4242, GID: 4243, Groups: []uint32{4243, 5000}},
			map[string]string{"Uid": "4242 4242 4242 4242", "Gid": "4243 4243 4243 4243", "Groups": "4243 5000"}},
		{"no groups", Credential{UID: 4242, GID: 4242, Groups: []uint32{}},
			map[string]string{"Uid": "4242 4242 4242 4242", "Gid": "4242 4242 4242 4242", "Groups": ""}},
		{"nil groups means none", Credential{UID: 4244, GID: 4245},
			map[string]string{"Uid": "4244 4244 4244 4244", "Gid": "4245 4245 4245 4245", "Groups": ""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cred := tt.cred
			// The supervisor has supplementary groups of its own; none may
			// leak.
			out := runProbe(t, helperSpec{Cred: &cred, Dir: "/tmp"}, func(c *exec.Cmd) {
				c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 0, Gid: 0, Groups: []uint32{0, 7, 8}}}
			})
			if diff := cmp.Diff(tt.want, out.Status); diff != "" {
				t.Errorf("/proc/self/status (-want +got):\n%s", diff)
			}
			if out.Cwd != "/tmp" {
				t.Errorf("cwd %q, want /tmp", out.Cwd)
			}
		})
	}
}

// Non-dumpable is what keeps a same-uid workload out of the supervisor's
// environ and memory (the machine token's env var stays in the initial
// environment block after unsetenv). The control shows the probe can
// read them otherwise.
func TestSetNonDumpable_SameUIDCannotReadEnvironOrMem(t *testing.T) {
	asUser := func(c *exec.Cmd) {}
	if os.Geteuid() == 0 {
		// Root would get through anyway (CAP_SYS_PTRACE): run both as one
		// unprivileged uid.
		asUser = func(c *exec.Cmd) {
			c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 4246, Gid: 4246, Groups: []uint32{}}}
		}
	}
	t.Run("control: dumpable", func(t *testing.T) {
		out := runProbe(t, helperSpec{}, asUser)
		if out.ParentEnviron != "marker" {
			t.Fatalf("probe could not read a dumpable parent's environ: %q", out.ParentEnviron)
		}
	})
	t.Run("non-dumpable", func(t *testing.T) {
		out := runProbe(t, helperSpec{NonDumpable: true}, asUser)
		for name, got := range map[string]string{"environ": out.ParentEnviron, "mem": out.ParentMem} {
			if !strings.Contains(got, "permission denied") && !strings.Contains(got, "operation not permitted") {
				t.Errorf("/proc/<supervisor>/%s: %q, want EACCES or EPERM", name, got)
			}
		}
	})
}

// Signals reach the workload's process group; SIGHUP reloads instead when
// a Reload is set; SIGTERM ends it.
func TestRun_ForwardsSignals(t *testing.T) {
	dir := sharedDir(t)
	log, ready, reloaded := filepath.Join(dir, "log"), filepath.Join(dir, "ready"), filepath.Join(dir, "reloaded")
	script := fmt.Sprintf(`trap 'echo usr1 >> %[1]s' USR1; trap 'echo usr2 >> %[1]s' USR2; trap 'echo hup >> %[1]s' HUP
touch %[2]s
while :; do sleep 0.05; done`, log, ready)
	h := startSupervisor(t, helperSpec{Args: []string{"/bin/sh", "-c", script}, ReloadFile: reloaded, StopTimeout: 30 * time.Second}, nil)
	h.waitFor(t, "workload ready", fileExists(ready))
	contains := func(s string) func() bool {
		return func() bool { b, _ := os.ReadFile(log); return strings.Contains(string(b), s) }
	}
	h.signal(t, syscall.SIGUSR1)
	h.waitFor(t, "USR1 in the workload", contains("usr1"))
	h.signal(t, syscall.SIGUSR2)
	h.waitFor(t, "USR2 in the workload", contains("usr2"))
	h.signal(t, syscall.SIGHUP)
	h.waitFor(t, "reload on SIGHUP", fileExists(reloaded))
	start := time.Now()
	h.signal(t, syscall.SIGTERM)
	if code := h.wait(t, 15*time.Second); code != 143 {
		t.Errorf("exit %d after SIGTERM, want 143\n%s", code, h.stderr)
	}
	if time.Since(start) > 10*time.Second {
		t.Errorf("graceful stop took %v", time.Since(start))
	}
	if contains("hup")() {
		t.Error("SIGHUP reached the workload although Reload was set")
	}
}

// SIGHUP without a Reload is forwarded like the others.
func TestRun_ForwardsHUPWithoutReload(t *testing.T) {
	dir := sharedDir(t)
	got, ready := filepath.Join(dir, "hup"), filepath.Join(dir, "ready")
	script := fmt.Sprintf(`trap 'touch %s; exit 0' HUP; touch %s; while :; do sleep 0.05; done`, got, ready)
	h := startSupervisor(t, helperSpec{Args: []string{"/bin/sh", "-c", script}}, nil)
	h.waitFor(t, "workload ready", fileExists(ready))
	h.signal(t, syscall.SIGHUP)
	if code := h.wait(t, 15*time.Second); code != 0 {
		t.Errorf("exit %d, want 0 from the HUP trap\n%s", code, h.stderr)
	}
}

// A workload that ignores SIGTERM is killed with its whole group after the
// stop timeout.
func TestRun_StopTimeoutEscalatesToSIGKILL(t *testing.T) {
	dir := sharedDir(t)
	ready := filepath.Join(dir, "ready")
	script := fmt.Sprintf(`trap '' TERM; touch %s; while :; do sleep 0.05; done`, ready)
	h := startSupervisor(t, helperSpec{Args: []string{"/bin/sh", "-c", script}, StopTimeout: 500 * time.Millisecond}, nil)
	h.waitFor(t, "workload ready", fileExists(ready))
	start := time.Now()
	h.signal(t, syscall.SIGTERM)
	code := h.wait(t, 15*time.Second)
	took := time.Since(start)
	if code != 137 {
		t.Errorf("exit %d, want 137\n%s", code, h.stderr)
	}
	if took < 500*time.Millisecond || took > 5*time.Second {
		t.Errorf("stopped after %v, want the 500ms stop timeout", took)
	}
	if !strings.Contains(h.stderr.String(), "did not stop in time") {
		t.Errorf("no log line for the escalation:\n%s", h.stderr)
	}
}

// The context ending is a graceful stop too (the agent failed).
func TestRun_ContextEndStopsWorkload(t *testing.T) {
	dir := sharedDir(t)
	ready := filepath.Join(dir, "ready")
	h := startSupervisor(t, helperSpec{Args: []string{"/bin/sh", "-c", "touch " + ready + "; exec sleep 30"}, CancelAfter: 500 * time.Millisecond}, nil)
	h.waitFor(t, "workload ready", fileExists(ready))
	if code := h.wait(t, 15*time.Second); code != 143 {
		t.Errorf("exit %d, want 143\n%s", code, h.stderr)
	}
}

// SIGTERM while waiting for the agent: the workload is never started.
func TestRun_StopBeforeReady(t *testing.T) {
	dir := sharedDir(t)
	started := filepath.Join(dir, "started")
	h := startSupervisor(t, helperSpec{Args: []string{"/bin/sh", "-c", "touch " + started}, NeverReady: true}, nil)
	h.signal(t, syscall.SIGTERM)
	if code := h.wait(t, 15*time.Second); code != 143 {
		t.Errorf("exit %d, want 143\n%s", code, h.stderr)
	}
	if fileExists(started)() {
		t.Error("workload started after SIGTERM")
	}
}

// procChild is one child of a process, as /proc shows it.
type procChild struct {
	pid   int
	comm  string
	state byte
}

// childrenOf lists the processes whose parent is ppid.
func childrenOf(ppid int) []procChild {
	ents, _ := os.ReadDir("/proc")
	var out []procChild
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...; comm may hold spaces and parentheses.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 2 {
			continue
		}
		if p, _ := strconv.Atoi(f[1]); p == ppid {
			out = append(out, procChild{pid: pid, comm: s[strings.IndexByte(s, '(')+1 : i], state: f[0][0]})
		}
	}
	return out
}

// Orphans reparented to the supervisor (subreaper) are reaped: a burst of
// 100 leaves no zombie behind.
func TestRun_ReapsOrphans(t *testing.T) {
	dir := sharedDir(t)
	burst := filepath.Join(dir, "burst")
	script := fmt.Sprintf(`i=0; while [ $i -lt 100 ]; do (sleep 0.3 &); i=$((i+1)); done; touch %s; exec sleep 60`, burst)
	h := startSupervisor(t, helperSpec{Args: []string{"/bin/sh", "-c", script}}, nil)
	pid := h.cmd.Process.Pid
	seen := map[int]bool{}
	h.waitFor(t, "burst of orphans", func() bool {
		for _, c := range childrenOf(pid) {
			seen[c.pid] = true
		}
		return fileExists(burst)()
	})
	var last []procChild
	h.waitFor(t, "every orphan reaped", func() bool {
		last = childrenOf(pid)
		for _, c := range last {
			seen[c.pid] = true
		}
		return len(last) == 1 && last[0].state != 'Z'
	})
	if len(seen) < 10 {
		t.Errorf("saw %d children of the supervisor: orphans were not reparented to it", len(seen))
	}
	h.signal(t, syscall.SIGTERM)
	if code := h.wait(t, 15*time.Second); code != 143 {
		t.Errorf("exit %d, want 143\n%s", code, h.stderr)
	}
}

// On an interactive terminal the workload's own process group becomes the
// terminal's foreground group: otherwise reading it would stop the
// workload with SIGTTIN, and ^C would go to the supervisor instead.
func TestRun_TerminalForeground(t *testing.T) {
	ptmx, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		sockettest.Unavailable(t, "no pseudo-terminal: %v", err)
	}
	defer ptmx.Close()
	if err := unix.IoctlSetPointerInt(int(ptmx.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(ptmx.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	pts, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer pts.Close()

	out := runProbe(t, helperSpec{}, func(c *exec.Cmd) {
		// The supervisor leads a session whose controlling terminal is
		// pts, as in `docker run -it`.
		c.Stdin = pts
		c.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	})
	if out.Pgrp == 0 || out.TPGID != out.Pgrp {
		t.Errorf("workload group %d, terminal foreground group %d: want the workload's", out.Pgrp, out.TPGID)
	}

	// Without a terminal nothing of the sort is attempted.
	if out := runProbe(t, helperSpec{}, nil); out.TPGID != -1 {
		t.Errorf("no terminal: tpgid %d, want -1", out.TPGID)
	}
}
