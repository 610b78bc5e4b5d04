// Package unixsock is the one place wicket makes Unix-socket listeners.
//
// Every socket of the project (agent API, agent admin, issuer admin) is
// created by Listen, which enforces the socket rules SECURITY.md states:
// a validated path in a safe parent directory (S-path), careful handling of
// whatever already sits at the path (S-stale), a mode that is never looser
// than configured (S-mode), peer credentials read on every accepted
// connection (S-peer), caps on concurrent connections per socket and per
// peer uid (S-limits) and removal on close only of the socket this process
// created (S-cleanup).
package unixsock
