package fastlane

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// testWait bounds every wait of these tests: a test fails after it
// instead of hanging; none asserts how long anything takes.
const testWait = 10 * time.Second

// The lane's reply to GET /v1/meta (and POST /v1/token), and the header
// map the fallback handler sets to give the same reply through net/http.
var (
	laneBody   = []byte(`{"meta":"ok"}`)
	laneHeader = http.Header{
		"Cache-Control":  {"no-store"},
		"Content-Length": {strconv.Itoa(len(laneBody))},
		"Content-Type":   {"application/json"},
	}
	laneReply = Reply{Header: HeaderBytes(laneHeader), Body: laneBody}
)

// Accept values the lane handler declines: with acceptMimic the fallback
// handler answers as the lane would have, byte for byte but for Date.
const (
	acceptDecline = "x/decline"
	acceptMimic   = "x/mimic"
)

// testHandler is the lane's handler: laneReply for its paths, declined
// when Accept says so.
func testHandler(_ *Conn, r *Request) (Reply, bool) {
	switch a := string(r.Accept); a {
	case acceptDecline, acceptMimic:
		return Reply{}, false
	}
	return laneReply, true
}

// fallbackHandler is net/http's: laneReply's header and body for
// acceptMimic, else "fallback <method> <path>" and what it received.
// GET /block waits for release after signalling entered.
type fallbackHandler struct {
	entered chan struct{}
	release chan struct{}
}

func (h *fallbackHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Accept") == acceptMimic {
		for k, v := range laneHeader {
			w.Header()[k] = v
		}
		w.Write(laneBody)
		return
	}
	if r.URL.Path == "/block" {
		h.entered <- struct{}{}
		<-h.release
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	fmt.Fprintf(w, "fallback %s %s accept=%q big=%d body=%q",
		r.Method, r.URL.RequestURI(), r.Header.Get("Accept"), len(r.Header.Get("X-Big")), body)
}

// fallbackReply is fallbackHandler's body for a request it serves itself.
func fallbackReply(method, target, accept string, big int, body string) string {
	return fmt.Sprintf("fallback %s %s accept=%q big=%d body=%q", method, target, accept, big, body)
}

// lane is a Server under test on a Unix socket.
type lane struct {
	s        *Server
	fb       *fallbackHandler
	path     string
	serveErr chan error
}

// timeouts are Fallback's (and so the lane's) timeouts.
type timeouts struct{ header, idle, write time.Duration }

// generous are timeouts no test waits for.
var generous = timeouts{header: time.Minute, idle: time.Minute, write: time.Minute}

// startLane serves a lane with testHandler in front of fallbackHandler on
// a new socket; it is closed when the test ends.
func startLane(t *testing.T, to timeouts) *lane {
	t.Helper()
	l, path := listenUnix(t)
	fb := &fallbackHandler{entered: make(chan struct{}, 4), release: make(chan struct{})}
	s := &Server{
		Paths:   []string{"/v1/meta", "/v1/token"},
		Handler: testHandler,
		Fallback: &http.Server{
			Handler:           fb,
			ReadHeaderTimeout: to.header,
			IdleTimeout:       to.idle,
			WriteTimeout:      to.write,
		},
	}
	ln := &lane{s: s, fb: fb, path: path, serveErr: make(chan error, 1)}
	go func() { ln.serveErr <- s.Serve(l) }()
	t.Cleanup(func() { s.Close() })
	return ln
}

// dial connects to the lane; every read and write fails after testWait.
func (ln *lane) dial(t *testing.T) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("unix", ln.path)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(testWait))
	return c, bufio.NewReader(c)
}

// waitStats waits for the lane's counters to reach want.
func (ln *lane) waitStats(t *testing.T, want Stats) {
	t.Helper()
	deadline := time.Now().Add(testWait)
	for ln.s.Stats() != want {
		if time.Now().After(deadline) {
			t.Fatalf("stats %+v, want %+v", ln.s.Stats(), want)
		}
		time.Sleep(time.Millisecond)
	}
}

// fastGet is a request the lane serves; extra are header lines.
func fastGet(extra ...string) string {
	s := "GET /v1/meta HTTP/1.1\r\nHost: localhost\r\n"
	for _, l := range extra {
		s += l + "\r\n"
	}
	return s + "\r\n"
}

// post is a POST of body to target with extra header lines.
func post(target, body string, extra ...string) string {
	s := "POST " + target + " HTTP/1.1\r\nHost: localhost\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n"
	for _, l := range extra {
		s += l + "\r\n"
	}
	return s + "\r\n" + body
}

