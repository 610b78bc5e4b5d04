package supervise

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// forwarded are the signals passed on to the workload's process group.
// SIGHUP is forwarded too unless Config.Reload is set.
var forwarded = []os.Signal{unix.SIGTERM, unix.SIGINT, unix.SIGQUIT, unix.SIGUSR1, unix.SIGUSR2, unix.SIGWINCH}

// reapInterval is how often Run reaps without being told to. SIGCHLD is
// the trigger, but standard signals coalesce and a full channel drops
// them; missing the workload's exit would leave it a zombie and this
// process waiting forever.
const reapInterval = time.Second

// Supervisor runs one workload. Create it with New, run it with Run.
type Supervisor struct {
	cfg  Config
	log  *slog.Logger
	sigs chan os.Signal
	// tty is the workload's own terminal, when it has one (see start).
	tty *ttyRelay
}

// New checks cfg, makes this process the reaper of its orphaned
// descendants (PR_SET_CHILD_SUBREAPER, unless it is PID 1 already) and
// starts catching signals: from now on SIGTERM, SIGINT, SIGQUIT, SIGUSR1,
// SIGUSR2, SIGWINCH, SIGHUP and SIGCHLD belong to the Supervisor until
// Close. It does not start the workload.
func New(cfg Config) (*Supervisor, error) {
	if cfg.Path == "" || len(cfg.Args) == 0 {
		return nil, errors.New("supervise: no command")
	}
	if cfg.StopTimeout <= 0 {
		cfg.StopTimeout = DefaultStopTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Stdin == nil {
		cfg.Stdin = os.Stdin
	}
	if cfg.Stdout == nil {
		cfg.Stdout = os.Stdout
	}
	if cfg.Stderr == nil {
		cfg.Stderr = os.Stderr
	}
	if err := BecomeSubreaper(); err != nil {
		return nil, err
	}
	s := &Supervisor{cfg: cfg, log: cfg.Logger, sigs: make(chan os.Signal, 128)}
	signal.Notify(s.sigs, append(forwarded, unix.SIGHUP, unix.SIGCHLD)...)
	return s, nil
}

// Close stops catching signals: they get their default action again.
func (s *Supervisor) Close() { signal.Stop(s.sigs) }

// SetEnv replaces the workload's environment. Call it before closing the
// ready channel given to Run: the workload starts with what is set then.
func (s *Supervisor) SetEnv(env []string) { s.cfg.Env = env }

// Run waits until ready is closed (nil: at once), starts the workload and
// supervises it until it exits, then returns how it ended. Until then it
// forwards signals to the workload's process group and reaps every child
// of this process. SIGTERM, or ctx ending, starts a graceful stop: SIGTERM
// to the group, then SIGKILL after the stop timeout.
//
// SIGTERM, SIGINT or SIGQUIT before ready means the workload is never
// started: Run returns that signal as the Status. ctx ending before ready
// returns ctx's error. A workload that cannot be started is a
// *StartError.
func (s *Supervisor) Run(ctx context.Context, ready <-chan struct{}) (Status, error) {
	reloads := make(chan struct{}, 1)
	done := make(chan struct{})
	var wg sync.WaitGroup
	defer func() {
		close(done)
		wg.Wait()
	}()
	if s.cfg.Reload != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				case <-reloads:
					s.cfg.Reload()
				}
			}
		}()
	}
	hup := func() {
		select {
		case reloads <- struct{}{}:
		default: // one is pending already
		}
	}

	for ready != nil {
		select {
		case <-ready:
			ready = nil
		case <-ctx.Done():
			return Status{}, ctx.Err()
		case sig := <-s.sigs:
			switch sig {
			case unix.SIGCHLD:
				s.reap(0)
			case unix.SIGHUP:
				if s.cfg.Reload != nil {
					hup()
				}
			case unix.SIGTERM, unix.SIGINT, unix.SIGQUIT:
				s.log.Info("stopped before the workload started", "signal", sig.String())
				return Status{Signal: sig.(syscall.Signal)}, nil
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return Status{}, err
	}

	pid, err := s.start()
	if err != nil {
		return Status{}, err
	}
	if s.tty != nil {
		// Also when Run returns on a path not foreseen below: the
		// invoker's terminal must not stay raw.
		defer s.tty.close()
	}
	attrs := []any{"pid", pid, "path", s.cfg.Path}
	if c := s.cfg.Cred; c != nil {
		attrs = append(attrs, "uid", c.UID, "gid", c.GID, "groups", c.Groups)
	}
	s.log.Info("workload started", attrs...)

	tick := time.NewTicker(reapInterval)
	defer tick.Stop()
	var (
		stopTimer *time.Timer
		stopC     <-chan time.Time
	)
	defer func() {
		if stopTimer != nil {
			stopTimer.Stop()
		}
	}()
	beginStop := func(reason string) {
		if stopTimer != nil {
			return
		}
		s.log.Info("stopping workload", "reason", reason, "stop_timeout", s.cfg.StopTimeout)
		stopTimer = time.NewTimer(s.cfg.StopTimeout)
		stopC = stopTimer.C
	}
	ctxDone := ctx.Done()
	for {
		select {
		case sig := <-s.sigs:
			switch {
			case sig == unix.SIGCHLD:
				if st, ok := s.reap(pid); ok {
					s.exited(pid, st)
					return st, nil
				}
			case sig == unix.SIGHUP && s.cfg.Reload != nil:
				hup()
			case sig == unix.SIGWINCH && s.tty != nil:
				// The invoker's terminal changed size: so does the
				// workload's, and the kernel tells its foreground group.
				s.tty.resize()
			default:
				s.signal(pid, sig.(syscall.Signal))
				if sig == unix.SIGTERM {
					beginStop("SIGTERM")
				}
			}
		case <-tick.C:
			if st, ok := s.reap(pid); ok {
				s.exited(pid, st)
				return st, nil
			}
		case <-ctxDone:
			ctxDone = nil
			s.signal(pid, unix.SIGTERM)
			beginStop(context.Cause(ctx).Error())
		case <-stopC:
			stopC = nil
			s.log.Warn("workload did not stop in time; killing its process group", "pid", pid, "stop_timeout", s.cfg.StopTimeout)
			s.signal(pid, unix.SIGKILL)
		}
	}
}

func (s *Supervisor) exited(pid int, st Status) {
	if s.tty != nil {
		// The workload's last output is displayed before the log line.
		s.tty.close()
	}
	s.log.Info("workload exited", "pid", pid, "status", st.String(), "exit_code", st.ExitCode())
}

// start starts the workload in a process group of its own.
func (s *Supervisor) start() (int, error) {
	// Go opens every descriptor close-on-exec, but descriptors this process
	// inherited (a leaked pipe, a socket from the container runtime) may
	// not be: the workload gets 0–2 and nothing else.
	if err := closeOnExecFrom(3); err != nil {
		return 0, fmt.Errorf("supervise: mark descriptors close-on-exec: %w", err)
	}
	files := []*os.File{s.cfg.Stdin, s.cfg.Stdout, s.cfg.Stderr}
	attr := &syscall.SysProcAttr{Setpgid: true}
	var slave *os.File
	switch {
	case s.otherUID() && slices.ContainsFunc(files, func(f *os.File) bool { return isTerminal(int(f.Fd())) }):
		// The invoker's terminal must stay out of reach of a workload of
		// another uid (see ttyRelay): it gets a pty of its own, in a
		// session of its own whose controlling terminal that pty is.
		tty, sl, ctty, err := newTTYRelay(files, s.cfg.Cred.UID, s.log)
		if err != nil {
			// Fail closed: without a pty of its own the workload would
			// get the invoker's terminal. %v, not %w: a missing
			// /dev/ptmx is not a missing CMD (127).
			return 0, &StartError{Path: s.cfg.Path, Err: fmt.Errorf("pseudo-terminal: %v", err)}
		}
		s.tty, slave = tty, sl
		attr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: ctty}
		s.log.Info("the workload gets a pseudo-terminal of its own", "pty", sl.Name(), "relay_input", tty.in >= 0)
	case s.otherUID() && hasControllingTTY():
		// No terminal on 0–2, but one controls this process's session:
		// a new session keeps the workload from opening it as /dev/tty.
		attr = &syscall.SysProcAttr{Setsid: true}
	default:
		if fd := int(s.cfg.Stdin.Fd()); foregroundTTY(fd) {
			// An interactive terminal: the workload's group must be its
			// foreground group, or reading it would stop the workload
			// (SIGTTIN) now that it has a group of its own.
			attr.Foreground, attr.Ctty = true, fd
		}
	}
	if c := s.cfg.Cred; c != nil {
		groups := c.Groups
		if groups == nil {
			groups = []uint32{} // setgroups(0): none, never ours
		}
		attr.Credential = &syscall.Credential{Uid: c.UID, Gid: c.GID, Groups: groups}
	}
	env := s.cfg.Env
	if env == nil {
		env = []string{} // nil would hand the workload our environment
	}
	p, err := os.StartProcess(s.cfg.Path, s.cfg.Args, &os.ProcAttr{
		Dir:   s.cfg.Dir,
		Env:   env,
		Files: files,
		Sys:   attr,
	})
	if slave != nil {
		// The workload holds it now: the relay sees EIO once it, and
		// whatever it passed the pty on to, are gone.
		slave.Close()
	}
	if err != nil {
		if s.tty != nil {
			s.tty.close()
			s.tty = nil
		}
		return 0, &StartError{Path: s.cfg.Path, Err: err}
	}
	if s.tty != nil {
		if err := s.tty.start(); err != nil {
			s.log.Warn("terminal relay incomplete", "err", err)
		}
	}
	pid := p.Pid
	// Run collects the workload with wait4 like every other child, never
	// through p.
	p.Release()
	return pid, nil
}

