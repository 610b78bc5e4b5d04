// Package sockettest helps tests talk to Unix sockets, including as another
// user: RequestAs re-executes the test binary as the given uid/gid, so the
// kernel reports that uid for the connection (SO_PEERCRED) exactly as it
// would for a real workload.
package sockettest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	helperEnv = "WICKET_SOCKETTEST_REQUEST"
	holdEnv   = "WICKET_SOCKETTEST_HOLD"
)

// Main runs the tests, or, in a helper child, the one request it was asked
// to make. Call it from TestMain.
func Main(m *testing.M) {
	if spec := os.Getenv(helperEnv); spec != "" {
		os.Exit(runHelper(spec))
	}
	if spec := os.Getenv(holdEnv); spec != "" {
		os.Exit(runHold(spec))
	}
	os.Exit(m.Run())
}

// IsHelper reports whether this test binary was started as one of
// sockettest's helpers (RequestAs, HoldAs): a TestMain that prepares
// something for the tests skips that and calls Main.
func IsHelper() bool { return os.Getenv(helperEnv) != "" || os.Getenv(holdEnv) != "" }

type request struct {
	Socket, Method, Path, Body string
	Header                     map[string]string
}

// Result is what the helper saw.
type Result struct {
	Status int               `json:"status"`
	Header map[string]string `json:"header"`
	Body   string            `json:"body"`
	Err    string            `json:"err"`
}

func runHelper(spec string) int {
	var rq request
	if err := json.Unmarshal([]byte(spec), &rq); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	res := Do(rq.Socket, rq.Method, rq.Path, rq.Body, rq.Header)
	json.NewEncoder(os.Stdout).Encode(res)
	return 0
}

// Client returns an HTTP client that dials socket.
func Client(socket string) *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}
}

// Do makes one request in this process.
func Do(socket, method, path, body string, header map[string]string) Result {
	req, err := http.NewRequest(method, "http://wicket"+path, strings.NewReader(body))
	if err != nil {
		return Result{Err: err.Error()}
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	c := Client(socket)
	// One request, one connection: an idle keep-alive connection left
	// behind would count against the socket's per-uid cap until the
	// server's idle timeout.
	defer c.CloseIdleConnections()
	resp, err := c.Do(req)
	if err != nil {
		return Result{Err: err.Error()}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	h := map[string]string{}
	for k := range resp.Header {
		h[k] = resp.Header.Get(k)
	}
	return Result{Status: resp.StatusCode, Header: h, Body: string(b)}
}

var (
	exeOnce sync.Once
	exePath string
	exeErr  error
)

// HelperBinary copies the test binary somewhere any uid may execute it:
// go test builds it in a private 0700 directory.
func HelperBinary() (string, error) {
	exeOnce.Do(func() {
		self, err := os.Executable()
		if err != nil {
			exeErr = err
			return
		}
		dir, err := os.MkdirTemp("", "wicket-helper")
		if err != nil {
			exeErr = err
			return
		}
		if err := os.Chmod(dir, 0o755); err != nil {
			exeErr = err
			return
		}
		dst := filepath.Join(dir, "helper.test")
		in, err := os.Open(self)
		if err != nil {
			exeErr = err
			return
		}
		defer in.Close()
		out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
		if err != nil {
			exeErr = err
			return
		}
		if _, err := io.Copy(out, in); err != nil {
			exeErr = err
		}
		out.Close()
		exePath = dst
	})
	return exePath, exeErr
}

// RequireRoot skips the test, with the reason logged (why, or running a
// client as another uid), unless running as root; when CI is set it fails
// instead, so CI never passes by skipping.
func RequireRoot(t *testing.T, why ...string) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	reason := "needs root to run a client as another uid"
	if len(why) > 0 {
		reason = strings.Join(why, " ")
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s, and CI is set: CI runs tests as root", reason)
	}
	t.Skipf("skipping: %s (CI runs tests as root)", reason)
}

// Unavailable skips the test because something it needs is missing from
// this machine (a tool, a kernel feature), with the reason logged; when CI
// is set it fails instead: CI installs what the tests need, so a missing
// piece there is a broken set-up, not a reason to pass.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	reason := fmt.Sprintf(format, args...)
	if os.Getenv("CI") != "" {
		t.Fatalf("%s, and CI is set: .ci/run must provide it", reason)
	}
	t.Skipf("skipping: %s", reason)
}

