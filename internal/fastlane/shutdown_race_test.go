package fastlane

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"
)

// hookListener hands out hookConns, each on conns as it is accepted, so a
// test can order the lane's reads and Shutdown's interruption exactly.
type hookListener struct {
	net.Listener
	release chan struct{} // stop's interruption waits for it
	conns   chan *hookConn
}

func (l *hookListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	hc := &hookConn{Conn: c, l: l, interrupted: make(chan struct{}), interrupting: make(chan struct{})}
	for i := range hc.entered {
		hc.entered[i] = make(chan struct{})
	}
	l.conns <- hc
	return hc, nil
}

// hookConn reports the lane's reads and Shutdown's interruption of it.
type hookConn struct {
	net.Conn
	l            *hookListener
	reads        atomic.Int32
	entered      [2]chan struct{} // closed as the first and second Read begin
	interrupting chan struct{}    // closed when stop's interruption begins
	interrupted  chan struct{}    // closed once it is on the socket
}

func (c *hookConn) Read(b []byte) (int, error) {
	i := c.reads.Add(1) - 1
	if int(i) < len(c.entered) {
		close(c.entered[i])
	}
	return c.Conn.Read(b)
}

// SetReadDeadline lets stop's interruption (time.Unix(1, 0)) wait for the
// test's release before it reaches the socket.
func (c *hookConn) SetReadDeadline(t time.Time) error {
	if !t.Equal(time.Unix(1, 0)) {
		return c.Conn.SetReadDeadline(t)
	}
	close(c.interrupting)
	<-c.l.release
	err := c.Conn.SetReadDeadline(t)
	close(c.interrupted)
	return err
}

// startHookLane serves a lane answering GET /m with "ok" on a hookListener.
func startHookLane(t *testing.T, hl *hookListener) (*Server, string) {
	t.Helper()
	l, p := listenUnix(t)
	hl.Listener, hl.conns = l, make(chan *hookConn, 1)
	s := &Server{Paths: []string{"/m"}, Fallback: fallback(), Handler: func(*Conn, *Request) (Reply, bool) {
		return Reply{Header: []byte("Content-Length: 2\r\n"), Body: []byte("ok")}, true
	}}
	go s.Serve(hl)
	t.Cleanup(func() { s.Close() })
	return s, p
}

func dialHook(t *testing.T, p string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("unix", p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(testWait)) // the test's own bound
	return c, bufio.NewReader(c)
}

// expectOK reads one reply and fails unless it is the lane's 200 "ok".
func expectOK(t *testing.T, br *bufio.Reader, what string) {
	t.Helper()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("%s: no reply (%v)", what, err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(b) != "ok" {
		t.Fatalf("%s: reply %d %q, want 200 \"ok\"", what, resp.StatusCode, b)
	}
}

// Shutdown's interruption lands only on a connection still idle: a
// request whose first bytes the lane read is answered, as it is when
// Shutdown finds the connection reading a head (the lane then waits for
// the rest under the header timeout and answers with Connection: close).
// stop reads the connection's idle flag and only then sets the
// interrupting deadline; here the connection reads the first part of a
// head between the two, and the deadline lands on its read of the rest.
// (Handed over instead, the deadline lands on net/http's reads of the
// request: its body read times out, or its background read cancels the
// request's context.)
func TestShutdown_InterruptsOnlyIdleConnections(t *testing.T) {
	hl := &hookListener{release: make(chan struct{})}
	released := false
	release := func() {
		if !released {
			released = true
			close(hl.release)
		}
	}
	defer release() // before the cleanup's Close, which takes the lock stop holds
	s, p := startHookLane(t, hl)
	c, br := dialHook(t, p)
	hc := <-hl.conns
	waitChan(t, hc.entered[0], "the lane's first read")

	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), testWait)
		defer cancel()
		shut <- s.Shutdown(ctx)
	}()
	// stop saw the connection idle and is about to interrupt it.
	waitChan(t, hc.interrupting, "stop's interruption")
	write(t, c, "GET /m HTTP/1.1\r\n")
	// The lane read it, left idle, and waits for the rest of the head. (A
	// lane that orders the interruption before it leaves idle is held
	// until the release instead: the wait for its read is bounded, never
	// asserted.)
	select {
	case <-hc.entered[1]:
	case <-time.After(time.Second):
	}
	release()
	waitChan(t, hc.interrupted, "the interruption on the socket")

	io.WriteString(c, "Host: x\r\n\r\n") // may fail once the lane closed
	expectOK(t, br, "a request the lane began reading before the interruption")
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}
