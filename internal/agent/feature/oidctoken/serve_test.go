package oidctoken

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// The audit dedup lives in the cache entry: one first serve per process
// and token, again for each new token, the reply bytes built once per token,
// and a bound over the whole cache past which every entry forgets (more
// audit lines, never fewer).
func TestTokenCache_ServeDedupPerProcessAndToken(t *testing.T) {
	var mu sync.Mutex
	n := 0
	now := time.Now()
	fetch := func(ctx context.Context, aud string) (issued, error) {
		mu.Lock()
		defer mu.Unlock()
		n++
		return issued{JWT: fmt.Sprintf("h.p%d.s", n), ID: fmt.Sprintf("j%d", n), Expires: now.Add(time.Hour)}, nil
	}
	c := newTokenCache(context.Background(), time.Now, fetch, func() tokenCacheConfig {
		return tokenCacheConfig{refreshAt: 0.8, maxAudiences: 100000, timeout: time.Second}
	})
	t.Cleanup(c.close)
	ctx := context.Background()
	a, b := servedProc{1000, 10}, servedProc{1000, 11}

	if h, err := c.serve(ctx, "x", a); err != nil || h.src != SourceIssuer || h.first {
		t.Fatalf("fetch: %+v %v", h, err)
	}
	h, _ := c.serve(ctx, "x", a)
	if h.src != SourceCache || !h.first || string(h.body) != h.tok.JWT {
		t.Errorf("first cache hit of a: %+v", h)
	}
	body := h.body
	if h, _ := c.serve(ctx, "x", a); h.first || &h.body[0] != &body[0] {
		t.Errorf("second hit of a: first %v, body rebuilt %v", h.first, &h.body[0] != &body[0])
	}
	if h, _ := c.serve(ctx, "x", b); !h.first {
		t.Errorf("another process's first hit not first")
	}

	// A new token for the entry: both processes are new to it.
	c.mu.Lock()
	c.storeLocked("x", issued{JWT: "h.new.s", ID: "jn", Expires: now.Add(time.Hour)}, true, c.cfg())
	c.mu.Unlock()
	for _, p := range []servedProc{a, b} {
		if h, _ := c.serve(ctx, "x", p); !h.first || string(h.body) != "h.new.s" {
			t.Errorf("new token to %v: %+v", p, h)
		}
	}
	if h, _ := c.serve(ctx, "x", a); h.first {
		t.Errorf("new token served twice as first")
	}

	// The bound: maxServed processes, then every entry forgets.
	for i := range maxServed {
		c.serve(ctx, "x", servedProc{2000, int32(i)})
	}
	c.mu.Lock()
	served := c.served
	c.mu.Unlock()
	if served > maxServed {
		t.Errorf("%d remembered serves, bound %d", served, maxServed)
	}
	if h, _ := c.serve(ctx, "x", a); !h.first {
		t.Errorf("after the bound, a's serve not logged again")
	}
}
