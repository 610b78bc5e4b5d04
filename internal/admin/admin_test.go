package admin

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/metrics"
	"github.com/wicket-sh/wicket/internal/peer"
	"github.com/wicket-sh/wicket/internal/unixsock"
)

type svc struct{ fail bool }

func (s *svc) Status() any { return map[string]string{"service": "test"} }
func (s *svc) Reload(context.Context) (api.ReloadResult, error) {
	if s.fail {
		return api.ReloadResult{}, errors.New("config /etc/secret/path.toml: line 3: bad")
	}
	return api.ReloadResult{Status: "ok", Generation: 2}, nil
}
func (s *svc) Metrics() []metrics.Sample { return nil }

func newServer(fail bool, token string) (*Server, *bytes.Buffer) {
	var logs bytes.Buffer
	s := New(&svc{fail: fail}, func() Auth { return Auth{Allow: peer.Allowlist{UIDs: []uint32{1000}}, Token: []byte(token)} },
		500, slog.New(slog.NewTextHandler(&logs, nil)))
	return s, &logs
}

func do(s *Server, p *unixsock.Peer, method, target, body string, hdr map[string]string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, "http://wicket/", strings.NewReader(body))
	r.URL.Path = target
	for k, v := range hdr {
		r.Header.Set(k, v)
	}
	if p != nil {
		r = r.WithContext(unixsock.WithPeer(r.Context(), *p))
	}
	w := httptest.NewRecorder()
	s.ServeHTTP(w, r)
	return w
}

func TestAuthorization(t *testing.T) {
	s, logs := newServer(false, "")
	for _, tc := range []struct {
		name string
		peer *unixsock.Peer
		want int
	}{
		{"no peer", nil, 403},
		{"root", &unixsock.Peer{UID: 0, GID: 0, PID: 1}, 200},
		{"self", &unixsock.Peer{UID: 500, GID: 500, PID: 2}, 200},
		{"allowed uid", &unixsock.Peer{UID: 1000, GID: 1000, PID: 3}, 200},
		{"stranger", &unixsock.Peer{UID: 1001, GID: 1001, PID: 4}, 403},
	} {
		if w := do(s, tc.peer, "GET", "/v1/status", "", nil); w.Code != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, w.Code, tc.want)
		}
	}
	if s.Denied() != 2 {
		t.Errorf("denied counter %d, want 2", s.Denied())
	}
	if !strings.Contains(logs.String(), "peer_uid=1001") || !strings.Contains(logs.String(), "outcome=denied_peer") || !strings.Contains(logs.String(), "peer_pid=4") {
		t.Errorf("denial not audited:\n%s", logs)
	}
}

func TestReloadFailure_GenericReply(t *testing.T) {
	s, logs := newServer(true, "")
	w := do(s, &unixsock.Peer{}, "POST", "/v1/reload", "", nil)
	if w.Code != 500 || w.Body.String() != "{\"error\":\"reload failed\",\"code\":\"reload_failed\"}\n" {
		t.Errorf("reply %d %q", w.Code, w.Body.String())
	}
	if !strings.Contains(logs.String(), "/etc/secret/path.toml") {
		t.Errorf("details missing from log:\n%s", logs)
	}
}

func TestTokenConstantTimeCompare(t *testing.T) {
	for _, tc := range []struct {
		header string
		want   bool
	}{
		{"Bearer 0123456789abcdef", true},
		{"bearer 0123456789abcdef", true},
		{"Bearer 0123456789abcdeF", false},
		{"Bearer 0123456789abcde", false},
		{"Bearer ", false},
		{"Basic 0123456789abcdef", false},
		{"", false},
	} {
		if got := tokenOK(tc.header, []byte("0123456789abcdef")); got != tc.want {
			t.Errorf("tokenOK(%q) = %v", tc.header, got)
		}
	}
}

