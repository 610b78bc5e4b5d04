//go:build !linux

package unixsock

import (
	"errors"
	"net"
	"syscall"
)

var errUnsupported = errors.New("unixsock: peer credentials and safe socket creation are only implemented on Linux")

func bindListen(Config) (*net.UnixListener, *syscall.Stat_t, error) { return nil, nil, errUnsupported }

func readPeer(*net.UnixConn) (Peer, error) { return Peer{}, errUnsupported }
