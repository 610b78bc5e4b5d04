package fastlane

import (
	"net"
	"sync"
	"time"
)

// handoffListener is what Fallback serves: the connections the lane hands
// over, in the order it does.
type handoffListener struct {
	addr  net.Addr
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newHandoffListener(addr net.Addr) *handoffListener {
	return &handoffListener{addr: addr, conns: make(chan net.Conn), done: make(chan struct{})}
}

// deliver hands c to the next Accept; it reports false once the listener
// is closed (the caller then closes c).
func (h *handoffListener) deliver(c net.Conn) bool {
	select {
	case <-h.done:
		return false
	default:
	}
	select {
	case h.conns <- c:
		return true
	case <-h.done:
		return false
	}
}

// Accept implements net.Listener.
func (h *handoffListener) Accept() (net.Conn, error) {
	select {
	case c := <-h.conns:
		return c, nil
	case <-h.done:
		return nil, net.ErrClosed
	}
}

// Close implements net.Listener.
func (h *handoffListener) Close() error {
	h.once.Do(func() { close(h.done) })
	return nil
}

// Addr implements net.Listener.
func (h *handoffListener) Addr() net.Addr { return h.addr }

// replayConn is a handed-over connection: its reads return first the
// bytes the lane read and did not use, and the first read deadline
// net/http sets (its header timeout) is no later than headDeadline, the
// lane's for the request those bytes begin.
type replayConn struct {
	net.Conn
	pending      []byte
	headDeadline time.Time

	mu     sync.Mutex
	capped bool // the first deadline was set

	onClose   func() // called once, at the first Close
	closeOnce sync.Once
}

// Close implements net.Conn.
func (c *replayConn) Close() error {
	err := c.Conn.Close()
	if c.onClose != nil {
		c.closeOnce.Do(c.onClose)
	}
	return err
}

// SetReadDeadline implements net.Conn.
func (c *replayConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	if !c.capped {
		c.capped = true
		if !c.headDeadline.IsZero() && (t.IsZero() || t.After(c.headDeadline)) {
			t = c.headDeadline
		}
	}
	c.mu.Unlock()
	return c.Conn.SetReadDeadline(t)
}

// SetDeadline implements net.Conn.
func (c *replayConn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.Conn.SetWriteDeadline(t)
}

func (c *replayConn) Read(b []byte) (int, error) {
	if len(c.pending) > 0 {
		n := copy(b, c.pending)
		c.pending = c.pending[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}

// Unwrap returns the accepted connection.
func (c *replayConn) Unwrap() net.Conn { return c.Conn }

// CloseWrite shuts the write side, as net/http does before closing after
// an error reply, when the accepted connection can.
func (c *replayConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
