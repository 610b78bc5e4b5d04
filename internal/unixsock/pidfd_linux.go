package unixsock

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// peerProc holds the pidfd of a connection's peer. It is taken from the
// socket the first time a caller asks for the executable, not at accept:
// the socket pins the kernel's struct pid of the process that connected,
// so a pidfd taken later still names exactly that process (never one that
// reused its pid number), and connections nobody asks about cost no fd.
type peerProc struct {
	raw syscall.RawConn

	mu     sync.Mutex
	pidfd  int   // -1 until taken
	err    error // sticky failure to take it
	closed bool
}

func newPeerProc(c *net.UnixConn) *peerProc {
	raw, err := c.SyscallConn()
	if err != nil {
		return &peerProc{pidfd: -1, err: fmt.Errorf("%w: %v", ErrExeUnavailable, err)}
	}
	return &peerProc{raw: raw, pidfd: -1}
}

// getPeerPidfd is the SO_PEERPIDFD call; tests replace it to simulate an
// older kernel.
var getPeerPidfd = func(fd int) (int, error) {
	return unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PEERPIDFD)
}

func (pp *peerProc) take() error {
	var (
		pidfd int
		serr  error
	)
	if err := pp.raw.Control(func(fd uintptr) { pidfd, serr = getPeerPidfd(int(fd)) }); err != nil {
		return fmt.Errorf("%w: %v", ErrExeUnavailable, err)
	}
	switch {
	case errors.Is(serr, unix.ENOPROTOOPT), errors.Is(serr, unix.EOPNOTSUPP):
		return fmt.Errorf("%w: %w (Linux >= 6.5 needed)", ErrExeUnavailable, ErrPidfdUnsupported)
	case serr != nil:
		// EINVAL/ESRCH: the process that connected is gone.
		return fmt.Errorf("%w: SO_PEERPIDFD: %v", ErrExeUnavailable, serr)
	}
	pp.pidfd = pidfd
	return nil
}

func (pp *peerProc) exe(pid int32) (string, error) {
	if pp == nil {
		return "", fmt.Errorf("%w: no process handle", ErrExeUnavailable)
	}
	pp.mu.Lock()
	defer pp.mu.Unlock()
	if pp.closed {
		return "", fmt.Errorf("%w: connection closed", ErrExeUnavailable)
	}
	if pp.pidfd < 0 && pp.err == nil {
		pp.err = pp.take()
	}
	if pp.err != nil {
		return "", pp.err
	}
	// Read first, then confirm the process is still alive: a live process
	// keeps its pid, so the link we read was that process's. In the other
	// order the process could exit and its pid be reused in between.
	exe, err := os.Readlink("/proc/" + strconv.Itoa(int(pid)) + "/exe")
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrExeUnavailable, err)
	}
	if exited, err := pidfdExited(pp.pidfd); err != nil || exited {
		return "", fmt.Errorf("%w: process exited", ErrExeUnavailable)
	}
	return exe, nil
}

// pidfdExited polls the pidfd without waiting: it becomes readable when the
// process exits. Unlike a signal 0 probe this needs no permission over the
// process.
func pidfdExited(pidfd int) (bool, error) {
	fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return false, err
		}
		return n > 0, nil
	}
}

func (pp *peerProc) close() {
	if pp == nil {
		return
	}
	pp.mu.Lock()
	defer pp.mu.Unlock()
	pp.closed = true
	if pp.pidfd >= 0 {
		unix.Close(pp.pidfd)
		pp.pidfd = -1
	}
}

// PeerPidfdSupported reports (as nil) whether the kernel gives pidfds for
// socket peers, by asking on a fresh socket pair. Without it [Peer.Exe]
// always fails, so policy rules that name executables never match.
func PeerPidfdSupported() error {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("probe SO_PEERPIDFD: %w", err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	pidfd, err := getPeerPidfd(fds[0])
	switch {
	case errors.Is(err, unix.ENOPROTOOPT), errors.Is(err, unix.EOPNOTSUPP):
		return fmt.Errorf("%w (Linux >= 6.5 needed)", ErrPidfdUnsupported)
	case err != nil:
		return fmt.Errorf("probe SO_PEERPIDFD: %w", err)
	}
	unix.Close(pidfd)
	return nil
}
