// Package fastlane serves a socket's hottest requests ahead of net/http.
//
// A Server accepts every connection of a listener and reads its requests
// itself. A request of the strict form parse describes, for one of the
// server's Paths, goes to the Handler, which answers it from bytes built
// beforehand, or declines it before doing anything. Anything else, and
// every later request of that connection, goes to net/http: the
// connection, with the bytes the lane read and did not use, is handed to
// Fallback, which serves it from there as if it had accepted it itself.
// So net/http still parses, limits and answers everything unusual
// (refusals, malformed requests, slow senders, long polls), and the lane
// only spares the work net/http does for every request (its request and
// header maps, context, background read goroutine, response buffers and
// header sorting) on the requests that need none of it.
//
// The lane keeps net/http's limits for what it serves: the header timeout
// from the accept on a connection's first request, the idle timeout
// between requests and then the header timeout from a request's first
// byte, the write timeout on each reply, and no request head or body
// larger than its buffer (larger ones go to net/http, which has the
// limits for them). It never waits for a body: a head whose body has not
// all arrived goes to net/http, which reads it after the caller's policy
// and under the body's own timeout. A connection handed over keeps the
// lane's header deadline for the request it holds.
package fastlane

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// bufSize is a connection's read buffer: the largest request head and
// body the lane serves.
const bufSize = 4096

// Reply is a handler's answer: 200 OK with Header and Body.
type Reply struct {
	// Header is the reply's header lines, "Name: value\r\n" each, in the
	// order net/http writes a handler's headers (sorted by name), with
	// Content-Length among them. The lane adds Date (and Connection:
	// close when it closes), after them, as net/http does.
	Header []byte
	Body   []byte
}

// Handler answers a request, or declines it (ok false) without having
// done anything, for net/http to serve.
type Handler func(c *Conn, r *Request) (rep Reply, ok bool)

// Server is a lane in front of an http.Server.
type Server struct {
	// Paths are the request targets the lane parses requests for.
	Paths []string
	// Handler answers them.
	Handler Handler
	// Logger gets a panic the lane recovered from (nil: slog.Default()).
	Logger *slog.Logger
	// Fallback serves every connection the lane hands over; Serve runs
	// it. Its ReadHeaderTimeout, IdleTimeout (ReadTimeout for either
	// when unset, as net/http) and WriteTimeout are the lane's too.
	Fallback *http.Server

	handoff *handoffListener

	mu       sync.Mutex
	conns    map[*Conn]struct{}
	listener net.Listener
	closing  atomic.Bool
	wg       sync.WaitGroup // the lane's connection goroutines
	draining sync.WaitGroup // connections handed over during Shutdown, until closed

	served, handed atomic.Uint64
}

func (s *Server) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.Default()
}

// Stats counts the requests the lane answered and the connections it
// handed to net/http.
type Stats struct {
	Served uint64 `json:"served"`
	Handed uint64 `json:"handed_off"`
}

// Stats returns the counters.
func (s *Server) Stats() Stats {
	return Stats{Served: s.served.Load(), Handed: s.handed.Load()}
}

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = http.ErrServerClosed

// Serve accepts connections on l until Shutdown or Close, and serves
// them; it runs Fallback on the connections handed over. It returns
// ErrServerClosed after Shutdown or Close.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closing.Load() {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.listener = l
	s.conns = map[*Conn]struct{}{}
	s.handoff = newHandoffListener(l.Addr())
	s.mu.Unlock()

	go s.Fallback.Serve(s.handoff) // returns when Shutdown or Close closes s.handoff

	var backoff time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			if s.closing.Load() {
				return ErrServerClosed
			}
			var te interface{ Temporary() bool }
			if errors.As(err, &te) && te.Temporary() {
				// As net/http: back off on transient errors (out of
				// descriptors) instead of spinning.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				time.Sleep(backoff)
				continue
			}
			s.handoff.Close()
			return err
		}
		backoff = 0
		c := &Conn{nc: nc, s: s}
		c.idle = true // waiting for its first request
		if !s.track(c) {
			nc.Close()
			continue
		}
		go c.serve()
	}
}

