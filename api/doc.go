// Package api is wicket's wire contract: every body, constant and name that
// crosses a process boundary. The guest API (the agent's Unix socket), the
// issuer's HTTP API (agent to issuer), the admin sockets (operator to agent
// or issuer), the environment a workload is started with, and the stable
// error codes all live here, once.
//
// The package imports only the standard library, so a workload, a test
// double or another implementation of either side can depend on it without
// pulling in wicket's servers. A field's JSON name or a constant's value
// never changes meaning once released: clients match on them.
//
// Servers never put caller input, paths, file names, upstream bodies or
// internal errors into an [ErrorReply]: its message is a generic constant
// and its code one of the Code constants below.
package api
