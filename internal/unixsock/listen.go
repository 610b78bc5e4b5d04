package unixsock

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// ErrInUse is returned by Listen when a live socket already answers at the path.
var ErrInUse = errors.New("socket already in use")

// ErrRefused is returned by Listen when something other than a stale socket
// sits at the path: it is left exactly as it was.
var ErrRefused = errors.New("refusing to replace existing path")

// Config describes one socket.
type Config struct {
	// Name identifies the socket in logs, status and metrics ("api", "admin").
	Name string
	// Path is the absolute socket path.
	Path string
	// Mode is the socket file's permission bits (default 0600).
	Mode fs.FileMode
	// DirMode is used when the parent directory has to be created (default
	// 0700).
	DirMode fs.FileMode
	// SetGroup gives the socket file (and a parent directory Listen
	// creates) the group GID; otherwise they keep the process's group. The
	// owner is always the service's own user.
	SetGroup bool
	GID      int
	// MaxConns caps concurrent connections; excess ones are closed at once.
	// Zero means the default of 1024.
	MaxConns int
	// MaxConnsPerUID caps the concurrent connections of any one peer uid
	// (root and the service's own uid included), so one uid cannot take
	// every slot; excess ones are closed at once. Zero means MaxConns/4
	// (at least 1).
	MaxConnsPerUID int
	// Logger receives the (rate-limited) lines about connections refused
	// by the per-uid cap; nil means slog.Default().
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.Mode == 0 {
		c.Mode = 0o600
	}
	if c.DirMode == 0 {
		c.DirMode = 0o700
	}
	if c.MaxConns <= 0 {
		c.MaxConns = 1024
	}
	if c.MaxConnsPerUID <= 0 {
		c.MaxConnsPerUID = max(1, c.MaxConns/4)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// group returns the gid to set, or -1 to leave it.
func (c Config) group() int {
	if c.SetGroup {
		return c.GID
	}
	return -1
}

// Listener is a net.Listener for one hardened socket. Accepted connections
// are *Conn values carrying the peer's credentials.
type Listener struct {
	name     string
	path     string
	ln       *net.UnixListener
	dev, ino uint64
	max      int64
	maxUID   int

	open        atomic.Int64
	accepted    atomic.Uint64
	rejected    atomic.Uint64 // over the cap
	rejectedUID atomic.Uint64 // over the per-uid cap
	credErrs    atomic.Uint64 // peer credentials unreadable

	// perUID counts open connections by peer uid; a uid leaves the map
	// when its last connection closes, so it holds at most max entries.
	uidMu  sync.Mutex
	perUID map[uint32]int
	uidLog *DenialLog

	closeOnce sync.Once
	closeErr  error
}

// Listen creates the socket described by cfg, following every S-rule.
func Listen(cfg Config) (*Listener, error) {
	cfg = cfg.withDefaults()
	if err := ValidatePath(cfg.Path); err != nil {
		return nil, err
	}
	if cfg.Mode&^fs.ModePerm != 0 {
		return nil, fmt.Errorf("socket mode %v has bits other than permissions", cfg.Mode)
	}
	if err := prepareDir(filepath.Dir(cfg.Path), cfg.DirMode, cfg.group()); err != nil {
		return nil, err
	}
	if err := clearStale(cfg.Path); err != nil {
		return nil, err
	}
	ln, st, err := bindListen(cfg)
	if err != nil {
		return nil, err
	}
	return &Listener{
		name: cfg.Name,
		path: cfg.Path,
		ln:   ln,
		dev:  uint64(st.Dev),
		ino:  st.Ino,
		max:  int64(cfg.MaxConns),
		// The per-uid cap applies to every uid, root and the service's
		// own included: exempting one would let anything running as it
		// take every slot. The default leaves room for normal use.
		maxUID: cfg.MaxConnsPerUID,
		perUID: map[uint32]int{},
		uidLog: NewDenialLog(cfg.Logger.With("socket", cfg.Name), DenialLogConfig{
			Msg:        "connection refused: uid at its connection cap",
			SummaryMsg: "connections refused at the uid cap suppressed",
		}),
	}, nil
}

// clearStale deals with whatever already sits at path (S-stale). Only a
// socket that nobody answers on is removed. The type check comes first, so a
// symlink planted at the path is never followed, neither by the liveness
// probe (which would open a connection to someone else's service) nor by
// the removal.
func clearStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("inspect %q: %w", path, err)
	}
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		return fmt.Errorf("%w: %q is a symlink", ErrRefused, path)
	case fi.Mode()&fs.ModeSocket == 0:
		return fmt.Errorf("%w: %q exists and is not a socket", ErrRefused, path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("%w: %q", ErrInUse, path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		// EAGAIN (full backlog) means someone is listening; anything else
		// (EACCES...) means we cannot tell. Either way, leave it alone.
		if errors.Is(err, syscall.EAGAIN) {
			return fmt.Errorf("%w: %q", ErrInUse, path)
		}
		return fmt.Errorf("%w: cannot tell whether %q is in use: %v", ErrRefused, path, err)
	}
	// Remove only the very inode we inspected.
	again, err := os.Lstat(path)
	if err != nil || !os.SameFile(fi, again) {
		return fmt.Errorf("%w: %q changed while being inspected", ErrRefused, path)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("remove stale socket %q: %w", path, err)
	}
	return nil
}

// Path returns the socket path.
func (l *Listener) Path() string { return l.path }

// Name returns the socket's name from its Config.
func (l *Listener) Name() string { return l.name }

// Addr implements net.Listener.
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

// Accept waits for the next connection that fits under the socket's cap and
// its peer uid's cap and whose peer credentials could be read. Excess
// connections are closed at once and counted; Accept never waits for a slot
// to free up.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.ln.AcceptUnix()
		if err != nil {
			return nil, err
		}
		if l.open.Add(1) > l.max {
			l.open.Add(-1)
			l.rejected.Add(1)
			c.Close()
			continue
		}
		p, err := readPeer(c)
		if err != nil {
			l.open.Add(-1)
			l.credErrs.Add(1)
			c.Close()
			continue
		}
		if n, ok := l.takeUID(p.UID); !ok {
			l.open.Add(-1)
			l.rejectedUID.Add(1)
			c.Close()
			l.uidLog.Deny(context.Background(), p, "uid_conn_cap", "peer_uid", p.UID, "peer_gid", p.GID, "peer_pid", p.PID,
				"open", n, "max_conns_per_uid", l.maxUID)
			continue
		}
		l.accepted.Add(1)
		p.proc = newPeerProc(c)
		return &Conn{UnixConn: c, peer: p, l: l}, nil
	}
}

