// Package supervise runs one workload process the way a container's init
// does: under a dropped identity, with a scrubbed environment and no
// descriptor beyond 0–2, in its own process group that receives the
// signals this process gets, with every orphan reparented here reaped, and
// with its exit status reported so the caller can exit with it.
//
// A Supervisor reaps every child of the process (wait4(-1)): a program
// that uses it must not start other children and wait for them itself.
package supervise

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"syscall"
	"time"
)

// ErrUnsupported is returned on systems other than Linux.
var ErrUnsupported = errors.New("supervise: only supported on Linux")

// DefaultStopTimeout is how long a graceful stop waits after SIGTERM
// before it kills the workload's process group.
const DefaultStopTimeout = 10 * time.Second

// Config describes the workload.
type Config struct {
	// Path is the executable, already looked up; Args is the whole argv,
	// Args[0] included.
	Path string
	Args []string
	// Dir is the working directory, entered as the workload's user; ""
	// keeps this process's.
	Dir string
	// Env is the complete environment (see ChildEnv). Nil means an empty
	// environment, never this process's.
	Env []string
	// Cred, when set, is the identity the workload runs as: setgroups,
	// setgid, setuid, in that order, before exec. Nil keeps this
	// process's identity.
	Cred *Credential
	// Stdin, Stdout and Stderr become the workload's descriptors 0–2;
	// nil means this process's own. A workload of another uid (Cred)
	// never gets a terminal among them: each that is one is replaced by
	// a pseudo-terminal of the workload's own, relayed to it, and the
	// workload runs in a session of its own.
	Stdin, Stdout, Stderr *os.File
	// StopTimeout is how long a graceful stop (SIGTERM to this process,
	// or the context of Run ending) waits before SIGKILL; zero means
	// DefaultStopTimeout.
	StopTimeout time.Duration
	// Reload, when set, is called on SIGHUP instead of forwarding it. Calls
	// run one at a time on a goroutine of their own, so a slow reload does
	// not hold up reaping or forwarding; SIGHUPs that arrive during a
	// reload are folded into one more call.
	Reload func()
	Logger *slog.Logger
}

// Status is how the workload ended.
type Status struct {
	// Code is the exit code when the workload exited.
	Code int
	// Signal is the signal that killed it, 0 when it exited.
	Signal syscall.Signal
}

// ExitCode follows the shell's convention: the exit code, or 128 plus the
// number of the signal that killed the workload.
func (s Status) ExitCode() int {
	if s.Signal != 0 {
		return 128 + int(s.Signal)
	}
	return s.Code
}

func (s Status) String() string {
	if s.Signal != 0 {
		return fmt.Sprintf("killed by %v", s.Signal)
	}
	return fmt.Sprintf("exit status %d", s.Code)
}

// StartError means the workload could not be started at all.
type StartError struct {
	Path string
	Err  error
}

func (e *StartError) Error() string { return fmt.Sprintf("start %s: %v", e.Path, e.Err) }
func (e *StartError) Unwrap() error { return e.Err }

// ExitCode follows the shell's convention: 127 when the executable (or
// the working directory) does not exist, 126 when it cannot be run.
func (e *StartError) ExitCode() int {
	if errors.Is(e.Err, fs.ErrNotExist) {
		return 127
	}
	return 126
}
