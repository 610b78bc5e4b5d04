package soak

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// client is an HTTP/1.1 client over a Unix socket with keep-alive, as a
// workload library would use it.
type client struct {
	hc *http.Client
	tr *http.Transport
}

func newClient(socket string, conns int) *client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		DisableCompression:  true,
	}
	return &client{tr: tr, hc: &http.Client{Transport: tr, Timeout: 60 * time.Second}}
}

func (c *client) close() { c.tr.CloseIdleConnections() }

// reply is one response as the suite checks it.
type reply struct {
	status int
	header http.Header
	body   []byte
	err    error
}

func (r reply) String() string {
	if r.err != nil {
		return "error: " + r.err.Error()
	}
	if r.status == 200 && bytes.HasPrefix(r.body, []byte("eyJ")) {
		// A token: a failure message names its size, never its bytes.
		return fmt.Sprintf("%d (a %d-byte token)", r.status, len(r.body))
	}
	return fmt.Sprintf("%d %.200q", r.status, r.body)
}

func (c *client) do(method, path, body string, hdr map[string]string) reply {
	return c.doCtx(context.Background(), method, path, body, hdr)
}

func (c *client) doCtx(ctx context.Context, method, path, body string, hdr map[string]string) reply {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://wicket"+path, rd)
	if err != nil {
		return reply{err: err}
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return reply{err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return reply{status: resp.StatusCode, header: resp.Header, body: b, err: err}
}

// token asks for an OIDC token for aud.
func (c *client) token(aud string) reply {
	return c.do("POST", "/v1/tokens/oidc", `{"aud":"`+aud+`"}`, nil)
}

// rawExchange writes raw bytes on a fresh connection to the socket and
// reads everything the server sends until it closes the connection or
// the deadline passes. Hostile requests are sent this way: no client
// library gets a chance to clean them up.
func rawExchange(socket string, req []byte, d time.Duration) ([]byte, error) {
	c, err := net.DialTimeout("unix", socket, 5*time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(d))
	// The server may answer and close before it has read everything (a
	// 431 or 413): a failed write is not an error here, the reply is.
	werr := make(chan error, 1)
	go func() { _, err := c.Write(req); werr <- err }()
	out, err := io.ReadAll(io.LimitReader(c, 4<<20))
	<-werr
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return out, fmt.Errorf("no close within %s: %w", d, err)
	}
	// A reset after the reply (the server closed with unread input) is fine.
	if err != nil && len(out) > 0 {
		err = nil
	}
	return out, err
}

// parseReplies parses the HTTP responses in raw, in order.
func parseReplies(raw []byte, method string) ([]*http.Response, [][]byte, error) {
	br := bufio.NewReader(bytes.NewReader(raw))
	var rs []*http.Response
	var bodies [][]byte
	for range 1000 {
		if _, err := br.Peek(1); err == io.EOF {
			return rs, bodies, nil
		}
		resp, err := http.ReadResponse(br, &http.Request{Method: method})
		if err != nil {
			return rs, bodies, err
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return rs, bodies, err
		}
		rs = append(rs, resp)
		bodies = append(bodies, b)
	}
	return rs, bodies, errors.New("more than 1000 replies")
}

// tally counts the outcomes of a load run and keeps the first few
// failures for the report.
type tally struct {
	ok, failed atomic.Int64
	byStatus   sync.Map // int → *atomic.Int64
	mu         sync.Mutex
	samples    []string
}

func (s *tally) add(r reply, want ...int) bool {
	good := r.err == nil
	if good {
		good = false
		for _, w := range want {
			good = good || r.status == w
		}
		v, _ := s.byStatus.LoadOrStore(r.status, new(atomic.Int64))
		v.(*atomic.Int64).Add(1)
	}
	if good {
		s.ok.Add(1)
		return true
	}
	s.fail(r.String())
	return false
}

func (s *tally) fail(what string) {
	s.failed.Add(1)
	s.mu.Lock()
	if len(s.samples) < 10 {
		s.samples = append(s.samples, what)
	}
	s.mu.Unlock()
}

func (s *tally) status(code int) int64 {
	if v, ok := s.byStatus.Load(code); ok {
		return v.(*atomic.Int64).Load()
	}
	return 0
}

func (s *tally) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var codes []string
	s.byStatus.Range(func(k, v any) bool {
		codes = append(codes, fmt.Sprintf("%d×%d", k, v.(*atomic.Int64).Load()))
		return true
	})
	return fmt.Sprintf("ok %d failed %d statuses %v first failures %q", s.ok.Load(), s.failed.Load(), codes, s.samples)
}

// workers runs fn on n goroutines until ctx ends or each has made
// maxIter calls: every load loop is bounded in count and in time.
func workers(ctx context.Context, n, maxIter int, fn func(ctx context.Context, worker, iter int)) {
	var wg sync.WaitGroup
	for w := 0; w < n; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < maxIter && ctx.Err() == nil; i++ {
				fn(ctx, w, i)
			}
		}()
	}
	wg.Wait()
}

// background starts workers and returns a stop function that ends them and
// waits.
func background(t *testing.T, d time.Duration, n, maxIter int, fn func(ctx context.Context, worker, iter int)) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	done := make(chan struct{})
	go func() { workers(ctx, n, maxIter, fn); close(done) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case <-done:
			case <-time.After(90 * time.Second):
				t.Error("load workers did not stop within 90s")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}
