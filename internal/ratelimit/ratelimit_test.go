package ratelimit

import (
	"testing"
	"time"
)

func TestLimiter_BurstThenRefill(t *testing.T) {
	l := New[string]()
	t0 := time.Unix(1000, 0)
	for i := range 3 {
		if ok, _ := l.Allow("a", 1, 3, t0); !ok {
			t.Fatalf("request %d within the burst refused", i)
		}
	}
	ok, wait := l.Allow("a", 1, 3, t0)
	if ok || wait <= 0 || wait > time.Second {
		t.Fatalf("over the burst: ok=%v wait=%v, want refused with a wait of at most 1s", ok, wait)
	}
	if ok, _ := l.Allow("b", 1, 3, t0); !ok {
		t.Fatal("another key shares the bucket")
	}
	if ok, _ := l.Allow("a", 1, 3, t0.Add(time.Second)); !ok {
		t.Fatal("no refill after a second at rate 1")
	}
	if got := RetryAfterSeconds(10 * time.Millisecond); got != 1 {
		t.Errorf("RetryAfterSeconds(10ms) = %d, want 1", got)
	}
}

func TestLimiter_MemoryBounded(t *testing.T) {
	l := New[int]()
	now := time.Unix(1000, 0)
	for i := range 3 * maxBuckets {
		l.Allow(i, 1, 1, now)
	}
	if n := len(l.buckets); n > maxBuckets {
		t.Fatalf("%d buckets, want at most %d", n, maxBuckets)
	}
}

// Return gives back the token Allow took, and never fills a bucket past
// its burst.
func TestLimiter_ReturnGivesBackOneToken(t *testing.T) {
	l := New[string]()
	t0 := time.Unix(1000, 0)
	for range 2 {
		l.Allow("a", 0.001, 2, t0)
	}
	if ok, _ := l.Allow("a", 0.001, 2, t0); ok {
		t.Fatal("a burst of 2 allowed a third")
	}
	l.Return("a", 2)
	if ok, _ := l.Allow("a", 0.001, 2, t0); !ok {
		t.Fatal("the token given back was not there")
	}
	// A full bucket stays at its burst.
	l.Return("b", 2) // no bucket yet: nothing to give back to
	l.Allow("c", 0.001, 1, t0)
	l.Return("c", 1)
	l.Return("c", 1)
	if ok, _ := l.Allow("c", 0.001, 1, t0); !ok {
		t.Fatal("the returned token is missing")
	}
	if ok, _ := l.Allow("c", 0.001, 1, t0); ok {
		t.Fatal("Return filled the bucket past its burst of 1")
	}
}
