package unixsock

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// HTTPLimits are the per-socket HTTP limits (S-limits).
type HTTPLimits struct {
	ReadHeaderTimeout time.Duration // default 5s
	IdleTimeout       time.Duration // default 60s
	// WriteTimeout bounds a whole response, long polls included; it must
	// exceed the longest long-poll wait. Default 3m.
	WriteTimeout   time.Duration
	MaxHeaderBytes int // default 16 KiB
}

func (l HTTPLimits) withDefaults() HTTPLimits {
	if l.ReadHeaderTimeout <= 0 {
		l.ReadHeaderTimeout = 5 * time.Second
	}
	if l.IdleTimeout <= 0 {
		l.IdleTimeout = 60 * time.Second
	}
	if l.WriteTimeout <= 0 {
		l.WriteTimeout = 3 * time.Minute
	}
	if l.MaxHeaderBytes <= 0 {
		l.MaxHeaderBytes = 16 << 10
	}
	return l
}

// NewHTTPServer returns an HTTP/1.1 server for a Listener: each request's
// context carries the connection's Peer (see PeerFromContext), attached once
// per connection rather than re-derived by handlers.
func NewHTTPServer(h http.Handler, lim HTTPLimits, logger *slog.Logger) *http.Server {
	lim = lim.withDefaults()
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: lim.ReadHeaderTimeout,
		IdleTimeout:       lim.IdleTimeout,
		WriteTimeout:      lim.WriteTimeout,
		MaxHeaderBytes:    lim.MaxHeaderBytes,
		// "OPTIONS *" reaches the handler (and its JSON errors) instead
		// of net/http's own empty 200.
		DisableGeneralOptionsHandler: true,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if pc, ok := ConnOf(c); ok {
				return WithPeer(ctx, pc.Peer())
			}
			return ctx
		},
		// net/http logs malformed requests itself; route that to slog at
		// debug level so a hostile client cannot flood the operator's log.
		ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelDebug),
		// HTTP/2 is not offered on these sockets.
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
	}
}

// ConnOf returns the accepted *Conn c is or wraps: a wrapper says what it
// wraps with an Unwrap method (as a connection a front end handed to
// net/http with the bytes it had read, see package fastlane).
func ConnOf(c net.Conn) (*Conn, bool) {
	for range 4 {
		switch t := c.(type) {
		case *Conn:
			return t, true
		case interface{ Unwrap() net.Conn }:
			c = t.Unwrap()
		default:
			return nil, false
		}
	}
	return nil, false
}

// BodyLimits caps request bodies (S-limits).
type BodyLimits struct {
	MaxBytes int64         // default 64 KiB
	Timeout  time.Duration // time allowed to send the whole body; default 10s
}

// ErrBodyTooLarge and ErrBodyTimeout are reported to OnError by LimitBody.
var (
	ErrBodyTooLarge = errors.New("request body too large")
	ErrBodyTimeout  = errors.New("request body too slow")
)

// LimitBody reads the whole request body, up to limits().MaxBytes and within
// limits().Timeout, before calling next, so a slow or oversized body never
// ties up a handler (see ReadBody). On failure onError writes the response
// (413 or 408 by convention).
func LimitBody(limits func() BodyLimits, onError func(http.ResponseWriter, *http.Request, error), next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ReadBody(w, r, limits(), onError) {
			next.ServeHTTP(w, r)
		}
	})
}

