package fastlane

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// listenUnix returns a listener on a fresh short socket path and that path.
func listenUnix(t *testing.T) (net.Listener, string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "fl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	p := filepath.Join(dir, "s")
	l, err := net.Listen("unix", p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l, p
}

// fallback is a net/http server with the agent's kind of limits that
// answers "from net/http".
func fallback() *http.Server {
	return &http.Server{
		ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "from net/http") }),
	}
}

// A connection waiting for its next request holds no copy of the last
// reply: net/http writes a large body from the handler's slice, so an idle
// connection costs its buffers only; the lane must not make every idle
// connection hold the largest reply it was sent (the metadata can be up
// to 1 MiB, times max_conns).
func TestServe_IdleConnKeepsNoCopyOfLargeReply(t *testing.T) {
	l, p := listenUnix(t)
	big := make([]byte, 1<<20)
	bigHdr := []byte("Content-Length: " + strconv.Itoa(len(big)) + "\r\n")
	small := []byte("ok")
	smallHdr := []byte("Content-Length: 2\r\n")
	held := make(chan int, 2)
	n := 0
	s := &Server{Paths: []string{"/m"}, Fallback: fallback(), Handler: func(c *Conn, _ *Request) (Reply, bool) {
		n++
		held <- cap(c.out)
		if n == 1 {
			return Reply{Header: bigHdr, Body: big}, true
		}
		return Reply{Header: smallHdr, Body: small}, true
	}}
	go s.Serve(l)
	t.Cleanup(func() { s.Close() })

	c := dialUnix(t, p)
	br := bufio.NewReader(c)
	for range 2 {
		io.WriteString(c, "GET /m HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	<-held
	if kept := <-held; kept > 64<<10 {
		t.Errorf("an idle connection kept %d bytes of its last reply (a 1 MiB body)", kept)
	}
}

// A request the lane has read when Shutdown begins, and declines, is
// still answered by net/http: Shutdown waits for requests under way, as
// http.Server.Shutdown does, rather than drop a connection whose request
// was already taken.
func TestShutdown_AnswersRequestReadBeforeIt(t *testing.T) {
	l, p := listenUnix(t)
	entered, release := make(chan struct{}), make(chan struct{})
	s := &Server{Paths: []string{"/m"}, Fallback: fallback(), Handler: func(*Conn, *Request) (Reply, bool) {
		close(entered)
		<-release
		return Reply{}, false // for net/http to answer
	}}
	go s.Serve(l)
	t.Cleanup(func() { s.Close() })

	c := dialUnix(t, p)
	io.WriteString(c, "GET /m HTTP/1.1\r\nHost: x\r\n\r\n")
	<-entered
	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown(context.Background()) }()
	for i := 0; i < 5000 && !s.closing.Load(); i++ {
		time.Sleep(time.Millisecond)
	}
	if !s.closing.Load() {
		t.Fatal("Shutdown did not begin")
	}
	close(release)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("request read before Shutdown: no reply (%v)", err)
	}
	b, _ := io.ReadAll(resp.Body)
	if string(b) != "from net/http" {
		t.Errorf("reply %d %q, want net/http's", resp.StatusCode, b)
	}
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

// A panic while serving costs its connection, as in net/http, not the
// process: the next connection is served, and the panic is logged.
func TestServe_PanicCostsOnlyItsConnection(t *testing.T) {
	l, p := listenUnix(t)
	var logs safeBuffer
	s := &Server{Paths: []string{"/m"}, Fallback: fallback(), Logger: slog.New(slog.NewTextHandler(&logs, nil)),
		Handler: func(_ *Conn, r *Request) (Reply, bool) {
			if r.Accepts > 0 {
				panic("handler bug")
			}
			return Reply{Header: []byte("Content-Length: 2\r\n"), Body: []byte("ok")}, true
		}}
	go s.Serve(l)
	t.Cleanup(func() { s.Close() })
	dial := func() (net.Conn, *bufio.Reader) {
		c := dialUnix(t, p)
		return c, bufio.NewReader(c)
	}
	c, br := dial()
	io.WriteString(c, "GET /m HTTP/1.1\r\nHost: x\r\nAccept: boom\r\n\r\n")
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("the panicking connection: %v, want EOF", err)
	}
	c, br = dial()
	io.WriteString(c, "GET /m HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("the next connection: %v %v", resp, err)
	}
	if !strings.Contains(logs.String(), "handler bug") {
		t.Errorf("the panic was not logged: %q", logs.String())
	}
}

// safeBuffer is a bytes.Buffer a logger may write while the test reads.
type safeBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *safeBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *safeBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// dialUnix connects to the socket at p; every read and write fails after
// 10 s, the test's own bound.
func dialUnix(t *testing.T, p string) net.Conn {
	t.Helper()
	c, err := net.Dial("unix", p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}