// signal sends sig to the workload's process group. The group is named by
// the workload's pid, which the kernel cannot hand to another process
// before reap has collected the workload, and Run never signals after
// that: the signal cannot reach a stranger.
func (s *Supervisor) signal(pid int, sig syscall.Signal) {
	err := unix.Kill(-pid, sig)
	if pg, perr := unix.Getpgid(pid); perr == nil && pg != pid {
		// The workload moved to another group or session: tell it too.
		err = errors.Join(err, unix.Kill(pid, sig))
	}
	if err != nil && !errors.Is(err, unix.ESRCH) {
		s.log.Warn("signal workload failed", "pid", pid, "signal", sig.String(), "err", err)
		return
	}
	s.log.Debug("signal forwarded", "pid", pid, "signal", sig.String())
}

// reap collects every child that has exited, the workload and orphans
// alike; ok reports whether the workload (pid main) was among them.
func (s *Supervisor) reap(main int) (st Status, ok bool) {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || pid <= 0 { // ECHILD: no children; 0: none has exited
			return st, ok
		}
		if main > 0 && pid == main {
			st, ok = statusOf(ws), true
			continue
		}
		s.log.Debug("reaped orphan", "pid", pid, "status", statusOf(ws).String())
	}
}

func statusOf(ws unix.WaitStatus) Status {
	if ws.Signaled() {
		return Status{Signal: ws.Signal()}
	}
	return Status{Code: ws.ExitStatus()}
}

