//go:build !linux

package unixsock

import (
	"fmt"
	"net"
)

type peerProc struct{}

func newPeerProc(*net.UnixConn) *peerProc { return nil }

func (*peerProc) exe(int32) (string, error) {
	return "", fmt.Errorf("%w: %w on this platform", ErrExeUnavailable, ErrPidfdUnsupported)
}

func (*peerProc) close() {}

// PeerPidfdSupported reports that pidfds for socket peers are unavailable.
func PeerPidfdSupported() error { return ErrPidfdUnsupported }
