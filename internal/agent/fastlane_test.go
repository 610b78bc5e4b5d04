package agent

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/wicket-sh/wicket/internal/agent/agenttest"
	"github.com/wicket-sh/wicket/internal/sockettest"
	"github.com/wicket-sh/wicket/internal/wait"
)

// rawConn is one keep-alive connection to a socket, for requests written
// as bytes and replies read as bytes.
type rawConn struct {
	c  net.Conn
	br *bufio.Reader
}

func dialRaw(t *testing.T, socket string) *rawConn {
	t.Helper()
	c, err := net.Dial("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	return &rawConn{c: c, br: bufio.NewReader(c)}
}

// do writes req and returns the reply's bytes, as sent.
func (rc *rawConn) do(t *testing.T, req string) []byte {
	t.Helper()
	if _, err := io.WriteString(rc.c, req); err != nil {
		t.Fatal(err)
	}
	var raw bytes.Buffer
	resp, err := http.ReadResponse(bufio.NewReader(io.TeeReader(rc.br, &raw)), nil)
	if err != nil {
		t.Fatalf("reading the reply to %q: %v", req, err)
	}
	io.ReadAll(resp.Body)
	resp.Body.Close()
	return raw.Bytes()
}

var dateLine = regexp.MustCompile(`(?m)^Date: [^\r]*\r$`)

// withoutDate is a reply with its Date header's value replaced.
func withoutDate(t *testing.T, b []byte) string {
	t.Helper()
	if !dateLine.Match(b) {
		t.Fatalf("reply without a Date header:\n%s", b)
	}
	return dateLine.ReplaceAllString(string(b), "Date: -\r")
}

// counter is one of the agent's status counters.
func (g *guest) counter(t *testing.T, key string) uint64 {
	t.Helper()
	var st struct {
		Counters map[string]uint64 `json:"counters"`
	}
	r := g.do("GET", g.admin, "/v1/status", "", nil)
	if err := json.Unmarshal([]byte(r.Body), &st); err != nil {
		t.Fatalf("status: %v: %+v", err, r)
	}
	v, ok := st.Counters[key]
	if !ok {
		t.Fatalf("status has no counter %q", key)
	}
	return v
}

// counterAt is the counter once it has reached want, or what it is 5 s
// later: the lane counts a request after its reply is written, so a
// client that has read the reply can ask before the count is made.
func (g *guest) counterAt(t *testing.T, key string, want uint64) uint64 {
	t.Helper()
	var v uint64
	wait.Until(5*time.Second, func() bool { v = g.counter(t, key); return v >= want })
	return v
}

// The fast lane answers metadata and a cached token with net/http's very
// bytes but for Date: keep-alive and Connection: close, a metadata reply
// larger than net/http's chunking threshold (its length is set by both),
// and the reply's security headers. Each pair is one agent's reply to a
// request the lane serves and to the same request made so that the lane
// declines it (a Connection header with one more token, which the
// handlers ignore), checked by the lane's counters.
func TestFastLane_RepliesAsNetHTTP(t *testing.T) {
	is := agenttest.New(t)
	is.SetTags(map[string]string{"big": strings.Repeat("x", 3000)})
	g := startGuest(t, is, noLimits)
	g.waitMetadata(t)
	if r := g.req(t, "POST", "/v1/tokens/oidc", `{"aud":"sts.amazonaws.com"}`, nil); r.Status != 200 {
		t.Fatalf("warming the token cache: %+v", r)
	}
	const tokenBody = `{"aud":"sts.amazonaws.com"}`
	for _, tc := range []struct{ name, head, body string }{
		{"metadata", "GET /v1/metadata HTTP/1.1\r\nHost: wicket\r\n", ""},
		{"token", fmt.Sprintf("POST /v1/tokens/oidc HTTP/1.1\r\nHost: wicket\r\nAccept: */*\r\nContent-Length: %d\r\n", len(tokenBody)), tokenBody},
	} {
		for _, conn := range []string{"keep-alive", "close"} {
			t.Run(tc.name+"/"+conn, func(t *testing.T) {
				served, handed := g.counter(t, "api_fast_lane"), g.counter(t, "api_fast_lane_handoffs")
				fast := dialRaw(t, g.api).do(t, tc.head+"Connection: "+conn+"\r\n\r\n"+tc.body)
				if got := g.counterAt(t, "api_fast_lane", served+1); got != served+1 {
					t.Fatalf("the lane served %v requests, want 1", got-served)
				}
				slow := dialRaw(t, g.api).do(t, tc.head+"Connection: "+conn+", x-test\r\n\r\n"+tc.body)
				if got := g.counterAt(t, "api_fast_lane_handoffs", handed+1); got != handed+1 {
					t.Fatalf("the lane handed %v connections to net/http, want 1", got-handed)
				}
				if f, s := withoutDate(t, fast), withoutDate(t, slow); f != s {
					t.Errorf("the lane's reply differs from net/http's:\nlane:\n%s\nnet/http:\n%s", f, s)
				}
				if !bytes.Contains(fast, []byte("\r\nCache-Control: no-store\r\n")) || !bytes.Contains(fast, []byte("\r\nX-Content-Type-Options: nosniff\r\n")) {
					t.Errorf("the lane's reply lacks the private reply headers:\n%s", fast)
				}
				if tc.name == "metadata" && (len(fast) < 3000 || bytes.Contains(fast, []byte("chunked"))) {
					t.Errorf("large metadata reply (%d bytes) not sent whole with its length:\n%.300s", len(fast), fast)
				}
			})
		}
	}
}

// A connection the lane serves is refused the moment a reload's policy
// refuses its caller: the policy memo is keyed by the policy that
// decided, on the lane as in net/http.
func TestFastLane_ReloadedPolicyAppliesToOpenConnections(t *testing.T) {
	is := agenttest.New(t)
	g := startGuest(t, is, noLimits)
	g.waitMetadata(t)
	rc := dialRaw(t, g.api)
	const req = "GET /v1/metadata HTTP/1.1\r\nHost: wicket\r\n\r\n"
	before := g.counter(t, "api_fast_lane")
	if r := rc.do(t, req); !bytes.HasPrefix(r, []byte("HTTP/1.1 200 ")) {
		t.Fatalf("before the reload: %s", r)
	}
	if g.counterAt(t, "api_fast_lane", before+1) != before+1 {
		t.Fatal("the first request was not served by the lane")
	}
	g.write(t, baseCfg+fmt.Sprintf("[issuer]\nurl = %q\n", is.URL)+noLimits+
		"[[policy]]\nuids=[0]\nallow=[\"GET /v1/health\"]\n")
	if r := g.do("POST", g.admin, "/v1/reload", "", nil); r.Status != 200 {
		t.Fatalf("reload: %+v", r)
	}
	denied := g.counter(t, "api_denied")
	if r := rc.do(t, req); !bytes.HasPrefix(r, []byte("HTTP/1.1 403 ")) {
		t.Fatalf("after a reload refusing the caller, the open connection got:\n%s", r)
	}
	if g.counter(t, "api_denied") != denied+1 || !strings.Contains(g.logs.String(), "request denied") {
		t.Error("the refusal was not counted and logged as the guard's")
	}
}

// The audit trail on the lane is the handler's: one line for the token's
// fetch, one for its first serve from the cache to each process, none for
// the serves after that; and the rate limit takes one token per request
// whichever serves it (a miss the lane declines gives back what it took).
func TestFastLane_TokenAuditAndRateLimit(t *testing.T) {
	is := agenttest.New(t)
	g := startGuest(t, is, "[limits]\ntoken_rate = 0.001\ntoken_burst = 4\n")
	const req = "POST /v1/tokens/oidc HTTP/1.1\r\nHost: wicket\r\nContent-Length: 0\r\n\r\n"
	lines := func(outcome string) int {
		return len(regexp.MustCompile(`msg="oidc token" .*outcome=`+outcome+`\b`).FindAllString(g.logs.String(), -1))
	}
	served := g.counter(t, "api_fast_lane")
	for i := range 3 {
		// A connection each: the first request (a miss) hands its
		// connection to net/http, the others are the lane's.
		if r := dialRaw(t, g.api).do(t, req); !bytes.HasPrefix(r, []byte("HTTP/1.1 200 ")) {
			t.Fatalf("request %d: %s", i, r)
		}
	}
	if got := g.counterAt(t, "api_fast_lane", served+2) - served; got != 2 {
		t.Fatalf("the lane served %d of the 3 requests, want the 2 cache hits", got)
	}
	if n := lines("issuer"); n != 1 {
		t.Errorf("%d audit lines for the fetch, want 1:\n%s", n, g.logs.String())
	}
	if n := lines("cache"); n != 1 {
		t.Errorf("%d audit lines for the cache hits of one process, want 1 (its first):\n%s", n, g.logs.String())
	}
	// The fourth token of the burst, from another process: logged, as
	// that process's first serve.
	if r := sockettest.RequestAs(t, 0, 0, g.api, "POST", "/v1/tokens/oidc", "", nil); r.Status != 200 {
		t.Fatalf("another process: %+v", r)
	}
	if n := lines("cache"); n != 2 {
		t.Errorf("%d audit lines for cache hits, want 2 (one per process):\n%s", n, g.logs.String())
	}
	// The burst of 4 is spent: one token per request, the miss included.
	if r := dialRaw(t, g.api).do(t, req); !bytes.HasPrefix(r, []byte("HTTP/1.1 429 ")) {
		t.Fatalf("the fifth request of a burst of 4: %s", r)
	}
	if g.counter(t, "rate_limited") != 1 {
		t.Error("the refusal was not counted")
	}
}
