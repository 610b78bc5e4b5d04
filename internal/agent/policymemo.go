package agent

import (
	"context"
	"net"
	"sync/atomic"

	"github.com/wicket-sh/wicket/internal/peer"
	"github.com/wicket-sh/wicket/internal/unixsock"
)

// policyMemo remembers, for one guest API connection, the policy's
// decisions for the last few (method, path) pairs it asked. The peer's
// credentials are fixed for the connection (read once at accept), so a
// decision depends only on the policy, the method and the path: an entry
// holds the very *peer.Policy it was decided by, and a reload, which
// swaps in a new one, makes every entry miss. A decision that consulted
// the caller's executable is never kept: the process may exec another
// program while its connection stays open, and the policy must see it.
// Denials are logged and counted by the guard on every request either
// way; the memo only spares Decide's walk over the rules.
type policyMemo struct {
	slots [4]atomic.Pointer[memoEntry]
	next  atomic.Uint32
}

type memoEntry struct {
	policy       *peer.Policy
	method, path string
	d            peer.Decision
}

// decide is pol.Decide(p, method, path), from the memo when it holds it.
func (m *policyMemo) decide(pol *peer.Policy, p unixsock.Peer, method, path string) peer.Decision {
	for i := range m.slots {
		if e := m.slots[i].Load(); e != nil && e.policy == pol && e.method == method && e.path == path {
			return e.d
		}
	}
	d := pol.Decide(p, method, path)
	if d.Exe == "" && d.ExeErr == nil {
		i := m.next.Add(1) % uint32(len(m.slots))
		m.slots[i].Store(&memoEntry{policy: pol, method: method, path: path, d: d})
	}
	return d
}

type policyMemoKey struct{}

// withPolicyMemo gives each connection of the guest API's server its own
// memo, after unixsock's ConnContext has attached the peer.
func withPolicyMemo(next func(context.Context, net.Conn) context.Context) func(context.Context, net.Conn) context.Context {
	return func(ctx context.Context, c net.Conn) context.Context {
		if next != nil {
			ctx = next(ctx, c)
		}
		return context.WithValue(ctx, policyMemoKey{}, &policyMemo{})
	}
}

// decide is the guard's policy decision for r's connection: through the
// connection's memo when it has one (requests that did not come through
// the server, as in tests, decide afresh).
func decide(ctx context.Context, pol *peer.Policy, p unixsock.Peer, method, path string) peer.Decision {
	if m, ok := ctx.Value(policyMemoKey{}).(*policyMemo); ok {
		return m.decide(pol, p, method, path)
	}
	return pol.Decide(p, method, path)
}
