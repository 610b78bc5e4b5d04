package agent

import (
	"math"
	"sync"
	"time"
)

// maxBuckets bounds the limiter's memory; uids are few in practice.
const maxBuckets = 4096

// rateLimiter is a token bucket per uid (S-limits). Rate and burst are
// passed on every call so that a reload applies at once.
type rateLimiter struct {
	mu      sync.Mutex
	buckets map[uint32]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newRateLimiter() *rateLimiter { return &rateLimiter{buckets: map[uint32]*bucket{}} }

// allow takes one token from uid's bucket. When none is left it returns
// false and how long until one is: the Retry-After a caller gets.
func (l *rateLimiter) allow(uid uint32, rate float64, burst int, now time.Time) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[uid]
	if b == nil {
		if len(l.buckets) >= maxBuckets {
			l.pruneLocked(rate, burst, now)
		}
		b = &bucket{tokens: float64(burst), last: now}
		l.buckets[uid] = b
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

// pruneLocked forgets buckets that have refilled: forgetting them changes
// nothing. If every bucket is in use, the whole map is reset rather than
// grow without bound.
func (l *rateLimiter) pruneLocked(rate float64, burst int, now time.Time) {
	for uid, b := range l.buckets {
		if b.tokens+now.Sub(b.last).Seconds()*rate >= float64(burst) {
			delete(l.buckets, uid)
		}
	}
	if len(l.buckets) >= maxBuckets {
		clear(l.buckets)
	}
}

// retryAfterSeconds renders a wait as a Retry-After value: whole seconds,
// rounded up, at least 1.
func retryAfterSeconds(d time.Duration) int {
	return max(1, int(math.Ceil(d.Seconds())))
}
