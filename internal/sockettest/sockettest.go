// Package sockettest helps tests talk to Unix sockets, including as another
// user: RequestAs re-executes the test binary as the given uid/gid, so the
// kernel reports that uid for the connection (SO_PEERCRED) exactly as it
// would for a real workload.
package sockettest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const helperEnv = "WICKET_SOCKETTEST_REQUEST"

// Main runs the tests, or, in a helper child, the one request it was asked
// to make. Call it from TestMain.
func Main(m *testing.M) {
	if spec := os.Getenv(helperEnv); spec != "" {
		os.Exit(runHelper(spec))
	}
	os.Exit(m.Run())
}

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
	// One request, one connection: an idle keep-alive left behind would
	// count against the server's connection cap for the rest of the test.
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

// helperBinary copies the test binary somewhere any uid may execute it:
// go test builds it in a private 0700 directory.
func helperBinary() (string, error) {
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
	exe, err := helperBinary()
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
