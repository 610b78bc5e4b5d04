package agent

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wicket-sh/wicket/internal/sockettest"
)

// denySelf is a policy that admits only a uid the test never runs as, so
// the test's own requests (root's included: root is not special once a
// policy exists) are denied without needing a second uid.
const denySelf = "[[policy]]\nname = \"other\"\nuids = [4242]\nallow = [\"*\"]\n"

// rawRequest sends req on a new connection and reads one reply; the
// connection is returned for further reads. Every read is bounded.
func rawRequest(t *testing.T, sock, req string) (*http.Response, net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatalf("write request: %v", err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no reply while only the headers were sent: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp, c, br
}

// expectClosed reads from the connection after a reply: the agent must have
// closed it. The deadline only keeps a failing test from hanging.
func expectClosed(t *testing.T, what string, c net.Conn, br *bufio.Reader) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := br.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("%s: connection still open after the 403 (read n=%d err=%v), want EOF", what, n, err)
	}
}

// S-limits: a caller the policy refuses gets its 403 before the agent reads
// a byte of its body. Here the body is announced and never sent: if the
// agent waited for it, the reply would be the body timeout's 408.
func TestPolicyDecidedBeforeBody(t *testing.T) {
	h := startAgent(t, baseCfg+"[limits]\nmax_body_bytes = 1048576\nbody_timeout = \"3s\"\n"+denySelf)
	for _, size := range []int{1000, 900 << 10} {
		req := fmt.Sprintf("POST /v1/tokens/oidc HTTP/1.1\r\nHost: wicket\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", size)
		resp, c, br := rawRequest(t, h.api, req)
		if resp.StatusCode != http.StatusForbidden {
			t.Fatalf("denied caller announcing a %d-byte body: status %d, want 403 without the body being read", size, resp.StatusCode)
		}
		expectClosed(t, fmt.Sprintf("%d-byte body never sent", size), c, br)
	}
}

// S-peer: a 403 ends the connection, so a refused caller cannot keep a
// connection slot with one request now and then.
func TestForbidden_ClosesConnection(t *testing.T) {
	h := startAgent(t, baseCfg+denySelf)
	resp, c, br := rawRequest(t, h.api, "GET /v1/health HTTP/1.1\r\nHost: wicket\r\n\r\n")
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("status %d, want 403", resp.StatusCode)
	}
	if !resp.Close {
		t.Errorf("403 without Connection: close: %v", resp.Header)
	}
	expectClosed(t, "GET", c, br)

	// A denied caller that announces a body and never sends it: net/http
	// would wait to drain it before closing, holding the slot.
	resp, c, br = rawRequest(t, h.api, "POST /v1/tokens/oidc HTTP/1.1\r\nHost: wicket\r\nContent-Length: 1000\r\n\r\n")
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("POST: status %d, want 403", resp.StatusCode)
	}
	expectClosed(t, "POST with an unsent body", c, br)

	// So does the 400 for a non-canonical path, which comes before the
	// policy.
	resp, c, br = rawRequest(t, h.api, "POST /v1//tokens HTTP/1.1\r\nHost: wicket\r\nContent-Length: 1000\r\n\r\n")
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("non-canonical path: status %d, want 400", resp.StatusCode)
	}
	expectClosed(t, "400 with an unsent body", c, br)

	// The admin socket's refusals close the connection too. Root passes
	// its peer check, so refuse it by the admin token it does not send.
	tokFile := filepath.Join(t.TempDir(), "admin-token")
	os.WriteFile(tokFile, []byte("test-admin-token-0123456789\n"), 0o600)
	h2 := startAgent(t, baseCfg+"token_file = \""+tokFile+"\"\n")
	resp, c, br = rawRequest(t, h2.admin, "GET /v1/status HTTP/1.1\r\nHost: wicket\r\n\r\n")
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("admin without token: status %d, want 403", resp.StatusCode)
	}
	expectClosed(t, "admin", c, br)
}

