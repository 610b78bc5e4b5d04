package unixsock

import (
	"errors"
	"os"
	"sync"
	"time"
)

// lazyDeadline is one direction's deadline of a Conn, set on the socket
// only when that makes it earlier.
//
// net/http sets a deadline eight times per keep-alive request (the write
// timeout and none again, no read deadline for the body, its background
// read's none, interruption and none again, the idle and the header
// timeout), and the body limit twice more; each is a runtime timer update
// under the socket's lock, together up to a tenth of a small request's
// cost. A deadline later than the
// one already on the socket changes nothing until that one fires: the
// socket keeps the earlier one, and when it fires before the deadline
// asked for (or when none is asked for any more), the read or write it
// interrupted is resumed with the deadline asked for (Conn.Read,
// Conn.Write). So every deadline fires exactly when it was asked to, never
// later, and a connection busy with short requests touches its timers a
// few times per header timeout instead of several times per request.
//
// One deadline is in the past on purpose: net/http ends its background
// read after every request by setting one (abortPendingRead), then none.
// That one goes on the socket at once (it must interrupt the read), and
// the deadline it replaced is put back with the next one asked for, so
// the socket's laziness survives it: two timer updates per request
// instead of five or more, and no read that fails at once on a stale past
// deadline.
//
// The invariant: when want is set, set is set too and no later than want.
type lazyDeadline struct {
	mu   sync.Mutex
	want time.Time // the deadline asked for; zero: none
	set  time.Time // the deadline on the socket; zero: none
	// past: set is in the past, so the socket fails every call at once;
	// prev is the deadline it replaced (zero: none).
	past bool
	prev time.Time
}

// update records t as the deadline asked for and sets it on the socket
// (apply) when the socket's own would fire later, or not at all.
func (d *lazyDeadline) update(t time.Time, apply func(time.Time) error) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.want = t
	if d.past {
		if interruption(t) {
			return apply(t) // still interrupted; prev stays the one to put back
		}
		// Leave the interruption: put back the deadline it replaced when
		// that is no later than t, else t itself. (If it has passed
		// meanwhile, the next read fails at once and resume applies t.)
		next := t
		if !d.prev.IsZero() && (t.IsZero() || d.prev.Before(t)) {
			next = d.prev
		}
		return d.applyLocked(next, apply)
	}
	if t.IsZero() || !d.set.IsZero() && !t.Before(d.set) {
		return nil // the socket's deadline comes first; see resume
	}
	if interruption(t) {
		prev := d.set
		if err := d.applyLocked(t, apply); err != nil {
			return err
		}
		d.past, d.prev = true, prev
		return nil
	}
	return d.applyLocked(t, apply)
}

// interruption reports whether t is a deadline set to fail calls at once
// rather than a time to wait for: net/http's aLongTimeAgo and
// CloseAfterReply's are 1970. Telling them by the value spares a clock
// read per request; a deadline just past that is not told apart is still
// correct, only not lazy (resume handles it).
func interruption(t time.Time) bool { return !t.IsZero() && t.Before(interruptionBefore) }

var interruptionBefore = time.Unix(1e9, 0) // 2001

// applyLocked puts t on the socket.
func (d *lazyDeadline) applyLocked(t time.Time, apply func(time.Time) error) error {
	if err := apply(t); err != nil {
		return err
	}
	d.set, d.past, d.prev = t, false, time.Time{}
	return nil
}

// resume is called when the socket's deadline fired: if the deadline
// asked for has not passed (or none is asked for), it goes on the socket
// and resume reports true, for the caller to retry; otherwise the timeout
// is real.
func (d *lazyDeadline) resume(err error, apply func(time.Time) error) bool {
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		return false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.want.IsZero() && !time.Now().Before(d.want) {
		return false
	}
	return d.applyLocked(d.want, apply) == nil
}

// Read reads from the connection; a timeout of a deadline set earlier
// than the one asked for now is not reported (lazyDeadline).
func (c *Conn) Read(b []byte) (int, error) {
	for {
		n, err := c.UnixConn.Read(b)
		if err == nil || n > 0 || !c.rd.resume(err, c.UnixConn.SetReadDeadline) {
			return n, err
		}
	}
}

// Write writes to the connection; a timeout of a deadline set earlier
// than the one asked for now is not reported, and the rest of b is
// written (lazyDeadline).
func (c *Conn) Write(b []byte) (int, error) {
	done := 0
	for {
		n, err := c.UnixConn.Write(b[done:])
		done += n
		if err == nil || !c.wd.resume(err, c.UnixConn.SetWriteDeadline) {
			return done, err
		}
	}
}

// SetReadDeadline implements net.Conn (lazyDeadline).
func (c *Conn) SetReadDeadline(t time.Time) error {
	return c.rd.update(t, c.UnixConn.SetReadDeadline)
}

// SetWriteDeadline implements net.Conn (lazyDeadline).
func (c *Conn) SetWriteDeadline(t time.Time) error {
	return c.wd.update(t, c.UnixConn.SetWriteDeadline)
}

// SetDeadline implements net.Conn (lazyDeadline).
func (c *Conn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.SetWriteDeadline(t)
}