func write(t *testing.T, c net.Conn, s string) {
	t.Helper()
	if _, err := io.WriteString(c, s); err != nil {
		t.Fatalf("write: %v", err)
	}
}

// readRaw reads one response, head and Content-Length body, as sent.
func readRaw(t *testing.T, br *bufio.Reader) []byte {
	t.Helper()
	var out []byte
	length := -1
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("reading a response head after %q: %v", out, err)
		}
		out = append(out, line...)
		if line == "\r\n" {
			break
		}
		if name, value, ok := strings.Cut(line, ":"); ok && strings.EqualFold(name, "Content-Length") {
			length, err = strconv.Atoi(strings.TrimSpace(value))
			if err != nil {
				t.Fatalf("response Content-Length %q", value)
			}
		}
	}
	if length < 0 {
		t.Fatalf("response without Content-Length: %q", out)
	}
	body := make([]byte, length)
	if _, err := io.ReadFull(br, body); err != nil {
		t.Fatalf("reading a response body after %q: %v", out, err)
	}
	return append(out, body...)
}

// readBody reads one response and returns its status and body.
func readBody(t *testing.T, br *bufio.Reader) (int, string) {
	t.Helper()
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading a response: %v", err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("reading a response body: %v", err)
	}
	return res.StatusCode, string(b)
}

// expectLane reads one response and fails unless it is the lane's reply.
func expectLane(t *testing.T, br *bufio.Reader) {
	t.Helper()
	expectLaneReply(t, br, "")
}

// expectLaneReply reads one response and fails unless it is the lane's
// reply with the extra header lines after Date.
func expectLaneReply(t *testing.T, br *bufio.Reader, extra string) {
	t.Helper()
	raw := readRaw(t, br)
	want := "HTTP/1.1 200 OK\r\n" + string(laneReply.Header) + "Date: X\r\n" + extra + "\r\n" + string(laneBody)
	if got := string(withoutDate(t, raw)); got != want {
		t.Fatalf("reply %q, want the lane's %q", raw, want)
	}
}

// expectFallback reads one response and fails unless it is the fallback
// handler's body want.
func expectFallback(t *testing.T, br *bufio.Reader, want string) {
	t.Helper()
	code, body := readBody(t, br)
	if code != http.StatusOK || body != want {
		t.Fatalf("reply %d %q, want fallback's %q", code, body, want)
	}
}

// expectEOF fails unless the server closed the connection (the next read
// gets EOF, not the test's own deadline).
func expectEOF(t *testing.T, br *bufio.Reader) {
	t.Helper()
	if b, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("read after the end: %q, %v; want EOF", b, err)
	}
}

var dateLine = regexp.MustCompile("\r\nDate: ([^\r\n]*)\r\n")

// withoutDate is raw with its one Date value, checked to be an HTTP date,
// replaced by X.
func withoutDate(t *testing.T, raw []byte) []byte {
	t.Helper()
	m := dateLine.FindAllSubmatchIndex(raw, -1)
	if len(m) != 1 {
		t.Fatalf("%d Date lines in %q", len(m), raw)
	}
	date := string(raw[m[0][2]:m[0][3]])
	d, err := time.Parse(http.TimeFormat, date)
	if err != nil || d.Format(http.TimeFormat) != date {
		t.Fatalf("Date %q is not in http.TimeFormat: %v", date, err)
	}
	return append(append(append([]byte(nil), raw[:m[0][2]]...), 'X'), raw[m[0][3]:]...)
}

// TestLane_ReplyIsNetHTTPs: the lane's reply is "HTTP/1.1 200 OK", the
// handler's header, Date, then the body; and net/http, answering the same
// request on the same connection with the same header map and body,
// writes the very same bytes but for Date.
func TestLane_ReplyIsNetHTTPs(t *testing.T) {
	ln := startLane(t, generous)
	c, br := ln.dial(t)

	write(t, c, fastGet())
	lane := readRaw(t, br)
	prefix := "HTTP/1.1 200 OK\r\n" + string(laneReply.Header) + "Date: "
	if !bytes.HasPrefix(lane, []byte(prefix)) {
		t.Fatalf("lane reply %q, want it to begin %q", lane, prefix)
	}
	date, rest, ok := strings.Cut(string(lane[len(prefix):]), "\r\n")
	if !ok || rest != "\r\n"+string(laneBody) {
		t.Fatalf("lane reply %q: after Date, %q", lane, rest)
	}
	if _, err := time.Parse(http.TimeFormat, date); err != nil {
		t.Fatalf("lane Date %q: %v", date, err)
	}
	ln.waitStats(t, Stats{Served: 1})

	write(t, c, fastGet("Accept: "+acceptMimic))
	std := readRaw(t, br)
	ln.waitStats(t, Stats{Served: 1, Handed: 1})
	if l, s := withoutDate(t, lane), withoutDate(t, std); !bytes.Equal(l, s) {
		t.Fatalf("lane reply\n%q\nnet/http's\n%q", l, s)
	}
}

