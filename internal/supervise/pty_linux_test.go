package supervise

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/wicket-sh/wicket/internal/sockettest"
)

// The workload's uid in these tests: unprivileged, without capabilities,
// so TIOCSTI works for it only on its own controlling terminal.
const ttyTestUID = 65534

// Environment of the tty probe (role "ttyprobe").
const (
	ttyOutEnv  = "SUPERVISE_TEST_TTY_OUT"
	ttyMarkEnv = "SUPERVISE_TEST_TTY_MARK"
)

// ttyReport is what the tty probe learned and tried.
type ttyReport struct {
	// Rdevs maps every open descriptor that is a character device to its
	// device number.
	Rdevs map[int]uint64
	// DevTTY is the device /dev/tty opened as (the controlling terminal),
	// DevTTYErr why it could not be opened.
	DevTTY    uint64
	DevTTYErr string
	// InjectStdin and InjectDevTTY are the results of TIOCSTI on fd 0 and
	// on /dev/tty: "ok" or the error.
	InjectStdin, InjectDevTTY string
}

// ttyProbeMain is a hostile workload: it pushes a line into every terminal
// it can reach with TIOCSTI, as a workload would to have the invoker's
// root shell run it after the agent exits.
func ttyProbeMain() int {
	var r ttyReport
	r.Rdevs = map[int]uint64{}
	for fd := 0; fd < 64; fd++ {
		var st unix.Stat_t
		if unix.Fstat(fd, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFCHR {
			r.Rdevs[fd] = ttyDev(fd, st.Rdev)
		}
	}
	mark := os.Getenv(ttyMarkEnv)
	r.InjectStdin = inject(0, mark+"-stdin\n")
	if fd, err := unix.Open("/dev/tty", unix.O_RDWR|unix.O_CLOEXEC, 0); err != nil {
		r.DevTTYErr = err.Error()
	} else {
		r.DevTTY = ttyDev(fd, 0)
		r.InjectDevTTY = inject(fd, mark+"-devtty\n")
		unix.Close(fd)
	}
	b, _ := json.Marshal(r)
	if err := os.WriteFile(os.Getenv(ttyOutEnv), b, 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	fmt.Println("tty probe done")
	return 0
}

// ttyDev is the device of the terminal behind fd (which /dev/tty's own
// device number hides), or rdev when fd is not a terminal.
func ttyDev(fd int, rdev uint64) uint64 {
	if d, err := unix.IoctlGetUint32(fd, unix.TIOCGDEV); err == nil {
		return uint64(d)
	}
	return rdev
}

// inject pushes s into the input queue of the terminal fd, a byte at a
// time (TIOCSTI).
func inject(fd int, s string) string {
	for i := 0; i < len(s); i++ {
		b := s[i]
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TIOCSTI, uintptr(unsafe.Pointer(&b))); e != 0 {
			return e.Error()
		}
	}
	return "ok"
}

// invokerTTY is a pseudo-terminal standing for the terminal wicket was
// started from: the supervisor gets slave as its controlling terminal, the
// test plays the user at the master.
type invokerTTY struct {
	master, slave *os.File
	mfd, sfd      int
	rdev          uint64
	out           *sockettest.Buffer // everything the supervisor displayed
	outDone       chan struct{}
	// stalled, while set, stops reading the terminal's output, as a
	// terminal does after ^S or a stalled ssh session.
	stalled atomic.Bool
}

func newInvokerTTY(t *testing.T) *invokerTTY {
	t.Helper()
	// Non-blocking, so that the master is pollable and Close ends the
	// reader below.
	mfd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		sockettest.Unavailable(t, "no pseudo-terminal: %v", err)
	}
	p := &invokerTTY{mfd: mfd, master: os.NewFile(uintptr(mfd), "ptmx"), out: &sockettest.Buffer{}, outDone: make(chan struct{})}
	if err := unix.IoctlSetPointerInt(mfd, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(mfd, unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	sfd, err := unix.Open(fmt.Sprintf("/dev/pts/%d", n), unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	p.sfd, p.slave = sfd, os.NewFile(uintptr(sfd), "pts")
	var st unix.Stat_t
	if err := unix.Fstat(sfd, &st); err != nil {
		t.Fatal(err)
	}
	p.rdev = st.Rdev
	go func() {
		defer close(p.outDone)
		buf := make([]byte, 4096)
		for {
			for p.stalled.Load() {
				time.Sleep(5 * time.Millisecond)
			}
			n, err := p.master.Read(buf)
			p.out.Write(buf[:n])
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() {
		p.master.Close()
		<-p.outDone
		p.slave.Close()
	})
	return p
}

// attach makes the terminal the supervisor's stdin, stdout and controlling
// terminal, as a shell does for a foreground command; stderr stays the
// test's pipe, which carries the supervisor's log.
func (p *invokerTTY) attach(c *exec.Cmd) {
	c.Stdin, c.Stdout = p.slave, p.slave
	c.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
}

func (p *invokerTTY) termios(t *testing.T) unix.Termios {
	t.Helper()
	tio, err := unix.IoctlGetTermios(p.sfd, unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	return *tio
}

func (p *invokerTTY) setSize(t *testing.T, rows, cols uint16) {
	t.Helper()
	if err := unix.IoctlSetWinsize(p.mfd, unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols}); err != nil {
		t.Fatal(err)
	}
}

// pendingInput is what a program reading the terminal after the run (the
// invoker's shell) would get.
func (p *invokerTTY) pendingInput(t *testing.T) string {
	t.Helper()
	tio := p.termios(t)
	// Non-canonical, VMIN 0: a read returns at once with whatever is
	// queued, complete line or not.
	tio.Lflag &^= unix.ICANON | unix.ECHO
	tio.Cc[unix.VMIN], tio.Cc[unix.VTIME] = 0, 0
	if err := unix.IoctlSetTermios(p.sfd, unix.TCSETS, &tio); err != nil {
		t.Fatal(err)
	}
	var got []byte
	buf := make([]byte, 4096)
	for i := 0; i < 64; i++ {
		n, err := unix.Read(p.sfd, buf)
		if n <= 0 || err != nil {
			break
		}
		got = append(got, buf[:n]...)
	}
	return string(got)
}

// enableTIOCSTI turns on dev.tty.legacy_tiocsti for the test where the
// kernel has it off, so that the attack is real. It reports whether
// TIOCSTI is available to an unprivileged process.
func enableTIOCSTI(t *testing.T) bool {
	t.Helper()
	const knob = "/proc/sys/dev/tty/legacy_tiocsti"
	b, err := os.ReadFile(knob)
	if errors.Is(err, os.ErrNotExist) {
		return true // a kernel from before the knob: always on
	}
	if err != nil {
		t.Logf("%s: %v", knob, err)
		return false
	}
	if strings.TrimSpace(string(b)) == "1" {
		return true
	}
	if err := os.WriteFile(knob, []byte("1"), 0o644); err != nil {
		t.Logf("cannot enable %s (%v): checking isolation only", knob, err)
		return false
	}
	t.Cleanup(func() { os.WriteFile(knob, b, 0o644) })
	return true
}

// workloadDir is a directory the workload's uid can reach and write to
// (t.TempDir's parent is private to root).
func workloadDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "supervise-tty")
	if err == nil {
		err = os.Chmod(d, 0o777)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func readTTYReport(t *testing.T, path string) ttyReport {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("tty probe report: %v", err)
	}
	var r ttyReport
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("tty probe report %q: %v", b, err)
	}
	return r
}

// S-tty: a workload of another uid started from an interactive terminal
// holds no descriptor to that terminal and does not have it as its
// controlling terminal, so TIOCSTI cannot queue input that the invoker's
// (root) shell would read and run once the agent has exited.
func TestRun_WorkloadCannotInjectIntoInvokerTTY(t *testing.T) {
	sockettest.RequireRoot(t)
	tiocsti := enableTIOCSTI(t)
	tty := newInvokerTTY(t)
	before := tty.termios(t)
	report := filepath.Join(workloadDir(t), "report")
	const mark = "INJECTED-BY-WORKLOAD"
	h := startSupervisor(t, helperSpec{
		Args: []string{helperBinary(t)},
		Env:  []string{roleEnv + "=ttyprobe", ttyOutEnv + "=" + report, ttyMarkEnv + "=" + mark},
		Cred: &Credential{UID: ttyTestUID, GID: ttyTestUID},
	}, tty.attach)
	if code := h.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("exit %d\n%s", code, h.stderr)
	}
	r := readTTYReport(t, report)
	for fd, rdev := range r.Rdevs {
		if rdev == tty.rdev {
			t.Errorf("workload fd %d is the invoker's terminal", fd)
		}
	}
	if r.DevTTYErr == "" && r.DevTTY == tty.rdev {
		t.Errorf("the invoker's terminal is the workload's controlling terminal (TIOCSTI on /dev/tty: %s)", r.InjectDevTTY)
	}
	waitOutput(t, tty, "tty probe done")
	if after := tty.termios(t); after != before {
		t.Errorf("terminal mode not restored:\nbefore %+v\nafter  %+v", before, after)
	}
	if got := tty.pendingInput(t); strings.Contains(got, mark) {
		t.Errorf("the workload queued input on the invoker's terminal (TIOCSTI on fd 0: %s, on /dev/tty: %s): the shell would read %q", r.InjectStdin, r.InjectDevTTY, got)
	}
	if tiocsti && r.InjectStdin != "ok" {
		// The attempt must have been real: on its own terminal TIOCSTI
		// works, so the check above is not passing for want of it.
		t.Errorf("TIOCSTI on the workload's own terminal failed (%s): the test proves nothing", r.InjectStdin)
	}
}

// S-tty: with no terminal on 0–2 but one controlling this process (the
// agent started with its output redirected from an interactive shell), a
// workload of another uid cannot open it through /dev/tty.
func TestRun_WorkloadCannotOpenInvokerCtty(t *testing.T) {
	sockettest.RequireRoot(t)
	tty := newInvokerTTY(t)
	report := filepath.Join(workloadDir(t), "report")
	h := startSupervisor(t, helperSpec{
		Args: []string{helperBinary(t)},
		Env:  []string{roleEnv + "=ttyprobe", ttyOutEnv + "=" + report, ttyMarkEnv + "=INJECTED"},
		Cred: &Credential{UID: ttyTestUID, GID: ttyTestUID},
	}, func(c *exec.Cmd) {
		// The terminal is fd 3 of the supervisor only, which its
		// workload does not inherit.
		c.ExtraFiles = []*os.File{tty.slave}
		c.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 3}
	})
	if code := h.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("exit %d\n%s", code, h.stderr)
	}
	r := readTTYReport(t, report)
	if r.DevTTYErr == "" {
		t.Errorf("workload opened /dev/tty (device %#x, invoker's %#x; TIOCSTI: %s)", r.DevTTY, tty.rdev, r.InjectDevTTY)
	}
	if got := tty.pendingInput(t); strings.Contains(got, "INJECTED") {
		t.Errorf("the workload queued input on the invoker's terminal: %q", got)
	}
	if out := h.stdout.String(); out != "tty probe done\n" {
		t.Errorf("workload stdout %q, want the pipe it was given", out)
	}
}

