// Package ratelimit is the token bucket every wicket rate limit uses: one
// bucket per caller (a uid on the agent's socket, an admin token on the
// issuer's remote admin API), bounded in memory, with the rate and burst
// passed on every call so that a reload applies at once.
package ratelimit

import (
	"math"
	"sync"
	"time"
)

// maxBuckets bounds a limiter's memory; callers are few in practice.
const maxBuckets = 4096

// Limiter is a token bucket per key. The zero value is not usable: New.
type Limiter[K comparable] struct {
	mu      sync.Mutex
	buckets map[K]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

// New returns an empty limiter.
func New[K comparable]() *Limiter[K] { return &Limiter[K]{buckets: map[K]*bucket{}} }

// Allow takes one token from key's bucket. When none is left it returns
// false and how long until one is: the Retry-After a caller gets.
func (l *Limiter[K]) Allow(key K, rate float64, burst int, now time.Time) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[key]
	if b == nil {
		if len(l.buckets) >= maxBuckets {
			l.pruneLocked(rate, burst, now)
		}
		b = &bucket{tokens: float64(burst), last: now}
		l.buckets[key] = b
	}
	if el := now.Sub(b.last).Seconds(); el > 0 {
		b.tokens = math.Min(float64(burst), b.tokens+el*rate)
		b.last = now
	}
	// A lowered burst applies at once.
	b.tokens = math.Min(b.tokens, float64(burst))
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	wait := time.Duration((1 - b.tokens) / rate * float64(time.Second))
	return false, wait
}

// Return gives back one token Allow took from key's bucket (no more than
// burst), for a request that was not served after all.
func (l *Limiter[K]) Return(key K, burst int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if b := l.buckets[key]; b != nil {
		b.tokens = math.Min(float64(burst), b.tokens+1)
	}
}

// pruneLocked forgets buckets that have refilled: forgetting them changes
// nothing. If every bucket is in use, the whole map is reset rather than
// grow without bound.
func (l *Limiter[K]) pruneLocked(rate float64, burst int, now time.Time) {
	for k, b := range l.buckets {
		if b.tokens+now.Sub(b.last).Seconds()*rate >= float64(burst) {
			delete(l.buckets, k)
		}
	}
	if len(l.buckets) >= maxBuckets {
		clear(l.buckets)
	}
}

// RetryAfterSeconds renders a wait as a Retry-After value: whole seconds,
// rounded up, at least 1.
func RetryAfterSeconds(d time.Duration) int {
	return max(1, int(math.Ceil(d.Seconds())))
}
