package unixsock

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
)

// listenBacklog is the accept queue asked for; the kernel caps it at
// net.core.somaxconn.
const listenBacklog = 4096

// bindListen creates the socket so that its file never exists with a mode
// looser than cfg.Mode (S-mode). On Linux the file created by bind takes its
// mode from the socket inode, so fchmod before bind makes the file appear
// with at most cfg.Mode (narrowed further by the umask, never widened). Then,
// still before listen — so nobody can connect yet — the owner is set and the
// exact mode restored, without ever touching the process-wide umask.
func bindListen(cfg Config) (*net.UnixListener, *syscall.Stat_t, error) {
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("socket: %w", err)
	}
	ok := false
	var ours *syscall.Stat_t // the file our bind created, once it exists
	defer func() {
		if !ok {
			syscall.Close(fd)
			// Remove the file only if our bind created it and the path
			// still holds it: a failed bind (EADDRINUSE) means whatever is
			// there belongs to someone else, live socket included.
			var now syscall.Stat_t
			if ours != nil && syscall.Lstat(cfg.Path, &now) == nil && now.Dev == ours.Dev && now.Ino == ours.Ino {
				os.Remove(cfg.Path)
			}
		}
	}()
	perm := uint32(cfg.Mode.Perm())
	if err := syscall.Fchmod(fd, perm); err != nil {
		return nil, nil, fmt.Errorf("fchmod socket: %w", err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: cfg.Path}); err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			// Something appeared at the path after the stale check: another
			// instance starting at the same moment. It is not ours to touch.
			return nil, nil, fmt.Errorf("%w: %q", ErrInUse, cfg.Path)
		}
		return nil, nil, fmt.Errorf("bind %q: %w", cfg.Path, err)
	}
	var st syscall.Stat_t
	if err := syscall.Lstat(cfg.Path, &st); err != nil {
		return nil, nil, fmt.Errorf("stat %q: %w", cfg.Path, err)
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFSOCK {
		return nil, nil, fmt.Errorf("%q is not a socket right after bind", cfg.Path)
	}
	ours = &st
	if gid := cfg.group(); gid >= 0 {
		if err := syscall.Lchown(cfg.Path, -1, gid); err != nil {
			return nil, nil, fmt.Errorf("chown %q: %w", cfg.Path, err)
		}
	}
	// chmod follows symlinks, so check first that the path is still our socket.
	var again syscall.Stat_t
	if err := syscall.Lstat(cfg.Path, &again); err != nil {
		return nil, nil, fmt.Errorf("stat %q: %w", cfg.Path, err)
	}
	if again.Dev != st.Dev || again.Ino != st.Ino || again.Mode&syscall.S_IFMT != syscall.S_IFSOCK {
		return nil, nil, fmt.Errorf("%q was replaced during socket setup", cfg.Path)
	}
	if err := syscall.Chmod(cfg.Path, perm); err != nil {
		return nil, nil, fmt.Errorf("chmod %q: %w", cfg.Path, err)
	}
	// syscall.SOMAXCONN is a fixed 128: a burst of clients beyond that
	// would get EAGAIN from connect. The kernel caps this at
	// net.core.somaxconn, as it does for net.Listen.
	if err := syscall.Listen(fd, listenBacklog); err != nil {
		return nil, nil, fmt.Errorf("listen %q: %w", cfg.Path, err)
	}
	f := os.NewFile(uintptr(fd), cfg.Path)
	fl, err := net.FileListener(f)
	f.Close() // FileListener dup'd the fd
	if err != nil {
		return nil, nil, fmt.Errorf("listener %q: %w", cfg.Path, err)
	}
	ok = true
	ul := fl.(*net.UnixListener)
	// We remove the file ourselves, only if it is still ours (see Close).
	ul.SetUnlinkOnClose(false)
	return ul, &st, nil
}
