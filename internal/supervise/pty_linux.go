package supervise

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// A workload of another uid must never hold the invoker's terminal: with a
// descriptor to it, or with it as its controlling terminal, it could queue
// input there with TIOCSTI that the invoker's shell (root's, typically)
// reads and runs once wicket has exited, or read what is typed into that
// shell later. It gets a pseudo-terminal of its own instead, relayed to
// the invoker's, as `su --pty` and `ssh -t` do.

// relayDrain bounds how long the relay keeps copying the workload's output
// after the workload has exited: until every holder of the pty has closed
// it, or this long when an orphan keeps it open.
const relayDrain = 500 * time.Millisecond

// relayStuck bounds how long close waits for the copies to end once the
// drain is over: a write to an invoker's terminal that stopped reading
// (^S, a stalled ssh session) would otherwise hold wicket forever.
const relayStuck = 2 * time.Second

// relayReplyWait is how long close waits before discarding what the
// invoker's terminal sent after input stopped being relayed: a terminal
// answers some escape sequences (cursor position, device attributes,
// on some emulators the window title) by "typing" the answer, and an
// answer to what the workload printed last must not reach the invoker's
// shell as input.
const relayReplyWait = 100 * time.Millisecond

// ttyRelay is the workload's pseudo-terminal and the copying between it
// and the invoker's terminal.
type ttyRelay struct {
	log    *slog.Logger
	master *os.File
	mfd    int
	// size is the invoker's terminal whose window size the pty follows.
	size int
	// in is the invoker's terminal typed input is read from (raw), -1
	// when input is not relayed; saved is its mode before, restored by
	// close.
	in    int
	saved *unix.Termios
	out   *os.File

	stopR, stopW int
	wg           sync.WaitGroup
	closeOnce    sync.Once
}

// isTerminal reports whether fd is a terminal.
func isTerminal(fd int) bool {
	_, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	return err == nil
}

// hasControllingTTY reports whether this process has a controlling
// terminal, which any process of its session can open as /dev/tty.
func hasControllingTTY() bool {
	fd, err := unix.Open("/dev/tty", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false // ENXIO: none
	}
	unix.Close(fd)
	return true
}

// newTTYRelay opens a pseudo-terminal for a workload running as uid and
// replaces every terminal among files (the workload's 0–2) with its slave,
// which it returns along with the index of the first one it replaced (the
// workload's controlling terminal). The slave gets the mode and window
// size of the first terminal among files. Nothing is relayed before start.
func newTTYRelay(files []*os.File, uid uint32, log *slog.Logger) (_ *ttyRelay, _ *os.File, ctty int, err error) {
	fds := make([]int, len(files))
	first := -1
	for i, f := range files {
		fds[i] = int(f.Fd())
		if isTerminal(fds[i]) && first < 0 {
			first = i
		}
	}
	if first < 0 {
		return nil, nil, 0, errors.New("no terminal")
	}
	// Non-blocking, so the master is pollable: reads get a deadline.
	mfd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, 0, fmt.Errorf("open /dev/ptmx: %w", err)
	}
	r := &ttyRelay{log: log, master: os.NewFile(uintptr(mfd), "/dev/ptmx"), mfd: mfd, size: fds[first], in: -1, stopR: -1, stopW: -1}
	var slave *os.File
	defer func() {
		if err != nil {
			r.master.Close()
			if slave != nil {
				slave.Close()
			}
		}
	}()
	if err := unix.IoctlSetPointerInt(mfd, unix.TIOCSPTLCK, 0); err != nil {
		return nil, nil, 0, fmt.Errorf("unlock pty: %w", err)
	}
	n, err := unix.IoctlGetInt(mfd, unix.TIOCGPTN)
	if err != nil {
		return nil, nil, 0, fmt.Errorf("pty number: %w", err)
	}
	name := fmt.Sprintf("/dev/pts/%d", n)
	sfd, err := unix.Open(name, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, 0, fmt.Errorf("open %s: %w", name, err)
	}
	slave = os.NewFile(uintptr(sfd), name)
	// The workload's own, as a login's terminal is: it can reopen it by
	// name (ttyname, /dev/tty for programs that check its owner), and
	// nobody else but root can write to it.
	if err := unix.Fchown(sfd, int(uid), -1); err != nil {
		return nil, nil, 0, fmt.Errorf("chown %s: %w", name, err)
	}
	if err := unix.Fchmod(sfd, 0o600); err != nil {
		return nil, nil, 0, fmt.Errorf("chmod %s: %w", name, err)
	}

	// Input is relayed when stdin is a terminal, unless this process is a
	// background job there (reading it would stop us with SIGTTIN).
	if isTerminal(fds[0]) {
		if pg, err := unix.IoctlGetInt(fds[0], unix.TIOCGPGRP); err != nil || pg == unix.Getpgrp() {
			r.in = fds[0]
		}
	}
	tio, err := unix.IoctlGetTermios(fds[first], unix.TCGETS)
	if err != nil {
		return nil, nil, 0, fmt.Errorf("terminal mode: %w", err)
	}
	if r.in < 0 {
		// The invoker's terminal stays cooked and turns newlines into CR
		// LF itself; the pty doing it too would double the CRs.
		tio.Oflag &^= unix.ONLCR
	}
	if err := unix.IoctlSetTermios(sfd, unix.TCSETS, tio); err != nil {
		return nil, nil, 0, fmt.Errorf("pty mode: %w", err)
	}
	r.resize()

	// The workload's output goes to the invoker's terminal: stdout, else
	// stderr, whichever is one (else stdout, when only stdin is).
	r.out = files[1]
	if !isTerminal(fds[1]) && isTerminal(fds[2]) {
		r.out = files[2]
	}
	ctty = -1
	for i := range files {
		if isTerminal(fds[i]) {
			files[i] = slave
			if ctty < 0 {
				ctty = i
			}
		}
	}
	return r, slave, ctty, nil
}

