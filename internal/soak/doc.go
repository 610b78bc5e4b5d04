// Package soak holds wicket's load and fault suite: the real
// `wicket` binary, built once per run, runs as separate issuer and agent
// processes, and the tests drive them over their Unix sockets and loopback
// TCP the way workloads and operators do — thousands of connections at
// once, slow and hostile clients, reloads under load, kill -9 of either
// process, a full disk under a token file.
//
// The tests assert correctness only (statuses, counts, bodies, memory
// bounds, processes alive), never speed. By default the package runs in
// well under three minutes; -soak=DURATION stretches the sustained-load
// tests. See docs/soak.md.
package soak
