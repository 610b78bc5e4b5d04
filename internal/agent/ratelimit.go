package agent

import (
	"time"

	"github.com/wicket-sh/wicket/internal/ratelimit"
)

// rateLimiter is a token bucket per uid (S-limits), the one every wicket
// rate limit uses.
type rateLimiter = ratelimit.Limiter[uint32]

func newRateLimiter() *rateLimiter { return ratelimit.New[uint32]() }

// retryAfterSeconds renders a wait as a Retry-After value.
func retryAfterSeconds(d time.Duration) int { return ratelimit.RetryAfterSeconds(d) }