// takeUID counts one more connection for uid, unless uid is at its cap;
// it returns the uid's open connections.
func (l *Listener) takeUID(uid uint32) (int, bool) {
	l.uidMu.Lock()
	defer l.uidMu.Unlock()
	n := l.perUID[uid]
	if n >= l.maxUID {
		return n, false
	}
	l.perUID[uid] = n + 1
	return n + 1, true
}

func (l *Listener) releaseUID(uid uint32) {
	l.uidMu.Lock()
	defer l.uidMu.Unlock()
	if n := l.perUID[uid]; n > 1 {
		l.perUID[uid] = n - 1
	} else {
		delete(l.perUID, uid)
	}
}

// Close stops accepting and removes the socket file, but only if the path
// still holds the inode this listener created (S-cleanup): if someone else
// has since put their own socket there, it is theirs and stays.
func (l *Listener) Close() error {
	l.closeOnce.Do(func() {
		l.closeErr = l.ln.Close()
		l.uidLog.Flush()
		fi, err := os.Lstat(l.path)
		if err != nil {
			return
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if ok && fi.Mode()&fs.ModeSocket != 0 && uint64(st.Dev) == l.dev && st.Ino == l.ino {
			if err := os.Remove(l.path); err != nil && l.closeErr == nil {
				l.closeErr = fmt.Errorf("remove socket %q: %w", l.path, err)
			}
		}
	})
	return l.closeErr
}

// Stats is a snapshot of a listener's connection counters.
type Stats struct {
	Open     int64  `json:"open"`
	Accepted uint64 `json:"accepted"`
	Rejected uint64 `json:"rejected_over_cap"`
	// RejectedUID counts connections closed because their uid was at
	// MaxConnsPerUID (not included in Rejected).
	RejectedUID uint64 `json:"rejected_over_uid_cap"`
	CredError   uint64 `json:"peer_cred_errors"`
	Max         int64  `json:"max"`
	MaxPerUID   int    `json:"max_per_uid"`
}

// Stats returns the current counters.
func (l *Listener) Stats() Stats {
	return Stats{
		Open:        l.open.Load(),
		Accepted:    l.accepted.Load(),
		Rejected:    l.rejected.Load(),
		RejectedUID: l.rejectedUID.Load(),
		CredError:   l.credErrs.Load(),
		Max:         l.max,
		MaxPerUID:   l.maxUID,
	}
}

// Conn is an accepted connection with its peer's credentials, read once at
// accept time. Its deadlines are set on the socket lazily (lazyDeadline).
type Conn struct {
	*net.UnixConn
	peer   Peer
	l      *Listener
	closed atomic.Bool
	rd, wd lazyDeadline
}

// Peer returns the credentials of the process that connected.
func (c *Conn) Peer() Peer { return c.peer }

// Close closes the connection and frees its slot under the cap.
func (c *Conn) Close() error {
	if c.closed.CompareAndSwap(false, true) {
		c.l.open.Add(-1)
		c.l.releaseUID(c.peer.UID)
		c.peer.proc.close()
	}
	return c.UnixConn.Close()
}