// RequestAs makes one request on socket from a child process running as
// uid/gid with no supplementary groups. It needs root.
func RequestAs(t *testing.T, uid, gid uint32, socket, method, path, body string, header map[string]string) Result {
	t.Helper()
	RequireRoot(t)
	exe, err := HelperBinary()
	if err != nil {
		t.Fatalf("helper binary: %v", err)
	}
	spec, _ := json.Marshal(request{Socket: socket, Method: method, Path: path, Body: body, Header: header})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe)
	cmd.Env = []string{helperEnv + "=" + string(spec)}
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{}}}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helper as uid %d: %v", uid, err)
	}
	var res Result
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("helper output %q: %v", out, err)
	}
	return res
}

// Buffer is a bytes.Buffer safe for a process or goroutine to write (a
// logger, a child's stderr) while the test reads it.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write implements io.Writer.
func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns everything written so far.
func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type holdSpec struct {
	Socket, Request string
	Conns           int
}

// Held is a set of connections a child process, running as another uid,
// keeps open on a socket (see HoldAs).
type Held struct {
	// Outcomes has one entry per connection, in order: the reply's status
	// code ("403"), "closed" when the server closed the connection before
	// replying, "open" when no request was sent, or "error: ..." for
	// anything else (a failed dial included).
	Outcomes []string
	cmd      *exec.Cmd
	stdin    io.Closer
	once     sync.Once
}

// Count returns how many outcomes equal o.
func (h *Held) Count(o string) int {
	n := 0
	for _, x := range h.Outcomes {
		if x == o {
			n++
		}
	}
	return n
}

// Release closes every held connection (the child exits) and waits for it.
func (h *Held) Release() {
	h.once.Do(func() {
		h.stdin.Close()
		h.cmd.Wait()
	})
}

// HoldAs opens n connections to socket, one after the other, from a child
// process running as uid/gid with no supplementary groups. On each it sends
// request (raw HTTP/1.1; nothing when empty) and reads one reply, body
// included. It returns once every connection has its outcome; the child
// keeps them all open, as an attacker would, until Release or the end of the
// test. It needs root.
func HoldAs(t *testing.T, uid, gid uint32, socket string, n int, request string) *Held {
	t.Helper()
	RequireRoot(t)
	exe, err := HelperBinary()
	if err != nil {
		t.Fatalf("helper binary: %v", err)
	}
	spec, _ := json.Marshal(holdSpec{Socket: socket, Request: request, Conns: n})
	cmd := exec.Command(exe)
	cmd.Env = []string{holdEnv + "=" + string(spec)}
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{}}}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("holder as uid %d: %v", uid, err)
	}
	h := &Held{cmd: cmd, stdin: stdin}
	t.Cleanup(h.Release)
	// Bounded: the child gives up on each connection after 10s, and is
	// killed if it has not reported within a minute.
	timer := time.AfterFunc(time.Minute, func() { cmd.Process.Kill() })
	defer timer.Stop()
	line, err := bufio.NewReader(stdout).ReadBytes('\n')
	if err != nil {
		t.Fatalf("holder as uid %d: no report: %v", uid, err)
	}
	if err := json.Unmarshal(line, &h.Outcomes); err != nil {
		t.Fatalf("holder output %q: %v", line, err)
	}
	return h
}

func runHold(spec string) int {
	var hs holdSpec
	if err := json.Unmarshal([]byte(spec), &hs); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	var conns []net.Conn
	outcomes := make([]string, 0, hs.Conns)
	for i := 0; i < hs.Conns; i++ {
		c, err := net.DialTimeout("unix", hs.Socket, 10*time.Second)
		if err != nil {
			outcomes = append(outcomes, "error: "+err.Error())
			continue
		}
		conns = append(conns, c)
		if hs.Request == "" {
			outcomes = append(outcomes, "open")
			continue
		}
		outcomes = append(outcomes, holdRequest(c, hs.Request))
	}
	json.NewEncoder(os.Stdout).Encode(outcomes)
	// Hold everything until the parent closes our stdin.
	io.Copy(io.Discard, os.Stdin)
	for _, c := range conns {
		c.Close()
	}
	return 0
}

func holdRequest(c net.Conn, request string) string {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, request); err != nil {
		return "closed"
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
			return "closed"
		}
		return "error: " + err.Error()
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return strconv.Itoa(resp.StatusCode)
}
