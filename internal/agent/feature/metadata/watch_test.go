package metadata

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/wicket-sh/wicket/internal/agent/feature"
	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/sockettest"
)

// The metadata watch's timing, driven directly under testing/synctest
// (moved with the watch from internal/agent/clock_test.go). The handlers
// are tested through the agent's guest API (internal/agent).

const testMetadata = `{"machine_id":"m-fuzz01","app":"fuzzapp","region":"ams","tags":{"role":"fz"}}` + "\n"

// testHost is the part of the agent's host the watch uses; any other
// method panics (the embedded interface is nil).
type testHost struct {
	feature.RunHost
	log    *slog.Logger
	ctx    context.Context
	errors atomic.Int64
}

func (h *testHost) Logger() *slog.Logger     { return h.log }
func (h *testHost) Now() time.Time           { return time.Now() }
func (h *testHost) Context() context.Context { return h.ctx }
func (h *testHost) Config() *config.Agent    { return config.DefaultAgent() }
func (h *testHost) Issuer() feature.Issuer   { return nil }
func (h *testHost) UpstreamError()           { h.errors.Add(1) }

func newTestFeature(t *testing.T) (*Feature, *sockettest.Buffer) {
	logs := &sockettest.Buffer{}
	h := &testHost{log: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})), ctx: t.Context()}
	inst, err := Module{}.Build(h)
	if err != nil {
		t.Fatal(err)
	}
	return inst.(*Feature), logs
}

// fakeMetaUpstream answers the metadata watch: each call fails while
// failing is above zero, otherwise returns the machine's metadata at once
// (as an issuer that never waits would).
type fakeMetaUpstream struct {
	mu      sync.Mutex
	failing int
	calls   []time.Time
}

func (f *fakeMetaUpstream) fetch(ctx context.Context, cur *metaSnapshot) (*metaSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, time.Now())
	if f.failing > 0 {
		f.failing--
		return nil, errors.New("issuer unreachable")
	}
	return parseMetadata([]byte(testMetadata), `"e1"`)
}

func (f *fakeMetaUpstream) set(failing int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failing = failing
}

func (f *fakeMetaUpstream) times() []time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]time.Time(nil), f.calls...)
}

// The metadata watch retries with jittered exponential backoff (each wait
// within [d/2, d], d doubling from backoffMin up to backoffMax), resets it
// on success, and spaces out upstream polls that return at once by
// minPollInterval, so an issuer that never waits cannot make it spin.
func TestWatchMetadata_BackoffGrowsAndCaps(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f, logs := newTestFeature(t)
		up := &fakeMetaUpstream{failing: 9}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			f.watchFrom(ctx, up.fetch)
		}()
		defer func() { cancel(); <-done }()

		// 200ms·2^k capped at 15s, then the tenth call succeeds.
		want := []time.Duration{200, 400, 800, 1600, 3200, 6400, 12800, 15000, 15000}
		time.Sleep(time.Minute)
		synctest.Wait()
		calls := up.times()
		if len(calls) < len(want)+1 {
			t.Fatalf("%d upstream calls, want at least %d", len(calls), len(want)+1)
		}
		for i, d := range want {
			d *= time.Millisecond
			if gap := calls[i+1].Sub(calls[i]); gap < d/2 || gap > d {
				t.Errorf("retry %d after %v, want within [%v, %v]", i+1, gap, d/2, d)
			}
		}
		if f.failing.Load() || f.meta.cur.Load() == nil {
			t.Errorf("after recovery: failing %v, snapshot %v", f.failing.Load(), f.meta.cur.Load() != nil)
		}
		if n := f.host.(*testHost).errors.Load(); n != 9 {
			t.Errorf("upstream_errors %d, want 9", n)
		}
		if l := logs.String(); strings.Count(l, "metadata watch failing") != 1 || !strings.Contains(l, "metadata watch recovered") {
			t.Errorf("log lines:\n%s", l)
		}
		// The first success changed the metadata: the long poll follows at
		// once. Unchanged replies coming back at once: one poll a second.
		if len(calls) < len(want)+5 {
			t.Fatalf("%d upstream calls in a minute", len(calls))
		}
		for i := len(want) + 2; i < len(calls); i++ {
			if gap := calls[i].Sub(calls[i-1]); gap != minPollInterval {
				t.Errorf("poll %d after %v, want %v", i, gap, minPollInterval)
			}
		}

		// After a success the backoff starts again from backoffMin.
		up.set(2)
		n := len(up.times())
		time.Sleep(10 * time.Second)
		synctest.Wait()
		calls = up.times()[n-1:]
		for i, d := range []time.Duration{minPollInterval, 200 * time.Millisecond, 400 * time.Millisecond} {
			lo := d / 2
			if i == 0 {
				lo = d
			}
			if gap := calls[i+1].Sub(calls[i]); gap < lo || gap > d {
				t.Errorf("after recovery, gap %d is %v, want within [%v, %v]", i, gap, lo, d)
			}
		}
	})
}