// ReadBody reads the whole request body, up to lim.MaxBytes and within
// lim.Timeout, and replaces r.Body with the buffered copy (see
// BufferedBody). Call it only once the caller is authorized: the buffer is
// memory the caller makes the service hold. The deadline is set only while
// the body is read: a read deadline left in place would cancel long-poll
// requests later. On failure it has onError write the response, closes the
// connection after it, and returns false.
func ReadBody(w http.ResponseWriter, r *http.Request, lim BodyLimits, onError func(http.ResponseWriter, *http.Request, error)) bool {
	if r.Body == nil || r.Body == http.NoBody {
		return true
	}
	if lim.MaxBytes <= 0 {
		lim.MaxBytes = 64 << 10
	}
	if lim.Timeout <= 0 {
		lim.Timeout = 10 * time.Second
	}
	// On failure the connection is closed after the reply: otherwise
	// net/http would try to drain the rest of the body first, which is
	// exactly what a slow or oversized sender wants.
	// Failures go through bodyFailed, not a closure, and the timeout test
	// runs only on an error: either would otherwise allocate on every call.
	if r.ContentLength > lim.MaxBytes {
		return bodyFailed(w, r, onError, ErrBodyTooLarge)
	}
	_ = setReadDeadline(w, time.Now().Add(lim.Timeout))
	body, err := readBody(r, lim.MaxBytes)
	switch {
	case err != nil && isTimeout(err):
		return bodyFailed(w, r, onError, ErrBodyTimeout)
	case err != nil:
		return bodyFailed(w, r, onError, err)
	case int64(len(body)) > lim.MaxBytes:
		return bodyFailed(w, r, onError, ErrBodyTooLarge)
	}
	_ = setReadDeadline(w, time.Time{})
	bb := &bufferedBody{b: body}
	bb.Reader.Reset(body)
	r.Body = bb
	r.ContentLength = int64(len(body))
	return true
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// bodyFailed answers a body ReadBody refused and closes the connection.
func bodyFailed(w http.ResponseWriter, r *http.Request, onError func(http.ResponseWriter, *http.Request, error), err error) bool {
	CloseAfterReply(w)
	onError(w, r, err)
	return false
}

// readBody reads r's body, at most max bytes (one more says it is
// larger). A body of announced length is read into a buffer of exactly that
// size, the common case and one allocation; net/http's body reader stops at
// the announced length itself.
func readBody(r *http.Request, max int64) ([]byte, error) {
	if r.ContentLength < 0 {
		return io.ReadAll(io.LimitReader(r.Body, max+1))
	}
	body := make([]byte, r.ContentLength)
	n := 0
	for n < len(body) {
		k, err := r.Body.Read(body[n:])
		n += k
		if err == io.EOF {
			break // shorter than announced: what was read, as io.ReadAll gives
		}
		if err != nil {
			return body[:n], err
		}
	}
	return body[:n], nil
}

// deadliner is what net/http's response offers directly; asking for it
// first spares a ResponseController per request.
type deadliner interface{ SetReadDeadline(time.Time) error }

func setReadDeadline(w http.ResponseWriter, t time.Time) error {
	if d, ok := w.(deadliner); ok {
		return d.SetReadDeadline(t)
	}
	return http.NewResponseController(w).SetReadDeadline(t)
}

// CloseAfterReply makes net/http close the connection once the reply is
// written, without reading more from it: "Connection: close" ends
// keep-alive, and a read deadline in the past stops net/http from waiting to
// drain a body the handler never read (it would otherwise read up to 256 KiB
// of it, with no deadline, before closing). Use it for refusals (403, 413):
// a refused caller must not keep a connection slot.
func CloseAfterReply(w http.ResponseWriter) {
	w.Header().Set("Connection", "close")
	_ = http.NewResponseController(w).SetReadDeadline(time.Unix(1, 0))
}

// bufferedBody is a request body LimitBody has already read in full.
type bufferedBody struct {
	bytes.Reader
	b []byte
}

func (*bufferedBody) Close() error { return nil }

// BufferedBody returns the whole request body when LimitBody has already
// read it, so a handler can parse it without copying it again. ok is false
// for a body not read by LimitBody; read r.Body then.
func BufferedBody(r *http.Request) (b []byte, ok bool) {
	bb, ok := r.Body.(*bufferedBody)
	if !ok || bb.Reader.Len() != len(bb.b) {
		return nil, false // not ours, or partly consumed already
	}
	return bb.b, true
}