// start puts the invoker's terminal in raw mode, so that what is typed,
// ^C included, reaches the workload's pty, whose line discipline acts on
// it, and starts copying. Call it once the workload holds the slave.
func (r *ttyRelay) start() error {
	// Output first: whatever fails below, the workload must not block
	// on a full pty.
	r.wg.Add(1)
	go r.copyOutput()
	if r.in >= 0 {
		saved, err := unix.IoctlGetTermios(r.in, unix.TCGETS)
		if err != nil {
			return fmt.Errorf("terminal mode: %w", err)
		}
		raw := *saved
		// cfmakeraw(3).
		raw.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
		raw.Oflag &^= unix.OPOST
		raw.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
		raw.Cflag &^= unix.CSIZE | unix.PARENB
		raw.Cflag |= unix.CS8
		raw.Cc[unix.VMIN], raw.Cc[unix.VTIME] = 1, 0
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
			return fmt.Errorf("pipe: %w", err)
		}
		r.stopR, r.stopW = p[0], p[1]
		if err := unix.IoctlSetTermios(r.in, unix.TCSETS, &raw); err != nil {
			return fmt.Errorf("raw mode: %w", err)
		}
		r.saved = saved
		r.wg.Add(1)
		go r.copyInput()
	}
	return nil
}

// copyInput copies what is typed at the invoker's terminal to the pty
// until close. It polls rather than blocks in read, so that once stopped
// it reads nothing more: what is typed afterwards is the invoker shell's.
func (r *ttyRelay) copyInput() {
	defer r.wg.Done()
	buf := make([]byte, 4096)
	for {
		pfd := []unix.PollFd{{Fd: int32(r.in), Events: unix.POLLIN}, {Fd: int32(r.stopR), Events: unix.POLLIN}}
		if _, err := unix.Poll(pfd, -1); err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			r.log.Warn("terminal relay: poll failed", "err", err)
			return
		}
		if pfd[1].Revents != 0 {
			return
		}
		if pfd[0].Revents == 0 {
			continue
		}
		n, err := unix.Read(r.in, buf)
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
			continue
		}
		if n <= 0 {
			return // hung up
		}
		if _, err := r.master.Write(buf[:n]); err != nil {
			return // the workload's side is closed
		}
	}
}