// track adds c to the open connections, unless the server is closing.
func (s *Server) track(c *Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing.Load() {
		return false
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return true
}

func (s *Server) untrack(c *Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.wg.Done()
}

// Shutdown stops accepting, closes the lane's idle connections, waits for
// the replies under way to be written and for net/http to answer the
// requests the lane hands it meanwhile, then shuts Fallback down (which
// waits for its own, see http.Server.Shutdown), all within ctx.
func (s *Server) Shutdown(ctx context.Context) error {
	s.stop()
	done := make(chan struct{})
	go func() { s.wg.Wait(); s.draining.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		s.closeConns()
		return ctx.Err()
	}
	// Closes the hand-off listener too: no lane connection is left to
	// hand one over.
	return s.Fallback.Shutdown(ctx)
}

// Close closes the listener and every connection, the lane's and
// Fallback's, at once.
func (s *Server) Close() error {
	s.stop()
	s.closeConns()
	s.mu.Lock()
	h := s.handoff // set by Serve, under mu
	s.mu.Unlock()
	if h != nil {
		h.Close()
	}
	return s.Fallback.Close()
}

// stop closes the listener and wakes the lane's idle connections, which
// then close.
func (s *Server) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closing.CompareAndSwap(false, true) {
		return
	}
	if s.listener != nil {
		s.listener.Close()
	}
	// Fallback closes its idle connections and ends the others after
	// their reply, as its Shutdown would; its listener stays open until
	// the lane's connections are done, so a request the lane read and
	// hands over is still answered.
	s.Fallback.SetKeepAlivesEnabled(false)
	for c := range s.conns {
		c.interruptIfIdle()
	}
}

func (s *Server) closeConns() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		c.nc.Close()
	}
}

// Conn is one connection the lane serves.
type Conn struct {
	nc net.Conn
	s  *Server
	// idle: waiting for a request, the one wait Shutdown interrupts
	// (under idleMu, so that it never interrupts a read that has
	// returned a request: fill's next read deadline, or the hand-over's,
	// replaces one set too late).
	idleMu sync.Mutex
	idle   bool
	buf    [bufSize]byte
	r, w   int // buf[r:w] is read and not yet used
	// req is the request being served: the Handler gets a pointer to it,
	// which would put a local one on the heap on every request.
	req Request
	out []byte
	// State is the handler's, for this connection (nil at first).
	State any
}

// NetConn returns the accepted connection.
func (c *Conn) NetConn() net.Conn { return c.nc }

// serve reads and answers requests until the connection ends or is
// handed over.
func (c *Conn) serve() {
	defer func() {
		if err := recover(); err != nil {
			// As net/http: a panic costs its connection, not the process.
			stack := make([]byte, 16<<10)
			stack = stack[:runtime.Stack(stack, false)]
			c.s.logger().Error("fastlane: panic serving a connection", "panic", fmt.Sprint(err), "stack", string(stack))
			c.nc.Close()
		}
		c.s.untrack(c)
	}()
	srv := c.s.Fallback
	// As net/http: a connection's first request has the header timeout
	// from the accept; a later one waits for its first bytes up to the
	// idle timeout, then has the header timeout from there. Either, when
	// not set, is the read timeout.
	headerTimeout := cmp.Or(srv.ReadHeaderTimeout, srv.ReadTimeout)
	idleTimeout := cmp.Or(srv.IdleTimeout, srv.ReadTimeout)
	after := func(now time.Time, d time.Duration) time.Time {
		if d <= 0 {
			return time.Time{}
		}
		return now.Add(d)
	}
	// The header deadline of the request being read. After a later
	// request's first bytes it is "from now", taken when first needed
	// (more bytes to wait for, a hand-over): a request served from its
	// first read reads the clock once, for its reply.
	headDeadline, headFromNow := after(time.Now(), headerTimeout), false
	head := func() time.Time {
		if headFromNow {
			headDeadline, headFromNow = after(time.Now(), headerTimeout), false
		}
		return headDeadline
	}
	wait, first := headDeadline, true
	for {
		if c.r == c.w {
			c.r, c.w = 0, 0
			if !c.fill(wait, true) {
				c.nc.Close()
				return
			}
			// A later request's first bytes: its header timeout starts
			// now (the first request's started at the accept).
			headFromNow = !first
		}
		first = false
		var n, st int
		c.req, n, st = scan(c.buf[c.r:c.w], c.s.Paths)
		for st == scanMore && c.compact() {
			if !c.fill(head(), false) {
				c.nc.Close()
				return
			}
			c.req, n, st = scan(c.buf[c.r:c.w], c.s.Paths)
		}
		if st != scanned {
			c.handOver(head())
			return
		}
		rep, ok := c.s.Handler(c, &c.req)
		if !ok {
			c.handOver(head())
			return
		}
		c.r += n
		closing := c.req.Close || c.s.closing.Load()
		now, ok := c.reply(rep, closing)
		if !ok {
			c.nc.Close()
			return
		}
		c.s.served.Add(1)
		if closing {
			c.nc.Close()
			return
		}
		wait = after(now, idleTimeout)
		// A request pipelined behind this one has its own header
		// timeout, from its reply, as in net/http.
		headDeadline, headFromNow = after(now, headerTimeout), false
	}
}