// TestLane_CloseReplyIsNetHTTPs: on Connection: close the lane adds
// "Connection: close" after Date, as net/http does, and closes the
// connection; both replies are the same bytes but for Date.
func TestLane_CloseReplyIsNetHTTPs(t *testing.T) {
	ln := startLane(t, generous)

	c, br := ln.dial(t)
	write(t, c, fastGet("Connection: close"))
	lane, err := io.ReadAll(br)
	if err != nil {
		t.Fatalf("reading the lane's reply to EOF: %v", err)
	}
	want := "HTTP/1.1 200 OK\r\n" + string(laneReply.Header) + "Date: X\r\nConnection: close\r\n\r\n" + string(laneBody)
	if got := string(withoutDate(t, lane)); got != want {
		t.Fatalf("lane reply %q, want %q", got, want)
	}

	c, br = ln.dial(t)
	write(t, c, fastGet("Connection: close", "Accept: "+acceptMimic))
	std, err := io.ReadAll(br)
	if err != nil {
		t.Fatalf("reading net/http's reply to EOF: %v", err)
	}
	if l, s := withoutDate(t, lane), withoutDate(t, std); !bytes.Equal(l, s) {
		t.Fatalf("lane reply\n%q\nnet/http's\n%q", l, s)
	}
	ln.waitStats(t, Stats{Served: 1, Handed: 1})
}

// TestLane_DeclinedGoesToFallback: a request the handler declines is
// served by net/http on the same connection, with all its bytes (a POST's
// body too); so is every later request of the connection, fast or not.
func TestLane_DeclinedGoesToFallback(t *testing.T) {
	for _, tt := range []struct {
		name, req, want string
	}{
		{"get", fastGet("Accept: " + acceptDecline),
			fallbackReply("GET", "/v1/meta", acceptDecline, 0, "")},
		{"post", post("/v1/token", "a=b&c", "Accept: "+acceptDecline),
			fallbackReply("POST", "/v1/token", acceptDecline, 0, "a=b&c")},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ln := startLane(t, generous)
			c, br := ln.dial(t)
			write(t, c, fastGet())
			expectLane(t, br)
			write(t, c, tt.req)
			expectFallback(t, br, tt.want)
			ln.waitStats(t, Stats{Served: 1, Handed: 1})
			// Fast, but the connection is net/http's now.
			write(t, c, fastGet("Accept: a/b"))
			expectFallback(t, br, fallbackReply("GET", "/v1/meta", "a/b", 0, ""))
			write(t, c, post("/v1/token", "xyz"))
			expectFallback(t, br, fallbackReply("POST", "/v1/token", "", 0, "xyz"))
			ln.waitStats(t, Stats{Served: 1, Handed: 1})
		})
	}
}

// TestLane_OtherRequestsGoToFallback: requests outside the lane's form go
// to net/http with their bytes intact, including ones larger than the
// lane's buffer, and net/http's own refusals reach the client.
func TestLane_OtherRequestsGoToFallback(t *testing.T) {
	big := strings.Repeat("b", 3*bufSize)
	for _, tt := range []struct {
		name, req, want string
	}{
		{"other path", "GET /other HTTP/1.1\r\nHost: x\r\nAccept: q\r\n\r\n",
			fallbackReply("GET", "/other", "q", 0, "")},
		{"query", "GET /v1/meta?a=1 HTTP/1.1\r\nHost: x\r\n\r\n",
			fallbackReply("GET", "/v1/meta?a=1", "", 0, "")},
		{"post elsewhere", post("/other", "hello", "Accept: a"),
			fallbackReply("POST", "/other", "a", 0, "hello")},
		{"chunked", "POST /v1/token HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
			fallbackReply("POST", "/v1/token", "", 0, "abcde")},
		{"head beyond the buffer", fastGet("X-Big: " + big),
			fallbackReply("GET", "/v1/meta", "", len(big), "")},
		{"body beyond the buffer", post("/v1/token", big),
			fallbackReply("POST", "/v1/token", "", 0, big)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ln := startLane(t, generous)
			c, br := ln.dial(t)
			write(t, c, tt.req)
			expectFallback(t, br, tt.want)
			ln.waitStats(t, Stats{Handed: 1})
		})
	}

	t.Run("malformed", func(t *testing.T) {
		ln := startLane(t, generous)
		c, br := ln.dial(t)
		write(t, c, "GET /v1/meta HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
		if code, _ := readBody(t, br); code != http.StatusBadRequest {
			t.Fatalf("two Hosts: %d, want net/http's 400", code)
		}
	})
}

