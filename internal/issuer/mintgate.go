package issuer

import (
	"context"
	goruntime "runtime"
	"sync/atomic"
)

// mintGate admits the CPU-bound part of minting (the signature, entered
// once the request is authenticated and its signing key found) a few
// requests at a time, in arrival order. A request that is refused, or
// waits on the store (a machine read through to etcd, an org's first
// key), never holds a slot: unauthenticated callers cannot queue ahead of
// machines, and a slow store does not stall signing.
//
// A refresh storm (a fleet restarting: thousands of machines asking for
// a token within seconds) brings more requests than the cores can sign.
// Left to the scheduler, every accepted request is runnable at once, the
// newest first (a new goroutine runs next), each with its signing
// scratch memory live: the early ones wait behind the late ones and the
// accept loop waits in the same crowd. Through the gate a few requests
// work at a time and the rest wait parked, in order (a channel's blocked
// senders are woken first in, first out). Slots are 4 × GOMAXPROCS: few
// enough that the crowd waits parked, enough that a slot holder the
// operating system preempts (a shared machine) does not leave a core
// idle. The reply is buffered by net/http until the handler returns. docs/performance.md has the storms with and without.
type mintGate struct {
	slots   chan struct{}
	waiting atomic.Int64 // in enter, not yet admitted
}

func newMintGate() *mintGate {
	return &mintGate{slots: make(chan struct{}, 4*goruntime.GOMAXPROCS(0))}
}

// enter waits for a slot; false if ctx ended first (the caller went away).
func (g *mintGate) enter(ctx context.Context) bool {
	select {
	case g.slots <- struct{}{}:
		return true
	default:
	}
	g.waiting.Add(1)
	defer g.waiting.Add(-1)
	select {
	case g.slots <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

func (g *mintGate) leave() { <-g.slots }
