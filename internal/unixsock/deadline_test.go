package unixsock

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/wicket-sh/wicket/internal/wait"
)

// connPair returns an accepted *Conn and the client end of it.
func connPair(t *testing.T) (*Conn, net.Conn) {
	t.Helper()
	l := mustListen(t, Config{Path: filepath.Join(sockDir(t), "d.sock")})
	acc := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err == nil {
			acc <- c
		}
		close(acc)
	}()
	cl, err := net.Dial("unix", l.Path())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	c, ok := <-acc
	if !ok {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { c.Close() })
	return c.(*Conn), cl
}

// result is one Read or Write's outcome.
type result struct {
	n   int
	err error
}

// waitPast waits (bounded) until the wall clock is past t.
func waitPast(t *testing.T, at time.Time) {
	t.Helper()
	wait.Eventually(t, 10*time.Second, func() bool { return time.Now().After(at) }, "clock past %v", at)
}

// A deadline later than the socket's leaves the socket alone; one that is
// earlier goes on the socket at once.
func TestLazyDeadline_OnlyEarlierReachesTheSocket(t *testing.T) {
	c, _ := connPair(t)
	now := time.Now()
	first, later, earlier := now.Add(time.Hour), now.Add(2*time.Hour), now.Add(30*time.Minute)
	for _, step := range []struct {
		set, wantOnSocket time.Time
	}{
		{first, first},
		{later, first},
		{time.Time{}, first},
		{earlier, earlier},
	} {
		if err := c.SetReadDeadline(step.set); err != nil {
			t.Fatal(err)
		}
		if err := c.SetWriteDeadline(step.set); err != nil {
			t.Fatal(err)
		}
		for name, d := range map[string]*lazyDeadline{"read": &c.rd, "write": &c.wd} {
			if !d.set.Equal(step.wantOnSocket) || !d.want.Equal(step.set) {
				t.Errorf("after %s deadline %v: socket has %v (want %v), asked %v", name, step.set, d.set, step.wantOnSocket, d.want)
			}
		}
	}
}

// A read blocked past the socket's deadline, when a later one (or none)
// was asked for since, goes on and returns the data.
func TestLazyDeadline_ReadResumesPastAnEarlierSocketDeadline(t *testing.T) {
	for _, name := range []string{"none", "later"} {
		t.Run(name, func(t *testing.T) {
			c, cl := connPair(t)
			early := time.Now().Add(20 * time.Millisecond)
			c.SetReadDeadline(early)
			next := time.Time{}
			if name == "later" {
				next = time.Now().Add(time.Hour)
			}
			c.SetReadDeadline(next)
			got := make(chan result, 1)
			go func() {
				b := make([]byte, 4)
				n, err := io.ReadFull(c, b)
				got <- result{n, err}
			}()
			waitPast(t, early.Add(50*time.Millisecond))
			c.SetReadDeadline(time.Now().Add(10 * time.Second)) // the test's own bound
			if _, err := cl.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			if r := <-got; r.err != nil || r.n != 4 {
				t.Fatalf("read after the socket's early deadline: %d bytes, %v", r.n, r.err)
			}
		})
	}
}

// The deadline asked for still fires: earlier than the socket's, and when
// it is the one the socket resumes with.
func TestLazyDeadline_ReadStillTimesOut(t *testing.T) {
	for _, name := range []string{"tightened", "resumed"} {
		t.Run(name, func(t *testing.T) {
			c, _ := connPair(t)
			if name == "tightened" {
				c.SetReadDeadline(time.Now().Add(time.Hour))
				c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			} else {
				c.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
				c.SetReadDeadline(time.Now().Add(60 * time.Millisecond))
			}
			asked := c.rd.want
			got := make(chan result, 1)
			go func() {
				n, err := c.Read(make([]byte, 4))
				got <- result{n, err}
			}()
			select {
			case r := <-got:
				if !errors.Is(r.err, os.ErrDeadlineExceeded) {
					t.Fatalf("read: %d bytes, %v; want a timeout", r.n, r.err)
				}
				if time.Now().Before(asked) {
					t.Errorf("timed out before the deadline asked for")
				}
			case <-time.After(10 * time.Second):
				t.Fatal("read never timed out")
			}
		})
	}
}

// A write stalled past the socket's deadline, with none asked for any
// more, writes all of its bytes once the peer reads.
func TestLazyDeadline_WriteResumesWhole(t *testing.T) {
	c, cl := connPair(t)
	early := time.Now().Add(20 * time.Millisecond)
	c.SetWriteDeadline(early)
	c.SetWriteDeadline(time.Time{})
	// More than the socket buffers hold, so the write blocks.
	big := bytes.Repeat([]byte("x"), 8<<20)
	got := make(chan result, 1)
	go func() {
		n, err := c.Write(big)
		got <- result{n, err}
	}()
	waitPast(t, early.Add(50*time.Millisecond))
	cl.SetReadDeadline(time.Now().Add(10 * time.Second)) // the test's own bound
	n, err := io.CopyN(io.Discard, cl, int64(len(big)))
	if err != nil || n != int64(len(big)) {
		t.Fatalf("peer read %d bytes: %v", n, err)
	}
	if r := <-got; r.err != nil || r.n != len(big) {
		t.Fatalf("write: %d of %d bytes, %v", r.n, len(big), r.err)
	}
}

// A deadline in the past interrupts a read under way at once, as net/http
// does to end its background read (abortPendingRead), even when the
// socket had a later deadline.
func TestLazyDeadline_PastDeadlineInterruptsRead(t *testing.T) {
	c, _ := connPair(t)
	far := time.Now().Add(time.Hour)
	c.SetReadDeadline(far)
	got := make(chan result, 1)
	go func() {
		n, err := c.Read(make([]byte, 1))
		got <- result{n, err}
	}()
	// The read may not have started yet: a past deadline fails it either way.
	c.SetReadDeadline(time.Unix(1, 0))
	select {
	case r := <-got:
		if !errors.Is(r.err, os.ErrDeadlineExceeded) {
			t.Fatalf("read: %v, want a timeout", r.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("read not interrupted")
	}
	// Cleared again (as net/http does next), the socket gets back the
	// deadline the interruption replaced, and reads normally.
	c.SetReadDeadline(time.Time{})
	if !c.rd.set.Equal(far) || c.rd.past {
		t.Errorf("after the interruption: socket has %v (past %v), want %v back", c.rd.set, c.rd.past, far)
	}
	go func() {
		n, err := c.Read(make([]byte, 1))
		got <- result{n, err}
	}()
	c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	select {
	case r := <-got:
		if !errors.Is(r.err, os.ErrDeadlineExceeded) {
			t.Fatalf("second read: %v, want a timeout", r.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("second read never timed out")
	}
}