// S-limits: a uid that may connect but that no rule admits cannot take
// every connection slot and lock out the workloads the policy admits.
func TestDeniedUID_CannotStarveAllowed(t *testing.T) {
	sockettest.RequireRoot(t)
	const maxConns = 8
	h := startAgent(t, strings.Replace(baseCfg, "[admin]", fmt.Sprintf("max_conns = %d\n[admin]", maxConns), 1))
	// uid 65534 (denied by the default policy) opens more connections than
	// the socket takes and holds them: first idle ones, then ones that each
	// send a request and keep the connection after the reply.
	idle := sockettest.HoldAs(t, 65534, 65534, h.api, 2*maxConns, "")
	busy := sockettest.HoldAs(t, 65534, 65534, h.api, 2*maxConns, "GET /v1/health HTTP/1.1\r\nHost: wicket\r\n\r\n")
	t.Logf("denied uid's connections: idle %v, with a request %v", idle.Outcomes, busy.Outcomes)
	if busy.Count("200") != 0 {
		t.Fatalf("denied uid was served: %v", busy.Outcomes)
	}
	// Root, which the policy admits, is still served while they are held
	// (one client: it keeps one connection alive between requests).
	c := sockettest.Client(h.api)
	defer c.CloseIdleConnections()
	for i := 0; i < 10; i++ {
		resp, err := c.Get("http://wicket/v1/health")
		if err != nil {
			t.Fatalf("allowed caller, request %d, while uid 65534 holds its connections: %v", i, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("allowed caller, request %d: status %d", i, resp.StatusCode)
		}
	}
	m := h.do("GET", h.admin, "/metrics", "", nil)
	if strings.Contains(m.Body, "wicket_connections_rejected_per_uid_total{socket=\"api\"} 0\n") || !strings.Contains(m.Body, "wicket_connections_rejected_per_uid_total{socket=\"api\"}") {
		t.Errorf("no connection counted as refused at the uid cap:\n%s", m.Body)
	}
}

var deniedLine = regexp.MustCompile(`(?m)^.*msg="request denied".*$`)
var suppressedCount = regexp.MustCompile(`msg="request denials suppressed".*suppressed=(\d+)`)

// S-peer: 5,000 denied requests do not write 5,000 log lines. The first
// denial of a uid is logged in full; the rest are counted in one summary
// line per uid and interval, and every one is counted in the metrics.
func TestDenials_LogSummarized(t *testing.T) {
	const n = 5000
	h := startAgent(t, baseCfg+denySelf)
	c := sockettest.Client(h.api)
	start := time.Now()
	for i := 0; i < n; i++ {
		req, _ := http.NewRequestWithContext(context.Background(), "GET", "http://wicket/v1/metadata", nil)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Fatalf("request %d: status %d, want 403", i, resp.StatusCode)
		}
	}
	elapsed := time.Since(start)
	m := h.do("GET", h.admin, "/metrics", "", nil)
	for _, want := range []string{
		"wicket_api_denied_total " + strconv.Itoa(n) + "\n",
		`wicket_denials_total{reason="policy",socket="api"} ` + strconv.Itoa(n) + "\n",
	} {
		if !strings.Contains(m.Body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	// Stopping the agent writes out the summaries still pending.
	h.stop()
	logs := h.logs.String()
	full := deniedLine.FindAllString(logs, -1)
	var suppressed, summaries int
	for _, mm := range suppressedCount.FindAllStringSubmatch(logs, -1) {
		k, _ := strconv.Atoi(mm[1])
		suppressed += k
		summaries++
	}
	// One full line, and then one summary, per uid and per interval (10s)
	// the load lasted; a quiet interval would start over with a full line.
	intervals := int(elapsed/(10*time.Second)) + 2
	if len(full)+summaries > 2*intervals {
		t.Errorf("%d denials wrote %d full lines and %d summaries in %v, want at most %d lines", n, len(full), summaries, elapsed, 2*intervals)
	}
	if len(full) == 0 || !strings.Contains(full[0], "peer_uid=") || !strings.Contains(full[0], "peer_pid=") || !strings.Contains(full[0], `route=/v1/metadata`) || !strings.Contains(full[0], "method=GET") {
		t.Errorf("first denial not logged in full: %q", full)
	}
	if len(full)+suppressed != n {
		t.Errorf("full lines %d + suppressed %d = %d, want every one of the %d denials accounted for", len(full), suppressed, len(full)+suppressed, n)
	}
}
