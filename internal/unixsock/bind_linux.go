package unixsock

import (
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
	defer func() {
		if !ok {
			syscall.Close(fd)
			// bind may have created the file; it is ours, so remove it.
			os.Remove(cfg.Path)
		}
	}()
	perm := uint32(cfg.Mode.Perm())
	if err := syscall.Fchmod(fd, perm); err != nil {
		return nil, nil, fmt.Errorf("fchmod socket: %w", err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: cfg.Path}); err != nil {
		return nil, nil, fmt.Errorf("bind %q: %w", cfg.Path, err)
	}
	if gid := cfg.group(); gid >= 0 {
		if err := syscall.Lchown(cfg.Path, -1, gid); err != nil {
			return nil, nil, fmt.Errorf("chown %q: %w", cfg.Path, err)
		}
	}
	// chmod follows symlinks, so check first that the path is still our socket.
	var st syscall.Stat_t
	if err := syscall.Lstat(cfg.Path, &st); err != nil {
		return nil, nil, fmt.Errorf("stat %q: %w", cfg.Path, err)
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFSOCK {
		return nil, nil, fmt.Errorf("%q is no longer a socket after bind", cfg.Path)
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