// TestLane_Pipelined: requests written at once are answered in order,
// the fast ones by the lane until the first that is not, which net/http
// serves with all the bytes after it.
func TestLane_Pipelined(t *testing.T) {
	ln := startLane(t, generous)
	c, br := ln.dial(t)
	write(t, c, fastGet()+fastGet("Accept: 1")+post("/other", "body")+fastGet("Accept: 2")+post("/v1/token", "tail"))
	expectLane(t, br)
	expectLane(t, br)
	expectFallback(t, br, fallbackReply("POST", "/other", "", 0, "body"))
	expectFallback(t, br, fallbackReply("GET", "/v1/meta", "2", 0, ""))
	expectFallback(t, br, fallbackReply("POST", "/v1/token", "", 0, "tail"))
	ln.waitStats(t, Stats{Served: 2, Handed: 1})
}

// TestLane_SplitRequest: a request whose head arrives in parts is read
// whole by the lane and served by it when it is of the lane's form; one
// that is not, or whose body comes in a later write (which net/http reads
// after the policy, under the body's own timeout), goes to net/http with
// every byte. The second part is written only once the lane has read the
// first: a head's rest when it waits for more (its connection is not
// idle, nothing was served or handed over), a body's once it has handed
// the connection over.
func TestLane_SplitRequest(t *testing.T) {
	for _, tt := range []struct {
		name, req string
		at        int    // the first write's length
		fallback  string // net/http's reply; "": the lane's
	}{
		{"head", fastGet("Accept: z"), len(fastGet()) - 4, ""},
		{"body", post("/v1/token", "0123456789"), len(post("/v1/token", "0123456789")) - 4, fallbackReply("POST", "/v1/token", "", 0, "0123456789")},
		{"declined", fastGet("Accept: " + acceptDecline), len(fastGet()) - 4, fallbackReply("GET", "/v1/meta", acceptDecline, 0, "")},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ln := startLane(t, generous)
			c, br := ln.dial(t)
			write(t, c, tt.req[:tt.at])
			if tt.name == "body" {
				ln.waitStats(t, Stats{Handed: 1}) // at once: the lane waits for no body
			} else {
				ln.waitReading(t)
			}
			write(t, c, tt.req[tt.at:])
			if tt.fallback == "" {
				expectLane(t, br)
				ln.waitStats(t, Stats{Served: 1})
				return
			}
			expectFallback(t, br, tt.fallback)
			ln.waitStats(t, Stats{Handed: 1})
		})
	}
}