func waitOutput(t *testing.T, tty *invokerTTY, want string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(tty.out.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("terminal never showed %q; it showed %q", want, tty.out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The workload's terminal behaves like the invoker's: what it writes is
// displayed, the window size is the invoker's and follows it, ^C typed at
// the terminal interrupts it, its exit status is wicket's, and the
// terminal's mode is the same afterwards.
func TestRun_WorkloadTerminalRelay(t *testing.T) {
	sockettest.RequireRoot(t)
	cred := &Credential{UID: ttyTestUID, GID: ttyTestUID}
	t.Run("output, size and exit status", func(t *testing.T) {
		tty := newInvokerTTY(t)
		tty.setSize(t, 33, 111)
		before := tty.termios(t)
		h := startSupervisor(t, helperSpec{Args: []string{"/bin/sh", "-c", "echo relayed-output; stty size; exit 7"}, Cred: cred}, tty.attach)
		if code := h.wait(t, 30*time.Second); code != 7 {
			t.Errorf("exit %d, want 7\n%s", code, h.stderr)
		}
		waitOutput(t, tty, "relayed-output")
		waitOutput(t, tty, "33 111")
		if after := tty.termios(t); after != before {
			t.Errorf("terminal mode not restored:\nbefore %+v\nafter  %+v", before, after)
		}
	})
	t.Run("window size change", func(t *testing.T) {
		tty := newInvokerTTY(t)
		tty.setSize(t, 24, 80)
		dir := workloadDir(t)
		size, ready := filepath.Join(dir, "size"), filepath.Join(dir, "ready")
		script := fmt.Sprintf(`trap 'stty size > %[1]s' WINCH; stty size > %[1]s; touch %[2]s; while :; do sleep 0.05; done`, size, ready)
		h := startSupervisor(t, helperSpec{Args: []string{"/bin/sh", "-c", script}, Cred: cred}, tty.attach)
		h.waitFor(t, "workload ready", fileExists(ready))
		tty.setSize(t, 44, 122)
		h.waitFor(t, "new size in the workload", func() bool {
			b, _ := os.ReadFile(size)
			return strings.TrimSpace(string(b)) == "44 122"
		})
		h.signal(t, syscall.SIGTERM)
		if code := h.wait(t, 30*time.Second); code != 143 {
			t.Errorf("exit %d, want 143\n%s", code, h.stderr)
		}
	})
	t.Run("^C", func(t *testing.T) {
		tty := newInvokerTTY(t)
		before := tty.termios(t)
		ready := filepath.Join(workloadDir(t), "ready")
		h := startSupervisor(t, helperSpec{Args: []string{"/bin/sh", "-c", "touch " + ready + "; exec sleep 60"}, Cred: cred}, tty.attach)
		h.waitFor(t, "workload ready", fileExists(ready))
		if _, err := tty.master.Write([]byte{0x03}); err != nil {
			t.Fatal(err)
		}
		if code := h.wait(t, 30*time.Second); code != 130 {
			t.Errorf("exit %d, want 130 (SIGINT)\n%s", code, h.stderr)
		}
		if strings.Contains(h.stderr.String(), "signal=interrupt") {
			// The invoker's terminal sent SIGINT to wicket, which passed
			// it on: ^C would not reach a program the workload runs in
			// the foreground of its own terminal.
			t.Errorf("^C reached the supervisor, not the workload's terminal:\n%s", h.stderr)
		}
		if after := tty.termios(t); after != before {
			t.Errorf("terminal mode not restored:\nbefore %+v\nafter  %+v", before, after)
		}
	})
	t.Run("input", func(t *testing.T) {
		tty := newInvokerTTY(t)
		dir := workloadDir(t)
		got, ready := filepath.Join(dir, "got"), filepath.Join(dir, "ready")
		h := startSupervisor(t, helperSpec{Args: []string{"/bin/sh", "-c", fmt.Sprintf("touch %s; read line; echo \"$line\" > %s", ready, got)}, Cred: cred}, tty.attach)
		h.waitFor(t, "workload ready", fileExists(ready))
		if _, err := tty.master.Write([]byte("typed-line\r")); err != nil {
			t.Fatal(err)
		}
		if code := h.wait(t, 30*time.Second); code != 0 {
			t.Errorf("exit %d\n%s", code, h.stderr)
		}
		if b, _ := os.ReadFile(got); string(b) != "typed-line\n" {
			t.Errorf("workload read %q, want the typed line", b)
		}
	})
}

// TestRun_TerminalRepliesNotLeftForInvokerShell: a terminal answers some
// escape sequences (here the cursor-position query ESC[6n) by typing the
// answer. An answer to what the workload printed last arrives after input
// stopped being relayed; it must not wait in the invoker's terminal for
// the root shell to read as a command line.
func TestRun_TerminalRepliesNotLeftForInvokerShell(t *testing.T) {
	sockettest.RequireRoot(t)
	tty := newInvokerTTY(t)
	replied := make(chan struct{})
	go func() { // the terminal emulator
		defer close(replied)
		for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
			if strings.Contains(tty.out.String(), "\x1b[6n") {
				tty.master.Write([]byte("\x1b[12;1R"))
				return
			}
		}
	}()
	h := startSupervisor(t, helperSpec{Args: []string{"/bin/sh", "-c", `printf '\033[6n'; exit 0`}, Cred: &Credential{UID: ttyTestUID, GID: ttyTestUID}}, tty.attach)
	if code := h.wait(t, 30*time.Second); code != 0 {
		t.Errorf("exit %d\n%s", code, h.stderr)
	}
	<-replied
	time.Sleep(20 * time.Millisecond) // let the reply reach the input queue
	if got := tty.pendingInput(t); got != "" {
		t.Errorf("the invoker's shell would read %q", got)
	}
}

// TestRun_StalledTerminalDoesNotHangWicket: when the invoker's terminal
// stops taking output, the workload blocks on its pty; once it is
// stopped, wicket must still exit (and restore the terminal) instead of
// waiting forever to write the rest.
func TestRun_StalledTerminalDoesNotHangWicket(t *testing.T) {
	sockettest.RequireRoot(t)
	tty := newInvokerTTY(t)
	before := tty.termios(t)
	tty.stalled.Store(true)
	h := startSupervisor(t, helperSpec{Args: []string{"/bin/sh", "-c", "while :; do echo flooding-the-terminal-flooding-the-terminal; done"}, Cred: &Credential{UID: ttyTestUID, GID: ttyTestUID}}, tty.attach)
	time.Sleep(300 * time.Millisecond) // every buffer on the way fills
	h.signal(t, syscall.SIGTERM)
	if code := h.wait(t, 20*time.Second); code != 143 {
		t.Errorf("exit %d, want 143\n%s", code, h.stderr)
	}
	if after := tty.termios(t); after != before {
		t.Errorf("terminal mode not restored:\nbefore %+v\nafter  %+v", before, after)
	}
	tty.stalled.Store(false)
}

// Log lines written to a terminal that a relay has put in raw mode still
// start at the left margin; anywhere else they are left alone.
func TestTerminalWriter_CRLFOnlyOnRawTerminal(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "log")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if w := TerminalWriter(f); w != io.Writer(f) {
		t.Errorf("a file gets %T, want the file itself", w)
	}

	tty := newInvokerTTY(t)
	w := TerminalWriter(tty.slave)
	w.Write([]byte("cooked\n"))
	waitOutput(t, tty, "cooked\r\n") // the terminal's own ONLCR
	raw := tty.termios(t)
	raw.Oflag &^= unix.OPOST
	if err := unix.IoctlSetTermios(tty.sfd, unix.TCSETS, &raw); err != nil {
		t.Fatal(err)
	}
	if n, err := w.Write([]byte("raw 1\nraw 2\n")); n != 12 || err != nil {
		t.Fatalf("write: %d, %v", n, err)
	}
	waitOutput(t, tty, "raw 1\r\nraw 2\r\n")
	if strings.Contains(tty.out.String(), "\r\r") {
		t.Errorf("doubled CR: %q", tty.out.String())
	}
}