// compact moves the unread bytes to the front of the buffer, and reports
// whether there is room to read more.
func (c *Conn) compact() bool {
	if c.r > 0 {
		c.w = copy(c.buf[:], c.buf[c.r:c.w])
		c.r = 0
	}
	return c.w < len(c.buf)
}

// fill reads more of a request into the buffer, waiting until deadline
// (zero: none). idle says the connection is between requests, so that
// Shutdown may interrupt the wait. It reports false when the connection
// ended, timed out or, idle, the server is closing.
func (c *Conn) fill(deadline time.Time, idle bool) bool {
	c.nc.SetReadDeadline(deadline)
	if idle {
		c.setIdle(true)
		if c.s.closing.Load() {
			c.setIdle(false)
			return false
		}
	}
	n, _ := c.nc.Read(c.buf[c.w:])
	c.setIdle(false)
	c.w += n
	// Bytes read are served (or handed over) even if an error came with
	// them; the next read reports it again.
	return n > 0
}

func (c *Conn) setIdle(v bool) {
	c.idleMu.Lock()
	c.idle = v
	c.idleMu.Unlock()
}

func (c *Conn) isIdle() bool {
	c.idleMu.Lock()
	defer c.idleMu.Unlock()
	return c.idle
}

// interruptIfIdle ends the connection's wait for a request, if it is
// waiting: it then sees the server closing and closes.
func (c *Conn) interruptIfIdle() {
	c.idleMu.Lock()
	defer c.idleMu.Unlock()
	if c.idle {
		c.nc.SetReadDeadline(time.Unix(1, 0))
	}
}

// inlineBody is the largest body a reply copies after its header, for one
// write; a larger one is written from the handler's slice, so an idle
// connection holds no copy of a large reply.
const inlineBody = 4096

// reply writes rep; closing adds Connection: close. It returns the time
// it read for the reply's Date.
func (c *Conn) reply(rep Reply, closing bool) (time.Time, bool) {
	now := time.Now()
	if d := c.s.Fallback.WriteTimeout; d > 0 {
		c.nc.SetWriteDeadline(now.Add(d))
	}
	b := append(c.out[:0], "HTTP/1.1 200 OK\r\n"...)
	b = append(b, rep.Header...)
	b = append(b, "Date: "...)
	b = appendDate(b, now)
	b = append(b, "\r\n"...)
	if closing {
		b = append(b, "Connection: close\r\n"...)
	}
	b = append(b, "\r\n"...)
	inline := len(rep.Body) <= inlineBody
	if inline {
		b = append(b, rep.Body...)
	}
	if cap(b) <= 2*inlineBody {
		c.out = b
	}
	if _, err := c.nc.Write(b); err != nil {
		return now, false
	}
	if !inline {
		if _, err := c.nc.Write(rep.Body); err != nil {
			return now, false
		}
	}
	return now, true
}

// handOver gives the connection to Fallback, with what was read of it and
// not used. net/http's header timeout for it ends no later than the
// lane's for the request it holds (headDeadline), so a slow sender does
// not get a second one.
func (c *Conn) handOver(headDeadline time.Time) {
	c.nc.SetReadDeadline(time.Time{})
	var pending []byte
	if c.r < c.w {
		pending = append([]byte(nil), c.buf[c.r:c.w]...)
	}
	rc := &replayConn{Conn: c.nc, pending: pending, headDeadline: headDeadline}
	if c.s.closing.Load() {
		// Shutdown waits for net/http to answer it and close it (its
		// keep-alives are off by now) before shutting net/http down,
		// which would drop a request it had not finished reading.
		c.s.draining.Add(1)
		rc.onClose = c.s.draining.Done
	}
	if !c.s.handoff.deliver(rc) {
		rc.Close()
		return
	}
	c.s.handed.Add(1)
}

// HeaderBytes is h as a Reply's Header: net/http's own encoding of a
// handler's headers (http.Header.Write: sorted by name, CRLF after each).
func HeaderBytes(h http.Header) []byte {
	var b bytes.Buffer
	h.Write(&b)
	return b.Bytes()
}

// dates holds the current second's Date value, formatted once a second.
var dates atomic.Pointer[dateValue]

type dateValue struct {
	sec int64
	b   []byte
}

func appendDate(b []byte, now time.Time) []byte {
	sec := now.Unix()
	d := dates.Load()
	if d == nil || d.sec != sec {
		d = &dateValue{sec: sec, b: now.UTC().AppendFormat(nil, http.TimeFormat)}
		dates.Store(d)
	}
	return append(b, d.b...)
}