// FuzzAdminRequest feeds arbitrary methods, paths, headers and bodies to the
// admin handler: it must never panic, never echo the input, and always
// answer JSON or metrics text.
func FuzzAdminRequest(f *testing.F) {
	f.Add("GET", "/v1/status", "", "", uint32(0))
	f.Add("POST", "/v1/reload", "{}", "Bearer tok", uint32(0))
	f.Add("DELETE", "/v1/../../etc/passwd", "x", "", uint32(1001))
	f.Add("GET", "/metrics", "", "", uint32(500))
	f.Add("PUT", "//v1//status", "\x00\xff", "Bearer \x00", uint32(1000))
	f.Fuzz(func(t *testing.T, method, path, body, auth string, uid uint32) {
		if !validMethodToken(method) || !strings.HasPrefix(path, "/") || strings.ContainsAny(path, "?#") {
			return
		}
		s, _ := newServer(false, "fuzz-admin-token-0123")
		w := do(s, &unixsock.Peer{UID: uid, GID: uid}, method, path, body, map[string]string{"Authorization": auth})
		if w.Code == 0 {
			t.Fatal("no status")
		}
		out := w.Body.String()
		if len(path) > 8 && strings.Contains(out, path) {
			t.Fatalf("path echoed: %q", out)
		}
		if len(body) > 8 && strings.Contains(out, body) {
			t.Fatalf("body echoed: %q", out)
		}
		if ct := w.Header().Get("Content-Type"); !strings.HasPrefix(ct, "application/json") && !strings.HasPrefix(ct, "text/plain") {
			t.Fatalf("content type %q", ct)
		}
		if w.Code == http.StatusOK && !tokenOK(auth, []byte("fuzz-admin-token-0123")) {
			t.Fatalf("200 without the admin token")
		}
	})
}

func validMethodToken(m string) bool {
	if m == "" {
		return false
	}
	for _, r := range m {
		if r < 'A' || r > 'Z' {
			return false
		}
	}
	return true
}

// countingBody counts the bytes read from a request body.
type countingBody struct {
	r io.Reader
	n int
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	b.n += n
	return n, err
}
func (b *countingBody) Close() error { return nil }

// S-limits: the admin socket reads a body only once the caller is
// authorized; a refused caller's body is never read.
func TestAdmin_PolicyDecidedBeforeBody(t *testing.T) {
	s, _ := newServer(false, "")
	var limited int
	s.LimitBodies(func() unixsock.BodyLimits { limited++; return unixsock.BodyLimits{MaxBytes: 1 << 20} },
		func(w http.ResponseWriter, _ *http.Request, _ error) { w.WriteHeader(413) })
	for _, tc := range []struct {
		name string
		peer unixsock.Peer
		want int
		read bool
	}{
		{"stranger", unixsock.Peer{UID: 1001, GID: 1001, PID: 4}, 403, false},
		{"root", unixsock.Peer{}, 200, true},
	} {
		body := &countingBody{r: strings.NewReader(strings.Repeat("x", 100000))}
		r := httptest.NewRequest("POST", "/v1/reload", nil)
		r.Body, r.ContentLength = body, 100000
		r = r.WithContext(unixsock.WithPeer(r.Context(), tc.peer))
		w := httptest.NewRecorder()
		s.ServeHTTP(w, r)
		if w.Code != tc.want || (body.n > 0) != tc.read {
			t.Errorf("%s: status %d, %d body bytes read; want %d and read=%v", tc.name, w.Code, body.n, tc.want, tc.read)
		}
		if tc.want == 403 && w.Header().Get("Connection") != "close" {
			t.Errorf("%s: 403 without Connection: close", tc.name)
		}
	}
	if limited != 1 {
		t.Errorf("body limits consulted %d times, want once (for root)", limited)
	}
}

// S-audit: a refused caller in a loop gets one full audit line, and the
// rest are counted (log summary and metrics), not logged one by one.
func TestAdmin_DenialsSummarized(t *testing.T) {
	s, logs := newServer(false, "")
	stranger := &unixsock.Peer{UID: 1001, GID: 1001, PID: 4}
	for i := 0; i < 1000; i++ {
		if w := do(s, stranger, "GET", "/v1/status", "", nil); w.Code != 403 {
			t.Fatalf("request %d: %d", i, w.Code)
		}
	}
	if n := strings.Count(logs.String(), "outcome=denied_peer"); n != 1 {
		t.Errorf("%d audit lines for 1000 denials, want 1", n)
	}
	s.FlushDenials()
	if !strings.Contains(logs.String(), `msg="admin denials suppressed" peer_uid=1001 suppressed=999`) {
		t.Errorf("no summary with the count:\n%s", logs)
	}
	w := do(s, &unixsock.Peer{}, "GET", "/metrics", "", nil)
	for _, want := range []string{"wicket_admin_denied_total 1000\n", `wicket_denials_total{reason="peer",socket="admin"} 1000` + "\n"} {
		if !strings.Contains(w.Body.String(), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}
