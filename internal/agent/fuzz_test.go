package agent

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wicket-sh/wicket/internal/unixsock"
)

const fuzzMetadata = `{"machine_id":"m-fuzz01","machine_name":"fz","app":"fuzzapp","org":"acme","region":"ams","image":"img:1","image_digest":"sha256:00","private_ip":"fdaa::9","tags":{"role":"fz"}}` + "\n"

// FuzzGuestHandler feeds raw request bytes to the whole guest API handler
// (guards, policy, metadata, tokens, proxy matching) as root: it must never
// panic, never answer 500, and never echo input it did not already hold.
func FuzzGuestHandler(f *testing.F) {
	dir := f.TempDir()
	cfg := filepath.Join(dir, "agent.toml")
	os.WriteFile(cfg, []byte(`
[api]
socket_path = "/run/wicket-fuzz/api.sock"
[admin]
socket_path = "/run/wicket-fuzz/admin.sock"
[[proxy.route]]
match = "GET /v1/apps/{app}/machines/{self}"
upstream = "http://127.0.0.1:1"
[[proxy.route]]
match = "POST /v1/apps/{app}/machines/{self}/*"
upstream = "http://127.0.0.1:1"
`), 0o600)
	a, err := New(Options{ConfigPath: cfg, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		f.Fatal(err)
	}
	const etag = `"fz-etag-1"`
	if err := metaFeature(a).Install([]byte(fuzzMetadata), etag); err != nil {
		f.Fatal(err)
	}
	// Long polls return at once: the agent is "stopping".
	a.stopFunc()
	h := a.apiHandler()
	// Everything a reply may legitimately contain.
	legit := strings.Join([]string{fuzzMetadata, `{"role":"fz"}` + "\n", etag,
		"application/json", "text/plain; charset=utf-8", "no-store", "nosniff", "GET, POST", "close",
		`{"status":"ok"}`, "bad request", "bad_request", "forbidden", "not found", "not_found",
		"method not allowed", "method_not_allowed", "request body too large", "body_too_large",
		"rate limited", "rate_limited", "token unavailable", "upstream unavailable", "upstream_unavailable",
		"metadata unavailable", "request timeout", "request_timeout",
		"Content-Type", "Cache-Control", "X-Content-Type-Options", "Etag", "Retry-After", "Allow", "Connection"}, "\n")

	for _, s := range []string{
		"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /v1/metadata/tags/role?wait=true&etag=%22fz-etag-1%22&timeout=1s HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST /v1/tokens/oidc HTTP/1.1\r\nHost: x\r\nContent-Length: 22\r\n\r\n{\"aud\":\"EVILMARKER1\"}",
		"GET /v1/apps/fuzzapp/machines/m-fuzz01%2f..%2fother HTTP/1.1\r\nHost: x\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(raw)))
		if err != nil {
			return
		}
		ctx := unixsock.WithPeer(context.Background(), unixsock.Peer{UID: 0, GID: 0, PID: 1})
		req = req.WithContext(ctx)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code >= 500 && w.Code != http.StatusServiceUnavailable {
			t.Fatalf("status %d for %q", w.Code, raw)
		}
		reply := []string{w.Body.String()}
		for k, vs := range w.Header() {
			reply = append(reply, k)
			reply = append(reply, vs...)
		}
		for _, in := range inputFragments(raw, req) {
			if len(in) < 8 || strings.Contains(legit, in) {
				continue
			}
			for _, part := range reply {
				if strings.Contains(part, in) {
					t.Fatalf("reply echoes input %q: %q", in, reply)
				}
			}
		}
	})
}

// inputFragments lists the pieces of a request a reply could echo.
func inputFragments(raw []byte, req *http.Request) []string {
	out := []string{req.URL.Path, req.URL.RawQuery, req.RequestURI}
	out = append(out, strings.Split(req.URL.Path, "/")...)
	if q, err := url.ParseQuery(req.URL.RawQuery); err == nil {
		for k, vs := range q {
			out = append(out, k)
			out = append(out, vs...)
		}
	}
	for k, vs := range req.Header {
		out = append(out, k)
		out = append(out, vs...)
	}
	if i := bytes.Index(raw, []byte("\r\n\r\n")); i >= 0 {
		out = append(out, string(raw[i+4:]))
	}
	return out
}
