package main

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// rawRequest sends one request line as written (no client-side cleaning of
// the path) over network/addr and returns the reply with its body.
func rawRequest(t *testing.T, network, addr, method, target string) (*http.Response, string) {
	t.Helper()
	c, err := net.DialTimeout(network, addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, method+" "+target+" HTTP/1.1\r\nHost: wicket\r\nConnection: close\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("%s %s: read reply: %v", method, target, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res, string(b)
}

// TestNoRedirects_EveryServer guards S-errors on every server `wicket dev`
// runs (issuer public listener, issuer admin socket, agent API socket,
// agent admin socket — the same handlers the services run): net/http's
// ServeMux answers a missing trailing slash, a CONNECT, "//" or "/./" with
// a redirect whose Location repeats the caller's path and query. Every one
// of them must get a JSON error instead, no 3xx, no Location, and no byte
// of the input back.
func TestNoRedirects_EveryServer(t *testing.T) {
	d := startDev(t, shortDir(t))
	servers := []struct{ name, network, addr string }{
		{"issuer public", "tcp", d.addr},
		{"issuer admin", "unix", d.issuerSock},
		{"agent api", "unix", d.api},
		{"agent admin", "unix", d.adminSock},
	}
	requests := []struct{ method, target string }{
		{"GET", "/v1/apps/EVILapp?q=<script>EVILq"},
		{"GET", "/v1/apps/EVILapp"},
		{"CONNECT", "/v1/apps/EVILapp?q=EVILq"},
		{"GET", "/v1/apps"},
		{"GET", "/dev/.well-known?EVILq"},
		{"GET", "/EVILorg/.well-known?x=EVILq"},
		{"GET", "//v1/metadata?EVILq"},
		{"GET", "/v1/./health?EVILq"},
		{"GET", "/v1/machines/self/?EVILq"},
		{"GET", "/v1/machines/?EVILq"},
		{"GET", "/v1/health/?EVILq"},
		{"OPTIONS", "*"}, // net/http's own handler would answer an empty 200
	}
	for _, s := range servers {
		for _, rq := range requests {
			res, body := rawRequest(t, s.network, s.addr, rq.method, rq.target)
			where := s.name + ": " + rq.method + " " + rq.target
			if res.StatusCode >= 300 && res.StatusCode < 400 {
				t.Errorf("%s: redirect %d to %q", where, res.StatusCode, res.Header.Get("Location"))
			}
			if loc := res.Header.Get("Location"); loc != "" {
				t.Errorf("%s: Location %q", where, loc)
			}
			if res.StatusCode < 400 {
				t.Errorf("%s: status %d, want an error", where, res.StatusCode)
			}
			if !strings.HasPrefix(body, `{"error":`) || !strings.Contains(body, `"code":`) {
				t.Errorf("%s: %d body %q, want the JSON error envelope", where, res.StatusCode, body)
			}
			for k, vs := range res.Header {
				for _, v := range vs {
					if strings.Contains(v, "EVIL") || strings.Contains(v, "script") {
						t.Errorf("%s: header %s echoes the input: %q", where, k, v)
					}
				}
			}
			if strings.Contains(body, "EVIL") || strings.Contains(body, "script") {
				t.Errorf("%s: body echoes the input: %q", where, body)
			}
		}
	}
}
