package agent

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/wicket-sh/wicket/internal/fastlane"
	"github.com/wicket-sh/wicket/internal/unixsock"
)

// benchWriter is a reusable http.ResponseWriter: the benchmarks count the
// guest API handler's own allocations, not a recorder's.
type benchWriter struct {
	h      http.Header
	status int
	n      int
}

func (w *benchWriter) Header() http.Header         { return w.h }
func (w *benchWriter) WriteHeader(s int)           { w.status = s }
func (w *benchWriter) Write(p []byte) (int, error) { w.n += len(p); return len(p), nil }

// SetReadDeadline is what net/http's response offers (the body limit's
// deadline): without it the guard would count an error path.
func (w *benchWriter) SetReadDeadline(time.Time) error { return nil }

func (w *benchWriter) reset() {
	clear(w.h)
	w.status, w.n = 0, 0
}

// benchRequest is one guest API request as this process, reused across
// iterations: its body is rewound each time.
type benchRequest struct {
	r    *http.Request
	body *bytes.Reader
	raw  []byte
}

func newBenchRequest(method, path, body string) *benchRequest {
	br := &benchRequest{raw: []byte(body), body: bytes.NewReader([]byte(body))}
	r, _ := http.NewRequest(method, "http://wicket"+path, nil)
	if body != "" {
		r.ContentLength = int64(len(body))
	}
	// The connection's context as the server builds it: the peer, then
	// the connection's policy memo.
	ctx := unixsock.WithPeer(context.Background(), unixsock.Peer{UID: uint32(os.Geteuid()), GID: uint32(os.Getegid()), PID: int32(os.Getpid())})
	r = r.WithContext(withPolicyMemo(nil)(ctx, nil))
	br.r = r
	return br
}

func (br *benchRequest) next() *http.Request {
	if len(br.raw) == 0 {
		br.r.Body = http.NoBody
		return br.r
	}
	br.body.Reset(br.raw)
	br.r.Body = readCloser{br.body}
	br.r.ContentLength = int64(len(br.raw))
	return br.r
}

type readCloser struct{ *bytes.Reader }

func (readCloser) Close() error { return nil }

// benchGuestAPI runs the guest API handler (guard, policy, body limit,
// routing, the feature's handler) on one request, as the server would
// after parsing it, and reports allocations per request.
func benchGuestAPI(b *testing.B, method, path, body string, want int) {
	a, _ := bubbleAgent(b, "[limits]\ntoken_rate = 1000000\ntoken_burst = 1000000\n", &fakeIssuer{life: time.Hour})
	if err := metaFeature(a).Install([]byte(fuzzMetadata), `"e1"`); err != nil {
		b.Fatal(err)
	}
	h := a.apiHandler()
	req := newBenchRequest(method, path, body)
	w := &benchWriter{h: http.Header{}}
	// Warm: the first token request fills the cache, the first serve of a
	// token to this process is the one that is logged.
	for range 2 {
		w.reset()
		h.ServeHTTP(w, req.next())
		if w.status != 0 && w.status != http.StatusOK {
			b.Fatalf("%s %s: status %d", method, path, w.status)
		}
	}
	if w.n < want {
		b.Fatalf("%s %s: %d bytes, want at least %d", method, path, w.n, want)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		w.reset()
		h.ServeHTTP(w, req.next())
	}
	b.StopTimer()
	if w.status != 0 && w.status != http.StatusOK {
		b.Fatalf("%s %s: status %d", method, path, w.status)
	}
}

// BenchmarkGuestAPI_Metadata is GET /v1/metadata through the whole guest
// API handler.
func BenchmarkGuestAPI_Metadata(b *testing.B) {
	benchGuestAPI(b, "GET", "/v1/metadata", "", len(fuzzMetadata)/2)
}

// BenchmarkGuestAPI_CachedToken is a cached POST /v1/tokens/oidc through
// the whole guest API handler, rate limit and audit included.
func BenchmarkGuestAPI_CachedToken(b *testing.B) {
	benchGuestAPI(b, "POST", "/v1/tokens/oidc", `{"aud":"bench"}`, 40)
}

// benchFastLane runs the fast lane's handler (body limit, policy through
// the connection's memo, the route's Serve: rate limit, cache, audit) on
// one parsed request, and reports allocations per request. The lane's own
// parsing and reply writing are fastlane's BenchmarkLane_Request.
func benchFastLane(b *testing.B, method, path, body string, want int) {
	a, _ := bubbleAgent(b, "[limits]\ntoken_rate = 1000000\ntoken_burst = 1000000\n", &fakeIssuer{life: time.Hour})
	if err := metaFeature(a).Install([]byte(fuzzMetadata), `"e1"`); err != nil {
		b.Fatal(err)
	}
	// The first token request fills the cache through the handler, as a
	// miss the lane declines would.
	if method == "POST" {
		w := &benchWriter{h: http.Header{}}
		a.apiHandler().ServeHTTP(w, newBenchRequest(method, path, body).next())
	}
	routes, _ := a.fastRoutes()
	memo := &policyMemo{}
	p := unixsock.Peer{UID: uint32(os.Geteuid()), GID: uint32(os.Getegid()), PID: int32(os.Getpid())}
	req := &fastlane.Request{Method: method, Path: path, Body: []byte(body)}
	for range 2 { // the first serve of a token to this process is logged
		if rep, ok := a.serveFast(routes, memo, p, req); !ok || len(rep.Body) < want {
			b.Fatalf("%s %s: declined or short (%d bytes)", method, path, len(rep.Body))
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, ok := a.serveFast(routes, memo, p, req); !ok {
			b.Fatal("declined")
		}
	}
}

// BenchmarkFastLane_Metadata is GET /v1/metadata through the fast lane's
// handler.
func BenchmarkFastLane_Metadata(b *testing.B) {
	benchFastLane(b, "GET", "/v1/metadata", "", len(fuzzMetadata)/2)
}

// BenchmarkFastLane_CachedToken is a cached POST /v1/tokens/oidc through
// the fast lane's handler, rate limit and audit included.
func BenchmarkFastLane_CachedToken(b *testing.B) {
	benchFastLane(b, "POST", "/v1/tokens/oidc", `{"aud":"bench"}`, 40)
}
