package agent

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/wicket-sh/wicket/internal/peer"
	"github.com/wicket-sh/wicket/internal/unixsock"
)

// keepAlive is one client connection to a socket, kept for every request
// it sends: what the policy memo is per.
type keepAlive struct {
	c  net.Conn
	br *bufio.Reader
}

func dialKeepAlive(t *testing.T, sock string) *keepAlive {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &keepAlive{c: c, br: bufio.NewReader(c)}
}

// do sends one request on the connection and returns the status; it fails
// the test if the connection is gone (the request must go on the same one).
func (k *keepAlive) do(t *testing.T, method, path, body string) int {
	t.Helper()
	k.c.SetDeadline(time.Now().Add(10 * time.Second)) // the test's own bound
	fmt.Fprintf(k.c, "%s %s HTTP/1.1\r\nHost: wicket\r\nContent-Length: %d\r\n\r\n%s", method, path, len(body), body)
	resp, err := http.ReadResponse(k.br, nil)
	if err != nil {
		t.Fatalf("%s %s on the same connection: %v", method, path, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

func memoPolicyCfg(allow ...string) string {
	return baseCfg + fmt.Sprintf("[[policy]]\nname = \"me\"\nuids = [%d]\nallow = [%s]\n", os.Geteuid(), `"`+strings.Join(allow, `", "`)+`"`)
}

// A reload that takes a route away applies to the very next request of a
// connection whose earlier requests were allowed it.
func TestPolicyMemo_ReloadInvalidates(t *testing.T) {
	h := startAgent(t, memoPolicyCfg("GET /v1/health", "GET /v1/metadata"))
	k := dialKeepAlive(t, h.api)
	for range 2 {
		if s := k.do(t, "GET", "/v1/health", ""); s != http.StatusOK {
			t.Fatalf("allowed route: %d", s)
		}
	}
	h.write(t, memoPolicyCfg("GET /v1/metadata"))
	if r := h.do("POST", h.admin, "/v1/reload", "", nil); r.Status != http.StatusOK {
		t.Fatalf("reload: %+v", r)
	}
	if s := k.do(t, "GET", "/v1/health", ""); s != http.StatusForbidden {
		t.Fatalf("route removed by the reload: %d on the same connection, want 403", s)
	}
	if !strings.Contains(h.logs.String(), "request denied") {
		t.Errorf("denial not logged:\n%s", h.logs)
	}
}

// A route the policy refuses is refused on a connection that has just
// been allowed another one.
func TestPolicyMemo_DeniedRouteAfterAllowedOne(t *testing.T) {
	h := startAgent(t, memoPolicyCfg("GET /v1/health"))
	k := dialKeepAlive(t, h.api)
	if s := k.do(t, "GET", "/v1/health", ""); s != http.StatusOK {
		t.Fatalf("allowed route: %d", s)
	}
	if s := k.do(t, "POST", "/v1/tokens/oidc", `{"aud":"x"}`); s != http.StatusForbidden {
		t.Fatalf("refused route after an allowed one: %d, want 403", s)
	}
	if n := h.agent.denied.Load(); n != 1 {
		t.Errorf("api_denied = %d, want 1", n)
	}
}

// The memo answers what Decide answers, keeps nothing a rule with exes
// decided, and misses for another policy.
func TestPolicyMemo_Decisions(t *testing.T) {
	uid := uint32(os.Geteuid())
	me := unixsock.Peer{UID: uid}
	allow, err := peer.Compile([]peer.Rule{{Name: "a", UIDs: []uint32{uid}, Allow: []string{"GET /v1/health"}}})
	if err != nil {
		t.Fatal(err)
	}
	none, err := peer.Compile([]peer.Rule{{Name: "b", UIDs: []uint32{uid + 1}, Allow: []string{"*"}}})
	if err != nil {
		t.Fatal(err)
	}
	exes, err := peer.Compile([]peer.Rule{{Name: "e", UIDs: []uint32{uid}, Exes: []string{"/bin/true"}, Allow: []string{"*"}}})
	if err != nil {
		t.Fatal(err)
	}
	var m policyMemo
	for range 2 {
		if d := m.decide(allow, me, "GET", "/v1/health"); !d.Allowed || d.Rule != "a" {
			t.Fatalf("allowed: %+v", d)
		}
		if d := m.decide(allow, me, "GET", "/v1/metadata"); d.Allowed {
			t.Fatalf("other path allowed: %+v", d)
		}
		if d := m.decide(allow, me, "POST", "/v1/health"); d.Allowed {
			t.Fatalf("other method allowed: %+v", d)
		}
	}
	if d := m.decide(none, me, "GET", "/v1/health"); d.Allowed {
		t.Fatalf("another policy answered from the memo: %+v", d)
	}
	var fresh policyMemo
	if d := fresh.decide(exes, me, "GET", "/v1/health"); d.Allowed || d.ExeErr == nil {
		t.Fatalf("rule with exes for a peer without a pidfd: %+v", d)
	}
	for i := range fresh.slots {
		if e := fresh.slots[i].Load(); e != nil {
			t.Errorf("decision that consulted the executable kept: %+v", e)
		}
	}
}
