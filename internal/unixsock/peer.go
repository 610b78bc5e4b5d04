package unixsock

import (
	"context"
	"fmt"
)

// Peer is the identity of the process at the other end of a connection, as
// the kernel reported it when the connection was accepted (SO_PEERCRED).
type Peer struct {
	UID uint32
	GID uint32
	PID int32
}

func (p Peer) String() string { return fmt.Sprintf("uid=%d gid=%d pid=%d", p.UID, p.GID, p.PID) }

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
