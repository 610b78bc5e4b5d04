//go:build !linux

package safedir

import "golang.org/x/sys/unix"

// walkFlags: without O_PATH, each directory of a walk must be readable.
const walkFlags = unix.O_RDONLY