// copyOutput copies what the workload writes to its terminal to the
// invoker's, until every holder of the pty has closed it (EIO) or close
// gives up waiting.
func (r *ttyRelay) copyOutput() {
	defer r.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := r.master.Read(buf)
		if n > 0 {
			if _, werr := r.out.Write(buf[:n]); werr != nil {
				r.log.Debug("terminal relay: output not written", "err", werr)
				return
			}
		}
		if err != nil {
			if !errors.Is(err, unix.EIO) && !errors.Is(err, os.ErrDeadlineExceeded) {
				r.log.Debug("terminal relay: output ended", "err", err)
			}
			return
		}
	}
}

// resize gives the pty the invoker's terminal's window size; the kernel
// sends SIGWINCH to the pty's foreground group when it changed.
func (r *ttyRelay) resize() {
	ws, err := unix.IoctlGetWinsize(r.size, unix.TIOCGWINSZ)
	if err == nil {
		err = unix.IoctlSetWinsize(r.mfd, unix.TIOCSWINSZ, ws)
	}
	if err != nil {
		r.log.Debug("terminal relay: window size not forwarded", "err", err)
	}
}

// close stops the input copy, lets the workload's last output through,
// restores the invoker's terminal's mode and closes the pty.
func (r *ttyRelay) close() {
	r.closeOnce.Do(func() {
		if r.stopW >= 0 {
			unix.Write(r.stopW, []byte{0})
		}
		// Input nobody reads any more is dropped, not waited for.
		r.master.SetWriteDeadline(time.Now())
		r.master.SetReadDeadline(time.Now().Add(relayDrain))
		done := make(chan struct{})
		go func() { r.wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(relayDrain + relayStuck):
			// The output copy is blocked writing to a terminal that does
			// not read; leave it (it ends with the process) rather than
			// hang here.
			r.log.Warn("terminal relay: the terminal does not take output; giving up on it")
		}
		if r.saved != nil {
			if err := unix.IoctlSetTermios(r.in, unix.TCSETS, r.saved); err != nil {
				r.log.Warn("terminal relay: could not restore the terminal's mode", "err", err)
			}
		}
		r.discardReplies()
		r.master.Close()
		for _, fd := range []int{r.stopR, r.stopW} {
			if fd >= 0 {
				unix.Close(fd)
			}
		}
	})
}

// discardReplies flushes the input queue of the invoker's terminal once
// its answers to the workload's last escape sequences had time to arrive
// (relayReplyWait), so they are not read by the invoker's shell. Only
// done as the terminal's foreground process group: tcflush from a
// background job would stop wicket with SIGTTOU.
func (r *ttyRelay) discardReplies() {
	if pg, err := unix.IoctlGetInt(r.size, unix.TIOCGPGRP); err != nil || pg != unix.Getpgrp() {
		return
	}
	time.Sleep(relayReplyWait)
	if err := unix.IoctlSetInt(r.size, unix.TCFLSH, unix.TCIFLUSH); err != nil {
		r.log.Debug("terminal relay: input not flushed", "err", err)
	}
}

// TerminalWriter returns w for a log written to f: f itself, unless f is a
// terminal, in which case lines end in CR LF whenever the terminal does
// not add the CR itself (raw, while a workload's pty is relayed to it), so
// that log lines do not stair-step across the screen.
func TerminalWriter(f *os.File) io.Writer {
	fd := int(f.Fd())
	if !isTerminal(fd) {
		return f
	}
	return &terminalWriter{f: f, fd: fd}
}

type terminalWriter struct {
	f  *os.File
	fd int
}

func (w *terminalWriter) Write(p []byte) (int, error) {
	tio, err := unix.IoctlGetTermios(w.fd, unix.TCGETS)
	if err != nil || (tio.Oflag&unix.OPOST != 0 && tio.Oflag&unix.ONLCR != 0) || !bytes.Contains(p, []byte{'\n'}) {
		return w.f.Write(p)
	}
	if _, err := w.f.Write(bytes.ReplaceAll(p, []byte{'\n'}, []byte{'\r', '\n'})); err != nil {
		return 0, err
	}
	return len(p), nil
}
