package issuer

import (
	"context"
	"strings"
	"testing"
	"testing/synctest"

	"github.com/wicket-sh/wicket/internal/wait"
)

// TestMintGate_FirstInFirstOut: with every slot taken, waiting requests
// are admitted in the order they arrived, one per slot freed; one whose
// caller goes away leaves the queue without taking a slot.
func TestMintGate_FirstInFirstOut(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newMintGate()
		for range cap(g.slots) {
			if !g.enter(t.Context()) {
				t.Fatal("enter with free slots failed")
			}
		}
		const n = 5
		admitted := make(chan int, n)
		gone, leave := context.WithCancel(t.Context())
		for i := range n {
			ctx := t.Context()
			if i == 2 {
				ctx = gone
			}
			go func() {
				if g.enter(ctx) {
					admitted <- i
				}
			}()
			synctest.Wait() // i is queued before i+1 arrives
		}
		if w := g.waiting.Load(); w != n {
			t.Fatalf("%d waiting, want %d", w, n)
		}
		leave()
		synctest.Wait()
		for _, want := range []int{0, 1, 3, 4} {
			g.leave()
			synctest.Wait()
			if got := <-admitted; got != want {
				t.Fatalf("admitted %d, want %d (arrival order)", got, want)
			}
		}
		if w := g.waiting.Load(); w != 0 {
			t.Errorf("%d still waiting", w)
		}
	})
}

// TestOIDCToken_ThroughTheMintGate: a token request waits while every
// slot is taken and is answered once one frees.
func TestOIDCToken_ThroughTheMintGate(t *testing.T) {
	ti := startIssuer(t, shortDir(t), nil)
	_, tok := ti.addMachine(t, devSpec)
	for range cap(ti.signing.slots) {
		ti.signing.enter(t.Context())
	}
	done := make(chan resp, 1)
	go func() { done <- ti.call(t, "POST", "/v1/tokens/oidc", tok, `{"aud":"x"}`) }()
	wait.Eventually(t, propagation, func() bool { return ti.signing.waiting.Load() == 1 }, "token request queued at the gate")
	select {
	case r := <-done:
		t.Fatalf("answered with every slot taken: %d", r.status)
	default:
	}
	ti.signing.leave()
	r := <-done
	if r.status != 200 || !strings.Contains(r.body, `"token"`) {
		t.Fatalf("after a slot freed: %d %s", r.status, r.body)
	}
}