// otherUID reports whether the workload runs as another uid than this
// process.
func (s *Supervisor) otherUID() bool {
	return s.cfg.Cred != nil && s.cfg.Cred.UID != uint32(os.Geteuid())
}

// foregroundTTY reports whether fd is this process's controlling terminal
// and this process's group is in its foreground.
func foregroundTTY(fd int) bool {
	pgrp, err := unix.IoctlGetInt(fd, unix.TIOCGPGRP)
	return err == nil && pgrp == unix.Getpgrp()
}

// closeOnExecFrom marks every descriptor from first up close-on-exec.
func closeOnExecFrom(first int) error {
	err := unix.CloseRange(uint(first), math.MaxUint32, unix.CLOSE_RANGE_CLOEXEC)
	if err == nil {
		return nil
	}
	// Before Linux 5.11: one by one.
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return err
	}
	for _, e := range ents {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd >= first {
			unix.CloseOnExec(fd)
		}
	}
	return nil
}

// SetNonDumpable marks this process non-dumpable (PR_SET_DUMPABLE 0): no
// core dump, and its /proc/<pid>/environ, mem, fd and maps as well as
// ptrace are closed to every process without CAP_SYS_PTRACE, including
// processes of the same user. Call it before a secret enters the process;
// a secret in the initial environment block stays in memory after unsetenv,
// and this is what keeps /proc/<pid>/environ from showing it.
func SetNonDumpable() error {
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return fmt.Errorf("prctl(PR_SET_DUMPABLE, 0): %w", err)
	}
	return nil
}

// Dumpable reports whether this process is dumpable.
func Dumpable() (bool, error) {
	n, err := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0)
	return n != 0, err
}

// BecomeSubreaper makes orphaned descendants of this process its children
// (PR_SET_CHILD_SUBREAPER), as they would be for PID 1, so that a
// Supervisor reaps them. It does nothing in PID 1, which is their reaper
// already.
func BecomeSubreaper() error {
	if os.Getpid() == 1 {
		return nil
	}
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("prctl(PR_SET_CHILD_SUBREAPER): %w", err)
	}
	return nil
}
