package unixsock

import (
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const pidfdHelperEnv = "WICKET_UNIXSOCK_PIDFD_HELPER"

// TestPidfdHelperProcess is not a test: run as a child with pidfdHelperEnv
// set, it connects to that socket, writes one byte and exits.
func TestPidfdHelperProcess(t *testing.T) {
	path := os.Getenv(pidfdHelperEnv)
	if path == "" {
		t.Skip("helper process only")
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		os.Exit(2)
	}
	c.Write([]byte{1})
	os.Exit(0)
}

func acceptOne(t *testing.T, l *Listener) *Conn {
	t.Helper()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() { c, err := l.Accept(); ch <- res{c, err} }()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatal(r.err)
		}
		t.Cleanup(func() { r.c.Close() })
		return r.c.(*Conn)
	case <-time.After(10 * time.Second):
		t.Fatal("no connection accepted")
	}
	return nil
}

func TestPeerExe_Self(t *testing.T) {
	l := mustListen(t, Config{Path: filepath.Join(sockDir(t), "e.sock")})
	c, err := net.Dial("unix", l.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	conn := acceptOne(t, l)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	exe, err := conn.Peer().Exe()
	if err != nil {
		t.Fatalf("Exe: %v", err)
	}
	if exe != self {
		t.Errorf("Exe = %q, want %q", exe, self)
	}
	// Asked again on the same connection: same answer, one pidfd.
	if exe2, err := conn.Peer().Exe(); err != nil || exe2 != self {
		t.Errorf("second Exe = %q, %v", exe2, err)
	}
	conn.Close()
	if _, err := conn.Peer().Exe(); !errors.Is(err, ErrExeUnavailable) {
		t.Errorf("Exe after Close = %v, want ErrExeUnavailable", err)
	}
}

// The process that connected has exited: its pid may be reused, so no
// executable is reported, whether it is still a zombie or already reaped.
func TestPeerExe_ExitedPeerRefused(t *testing.T) {
	for _, reap := range []bool{false, true} {
		name := "zombie"
		if reap {
			name = "reaped"
		}
		t.Run(name, func(t *testing.T) {
			l := mustListen(t, Config{Path: filepath.Join(sockDir(t), "x.sock")})
			cmd := exec.Command(os.Args[0], "-test.run=^TestPidfdHelperProcess$")
			cmd.Env = append(os.Environ(), pidfdHelperEnv+"="+l.Path())
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			conn := acceptOne(t, l)
			// Wait until the child has exited, without reaping it.
			var si unix.Siginfo
			if err := unix.Waitid(unix.P_PID, cmd.Process.Pid, &si, unix.WEXITED|unix.WNOWAIT, nil); err != nil {
				t.Fatal(err)
			}
			if reap {
				cmd.Wait()
			} else {
				defer cmd.Wait()
			}
			if exe, err := conn.Peer().Exe(); !errors.Is(err, ErrExeUnavailable) {
				t.Errorf("Exe of exited peer = %q, %v; want ErrExeUnavailable", exe, err)
			}
		})
	}
}

// Without SO_PEERPIDFD (Linux < 6.5) the executable is never reported.
func TestPeerExe_NoPidfdFailsClosed(t *testing.T) {
	old := getPeerPidfd
	getPeerPidfd = func(int) (int, error) { return -1, unix.ENOPROTOOPT }
	defer func() { getPeerPidfd = old }()
	l := mustListen(t, Config{Path: filepath.Join(sockDir(t), "n.sock")})
	c, err := net.Dial("unix", l.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	conn := acceptOne(t, l)
	_, err = conn.Peer().Exe()
	if !errors.Is(err, ErrExeUnavailable) || !errors.Is(err, ErrPidfdUnsupported) {
		t.Errorf("Exe without SO_PEERPIDFD = %v", err)
	}
}

func TestPeerExe_NotFromListener(t *testing.T) {
	if _, err := (Peer{UID: 0, PID: int32(os.Getpid())}).Exe(); !errors.Is(err, ErrExeUnavailable) {
		t.Errorf("Exe of a bare Peer = %v", err)
	}
}

func TestPeerPidfdSupported(t *testing.T) {
	if err := PeerPidfdSupported(); err != nil {
		t.Logf("SO_PEERPIDFD unsupported here: %v", err)
	}
	old := getPeerPidfd
	getPeerPidfd = func(int) (int, error) { return -1, unix.ENOPROTOOPT }
	defer func() { getPeerPidfd = old }()
	if err := PeerPidfdSupported(); !errors.Is(err, ErrPidfdUnsupported) {
		t.Errorf("probe with ENOPROTOOPT = %v", err)
	}
}

// S-limits: a burst of connects beyond the old fixed backlog of 128 is
// queued, not refused with EAGAIN, while nobody is accepting yet.
func TestListen_BurstOfConnectsQueued(t *testing.T) {
	l := mustListen(t, Config{Path: filepath.Join(sockDir(t), "b.sock"), MaxConns: 1000})
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < 300; i++ {
		c, err := net.Dial("unix", l.Path())
		if err != nil {
			t.Fatalf("connect %d with nobody accepting yet: %v", i, err)
		}
		conns = append(conns, c)
	}
}
