package unixsock

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
)

// Peer is the identity of the process at the other end of a connection, as
// the kernel reported it when the connection was accepted (SO_PEERCRED).
type Peer struct {
	UID uint32
	GID uint32
	PID int32

	// proc resolves the peer's executable; nil unless the connection came
	// through a Listener on a platform that supports it.
	proc *peerProc
}

// ErrExeUnavailable is wrapped by every error from [Peer.Exe]: the caller
// must then treat the peer's executable as unknown and deny whatever
// depended on it.
var ErrExeUnavailable = errors.New("unixsock: peer executable unavailable")

// ErrPidfdUnsupported is wrapped (with ErrExeUnavailable) when the kernel
// cannot give a pidfd for a socket peer (SO_PEERPIDFD needs Linux 6.5).
// Without one, /proc/PID/exe could name whatever process later reused the
// pid, so no executable is reported at all.
var ErrPidfdUnsupported = errors.New("SO_PEERPIDFD not supported")

// Exe returns the path of the executable the connecting process runs now,
// as /proc/PID/exe shows it. It is safe against pid reuse: the pid is
// resolved through a pidfd for the exact process that connected (taken
// from the socket, SO_PEERPIDFD), and the link is trusted only if that
// process is still alive after it was read (a live process keeps its pid).
// A process that exited, or whose executable was deleted, gets an error.
func (p Peer) Exe() (string, error) {
	if p.proc == nil {
		return "", fmt.Errorf("%w: connection did not come through a Listener", ErrExeUnavailable)
	}
	return p.proc.exe(p.PID)
}

func (p Peer) String() string { return fmt.Sprintf("uid=%d gid=%d pid=%d", p.UID, p.GID, p.PID) }

// LogValue makes slog log a Peer as its kernel-reported identity, a group
// of uid, gid and pid ("peer", p gives peer.uid=… in text, "peer":{"uid":…}
// in JSON), and never the process handle it may carry.
func (p Peer) LogValue() slog.Value {
	return slog.GroupValue(slog.Any("uid", p.UID), slog.Any("gid", p.GID), slog.Any("pid", p.PID))
}

type peerKey struct{}

// WithPeer returns ctx carrying p.
func WithPeer(ctx context.Context, p Peer) context.Context {
	return context.WithValue(ctx, peerKey{}, p)
}

// PeerFromContext returns the peer attached by the server's ConnContext.
// ok is false when the request did not come through a Listener: callers must
// then deny.
func PeerFromContext(ctx context.Context) (p Peer, ok bool) {
	p, ok = ctx.Value(peerKey{}).(Peer)
	return p, ok
}