// waitReading waits until the lane's only connection has read part of a
// request and waits for the rest.
func (ln *lane) waitReading(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(testWait)
	for time.Now().Before(deadline) {
		ln.s.mu.Lock()
		reading := false
		for c := range ln.s.conns {
			reading = !c.isIdle() // idle from the accept until the first read returns
		}
		ln.s.mu.Unlock()
		if reading {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("the lane never read the first part")
}

// A connection handed over with part of a request keeps the lane's
// header timeout for it: net/http's first read deadline (its own header
// timeout) is no later than the lane's, and the deadlines after it are
// net/http's own.
func TestReplayConn_HeaderDeadlineCapped(t *testing.T) {
	head := time.Now().Add(time.Second)
	rc := &replayConn{Conn: &deadlineConn{}, headDeadline: head}
	rc.SetReadDeadline(head.Add(time.Hour))
	if got := rc.Conn.(*deadlineConn).read; !got.Equal(head) {
		t.Errorf("net/http's header deadline %v, want the lane's %v", got, head)
	}
	rc.SetReadDeadline(time.Time{})
	if got := rc.Conn.(*deadlineConn).read; !got.IsZero() {
		t.Errorf("a later deadline (none) became %v", got)
	}
	rc = &replayConn{Conn: &deadlineConn{}, headDeadline: head}
	earlier := head.Add(-time.Millisecond)
	rc.SetReadDeadline(earlier)
	if got := rc.Conn.(*deadlineConn).read; !got.Equal(earlier) {
		t.Errorf("an earlier deadline became %v", got)
	}
}

// deadlineConn records the read deadline set on it.
type deadlineConn struct {
	net.Conn
	read time.Time
}

func (c *deadlineConn) SetReadDeadline(t time.Time) error { c.read = t; return nil }

// TestLane_Stats: Served counts every request the lane answered, the last
// of a connection (Connection: close) too; Handed the connections handed
// over.
func TestLane_Stats(t *testing.T) {
	ln := startLane(t, generous)
	c, br := ln.dial(t)
	write(t, c, fastGet()+fastGet())
	expectLane(t, br)
	expectLane(t, br)
	ln.waitStats(t, Stats{Served: 2})

	c, br = ln.dial(t)
	write(t, c, fastGet("Connection: close"))
	expectLaneReply(t, br, "Connection: close\r\n")
	expectEOF(t, br)
	ln.waitStats(t, Stats{Served: 3})

	for range 2 {
		c, br = ln.dial(t)
		write(t, c, "GET /other HTTP/1.1\r\nHost: x\r\n\r\n")
		expectFallback(t, br, fallbackReply("GET", "/other", "", 0, ""))
	}
	ln.waitStats(t, Stats{Served: 3, Handed: 2})
}

// TestLane_Shutdown: Shutdown closes the lane's idle connections at once
// (not at their timeouts, which are a minute here), refuses new ones,
// makes Serve return ErrServerClosed, and returns only after a request
// net/http is serving on a handed-over connection has been answered.
func TestLane_Shutdown(t *testing.T) {
	ln := startLane(t, generous)

	_, silentBR := ln.dial(t)      // waiting for its first request
	served, servedBR := ln.dial(t) // idle after a request
	write(t, served, fastGet())
	expectLane(t, servedBR)
	blocked, blockedBR := ln.dial(t) // handed over, its request under way
	write(t, blocked, "GET /block HTTP/1.1\r\nHost: x\r\n\r\n")
	waitChan(t, ln.fb.entered, "the blocking request")
	ln.waitStats(t, Stats{Served: 1, Handed: 1})

	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), testWait)
		defer cancel()
		done <- ln.s.Shutdown(ctx)
	}()
	expectEOF(t, silentBR)
	expectEOF(t, servedBR)
	ln.waitServeClosed(t)
	if c, err := net.Dial("unix", ln.path); err == nil {
		c.Close()
		t.Fatal("a connection accepted after Shutdown")
	}
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned (%v) with a request under way", err)
	default:
	}

	close(ln.fb.release)
	expectFallback(t, blockedBR, fallbackReply("GET", "/block", "", 0, ""))
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
	case <-time.After(testWait):
		t.Fatal("Shutdown did not return")
	}
	expectEOF(t, blockedBR)
}

// TestLane_Close: Close closes every connection at once, the lane's and
// the handed-over ones with a request under way.
func TestLane_Close(t *testing.T) {
	ln := startLane(t, generous)
	served, servedBR := ln.dial(t)
	write(t, served, fastGet())
	expectLane(t, servedBR)
	blocked, blockedBR := ln.dial(t)
	write(t, blocked, "GET /block HTTP/1.1\r\nHost: x\r\n\r\n")
	waitChan(t, ln.fb.entered, "the blocking request")
	defer close(ln.fb.release)

	if err := ln.s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	expectEOF(t, servedBR)
	expectEOF(t, blockedBR)
	ln.waitServeClosed(t)
}

// TestLane_HeaderTimeout: a connection that sends nothing is closed by the
// lane after ReadHeaderTimeout, without going to net/http.
func TestLane_HeaderTimeout(t *testing.T) {
	ln := startLane(t, timeouts{header: 200 * time.Millisecond, idle: time.Minute, write: time.Minute})
	_, br := ln.dial(t)
	expectEOF(t, br)
	if st := ln.s.Stats(); st != (Stats{}) {
		t.Fatalf("stats %+v after a silent connection", st)
	}
}

// TestLane_IdleTimeout: a keep-alive connection idle after a request the
// lane served is closed after IdleTimeout.
func TestLane_IdleTimeout(t *testing.T) {
	ln := startLane(t, timeouts{header: time.Minute, idle: 200 * time.Millisecond, write: time.Minute})
	c, br := ln.dial(t)
	write(t, c, fastGet())
	expectLane(t, br)
	expectEOF(t, br)
	if st := ln.s.Stats(); st != (Stats{Served: 1}) {
		t.Fatalf("stats %+v", st)
	}
}

func waitChan(t *testing.T, c <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-c:
	case <-time.After(testWait):
		t.Fatalf("waiting for %s", what)
	}
}

// waitServeClosed waits for Serve to return ErrServerClosed.
func (ln *lane) waitServeClosed(t *testing.T) {
	t.Helper()
	select {
	case err := <-ln.serveErr:
		if !errors.Is(err, ErrServerClosed) {
			t.Fatalf("Serve: %v, want ErrServerClosed", err)
		}
	case <-time.After(testWait):
		t.Fatal("Serve did not return")
	}
}
