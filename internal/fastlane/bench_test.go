package fastlane

import (
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// benchConn is a connection that receives req on each of its first reads
// reads, then EOF, and discards what is written to it.
type benchConn struct {
	req     []byte
	reads   int
	written int
}

func (c *benchConn) Read(b []byte) (int, error) {
	if c.reads == 0 {
		return 0, io.EOF
	}
	c.reads--
	return copy(b, c.req), nil
}

func (c *benchConn) Write(b []byte) (int, error) {
	c.written += len(b)
	return len(b), nil
}

func (c *benchConn) Close() error                     { return nil }
func (c *benchConn) LocalAddr() net.Addr              { return &net.UnixAddr{Name: "bench", Net: "unix"} }
func (c *benchConn) RemoteAddr() net.Addr             { return &net.UnixAddr{Name: "@", Net: "unix"} }
func (c *benchConn) SetDeadline(time.Time) error      { return nil }
func (c *benchConn) SetReadDeadline(time.Time) error  { return nil }
func (c *benchConn) SetWriteDeadline(time.Time) error { return nil }

// BenchmarkLane_Request is the lane's own work per request: the read,
// parse, the handler (a fixed Reply, as the agent's), the reply's bytes
// and the write, on a connection with no socket behind it. It allocates
// nothing per request.
func BenchmarkLane_Request(b *testing.B) {
	req := "GET /v1/meta HTTP/1.1\r\nHost: localhost\r\nUser-Agent: bench/1.0\r\nAccept: application/json\r\n\r\n"
	s := &Server{
		Paths: []string{"/v1/token", "/v1/meta"},
		Handler: func(_ *Conn, r *Request) (Reply, bool) {
			if r.Accepts > 1 {
				return Reply{}, false
			}
			return laneReply, true
		},
		Fallback: &http.Server{ReadHeaderTimeout: time.Minute, IdleTimeout: time.Minute, WriteTimeout: time.Minute},
	}
	s.conns = map[*Conn]struct{}{}
	nc := &benchConn{req: []byte(req), reads: b.N}
	c := &Conn{nc: nc, s: s}
	if !s.track(c) {
		b.Fatal("not tracked")
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(req)))
	b.ResetTimer()
	c.serve()
	b.StopTimer()
	if st := s.Stats(); st.Served != uint64(b.N) || st.Handed != 0 {
		b.Fatalf("stats %+v after %d requests", st, b.N)
	}
	if nc.written < b.N*len(laneBody) {
		b.Fatalf("%d bytes written for %d requests", nc.written, b.N)
	}
}

// TestLane_RequestAllocatesNothing: serving requests allocates nothing per
// request (what BenchmarkLane_Request shows), only per connection and
// per second (the Date).
func TestLane_RequestAllocatesNothing(t *testing.T) {
	const requests = 1000
	s := &Server{
		Paths:    []string{"/v1/meta"},
		Handler:  func(*Conn, *Request) (Reply, bool) { return laneReply, true },
		Fallback: &http.Server{ReadHeaderTimeout: time.Minute, IdleTimeout: time.Minute, WriteTimeout: time.Minute},
		conns:    map[*Conn]struct{}{},
	}
	req := []byte("GET /v1/meta HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\r\n")
	allocs := testing.AllocsPerRun(1, func() {
		c := &Conn{nc: &benchConn{req: req, reads: requests}, s: s}
		if !s.track(c) {
			t.Fatal("not tracked")
		}
		c.serve()
	})
	if allocs >= requests/10 {
		t.Fatalf("%v allocations for %d requests", allocs, requests)
	}
	if st := s.Stats(); st.Served != 2*requests {
		t.Fatalf("stats %+v, want %d served", st, 2*requests)
	}
}
