// Package spire runs real SPIRE v1.13.3 binaries (spire-server and
// spire-agent, built by .ci/spire.sh into WICKET_SPIRE_BIN_DIR) for the
// tests and the bench: the reference implementation of the SPIFFE
// Workload API that wicket's agent is compared with and federates with.
//
// A deployment is one server (sqlite3 datastore and key manager in the
// caller's directory, join_token node attestation) and one agent attested
// with a join token, serving the Workload API on a Unix socket with the
// unix workload attestor; Server.CreateEntry registers workloads and
// Agent.WaitServes waits until the agent hands an entry out. Everything
// runs from plain functions taking a directory and returning a handle with
// Close, so the bench can use it; internal/spire/spiretest wraps them for
// tests (a short temporary directory, t.Cleanup, a skip when the
// binaries are missing).
//
// Each process runs in its own process group, killed whole on Close with
// bounded waits; its stdout and stderr go to a file in the directory,
// whose tail is part of every error about it. The join token is a
// credential (it attests a node once): it is written only into the agent's
// config file (0600), never onto a command line, and replaced by
// "[join-token]" in every log tail and error this package returns.
package spire

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Version is the SPIRE release this package is written for and
// .ci/spire.sh builds.
const Version = "v1.13.3"

// BinDirEnv names the directory holding spire-server and spire-agent.
const BinDirEnv = "WICKET_SPIRE_BIN_DIR"

// Bounds on every wait: no step of a deployment waits longer.
const (
	// StartTimeout bounds a process becoming healthy and an agent
	// serving an entry (an agent syncs entries every few seconds).
	StartTimeout = 60 * time.Second
	// cliTimeout bounds one CLI command against the server.
	cliTimeout = 30 * time.Second
	// stopTimeout bounds a process group exiting after SIGTERM, and
	// again after SIGKILL.
	stopTimeout = 5 * time.Second
	// pollInterval is the pause between two health or entry checks.
	pollInterval = 100 * time.Millisecond
	// tailLines is how much of a log an error shows.
	tailLines = 30
)

// ErrNoBinaries is returned by Binaries when the SPIRE binaries are not
// where WICKET_SPIRE_BIN_DIR says (or it is unset).
var ErrNoBinaries = errors.New("spire binaries not found")

// Bins are the paths of the two SPIRE binaries.
type Bins struct {
	Server, Agent string
}

// Binaries locates spire-server and spire-agent in dir, or in
// $WICKET_SPIRE_BIN_DIR when dir is "". The error wraps ErrNoBinaries.
func Binaries(dir string) (Bins, error) {
	if dir == "" {
		dir = os.Getenv(BinDirEnv)
	}
	if dir == "" {
		return Bins{}, fmt.Errorf("%w: %s is not set (bash .ci/spire.sh builds SPIRE %s and prints the directory)", ErrNoBinaries, BinDirEnv, Version)
	}
	b := Bins{Server: filepath.Join(dir, "spire-server"), Agent: filepath.Join(dir, "spire-agent")}
	for _, p := range []string{b.Server, b.Agent} {
		if fi, err := os.Stat(p); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			return Bins{}, fmt.Errorf("%w: %s is not an executable (bash .ci/spire.sh builds it)", ErrNoBinaries, p)
		}
	}
	return b, nil
}

// process is one SPIRE process in its own process group, its output in
// a log file.
type process struct {
	name    string
	cmd     *exec.Cmd
	log     string
	done    chan struct{}
	waitErr error
	redact  func(string) string
	once    sync.Once
}

func startProcess(name, logPath string, redact func(string) string, bin string, args ...string) (*process, error) {
	return startProcessEnv(name, logPath, nil, redact, bin, args...)
}

// startProcessEnv is startProcess with env added to the child's
// environment (PATH only otherwise).
func startProcessEnv(name, logPath string, env []string, redact func(string) string, bin string, args ...string) (*process, error) {
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	defer lf.Close() // the child holds its own descriptor
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	// Its own process group, so Close reaches every child it forks; and
	// killed with this process, so a crashed test leaves nothing behind.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, log: logPath, done: make(chan struct{}), redact: redact}
	go func() { p.waitErr = cmd.Wait(); close(p.done) }()
	return p, nil
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the process group, then SIGKILL, each with a
// bounded wait.
func (p *process) stop() error {
	var err error
	p.once.Do(func() {
		pgid := p.cmd.Process.Pid
		for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
			syscall.Kill(-pgid, sig)
			select {
			case <-p.done:
				if sig == syscall.SIGTERM {
					// The leader is gone; anything it left in its
					// group goes too.
					syscall.Kill(-pgid, syscall.SIGKILL)
				}
				return
			case <-time.After(stopTimeout):
			}
		}
		err = fmt.Errorf("%s (pid %d) did not exit after SIGKILL within %s", p.name, pgid, stopTimeout)
	})
	return err
}

// tail is the end of the process's log, redacted, for an error.
func (p *process) tail() string {
	return fmt.Sprintf("--- %s (last %d lines) ---\n%s", p.log, tailLines, p.redact(tailOf(p.log, tailLines)))
}

func tailOf(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// poll calls cond every pollInterval until it returns nil, ctx ends,
// p exits or within passes; it returns cond's last error otherwise.
func poll(ctx context.Context, within time.Duration, p *process, cond func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	var last error
	for range int(within/pollInterval) + 1 {
		if last = cond(ctx); last == nil {
			return nil
		}
		if p != nil && p.exited() {
			return fmt.Errorf("%s exited (%v): %v", p.name, p.waitErr, last)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("gave up (%v; bound %s): %v", context.Cause(ctx), within, last)
		case <-time.After(pollInterval):
		}
	}
	return fmt.Errorf("not within %s: %v", within, last)
}

// run runs one CLI command, bounded, and returns its combined output.
func run(ctx context.Context, bin string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, cliTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = stopTimeout
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.Bytes(), err
}

// freePort returns a loopback TCP port nothing listens on at the moment.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// hclString quotes s as an HCL string.
func hclString(s string) string { return strconv.Quote(s) }

// hclDuration writes d the way SPIRE's config parses durations.
func hclDuration(d time.Duration) string { return strconv.Quote(d.String()) }
