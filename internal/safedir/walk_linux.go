package safedir

import "golang.org/x/sys/unix"

// walkFlags opens the directories of a walk with O_PATH: that needs only
// search permission on the parent (like resolving the path would), not
// read permission on each directory, and the descriptor still serves
// fstat and the *at calls.
const walkFlags = unix.O_PATH
