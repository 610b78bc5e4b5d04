package workloadapi

import (
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// The set of first hand-outs is bounded: a workload that starts process
// after process cannot grow it without end, and a hand-out is reported
// first exactly once while the set has room.
func TestFirstHandOut_BoundedAndOncePerKey(t *testing.T) {
	s := New(Options{})
	id := spiffeid.RequireFromString("spiffe://acme.wicket.internal/app/web/machine/m1")
	k := auditKey{pid: 7, kind: "x509", id: id}
	if !s.firstHandOut(k) || s.firstHandOut(k) {
		t.Fatal("a key must be first once, then seen")
	}
	if !s.firstHandOut(auditKey{pid: 7, via: "http", kind: "x509", id: id}) {
		t.Fatal("another surface's first hand-out is its own")
	}
	for pid := range int32(2 * maxServed) {
		s.firstHandOut(auditKey{pid: 1000 + pid, kind: "jwt", id: id})
		if n := len(s.served); n > maxServed {
			t.Fatalf("after %d processes the set holds %d entries, over %d", pid+1, n, maxServed)
		}
	}
}
