package tokenfile

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/wicket-sh/wicket/internal/metrics"
)

// fakeSource hands out numbered tokens with a fixed lifetime and fails
// the calls listed in failOn; it records when it was called.
type fakeSource struct {
	life   time.Duration
	failOn map[int]bool

	mu    sync.Mutex
	calls []time.Time
}

func (f *fakeSource) fetch(ctx context.Context) (string, time.Time, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := len(f.calls)
	f.calls = append(f.calls, time.Now())
	if f.failOn[n] {
		return "", time.Time{}, fmt.Errorf("issuer unreachable (call %d)", n)
	}
	return fmt.Sprintf("jwt-%d", n), time.Now().Add(f.life), nil
}

func (f *fakeSource) times() []time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]time.Time(nil), f.calls...)
}

// runRefresher starts r and stops it when the test ends. In a synctest
// bubble, the cleanup runs in the bubble too.
func runRefresher(t *testing.T, r *Refresher) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Run did not stop with its context")
		}
	})
}

// The refresher's timing runs in synctest bubbles: the clock is fake and
// jumps when every goroutine is blocked, so the gaps below are exact and
// cost no real time. The files are real.

func TestRefresher_RefreshesAtFraction(t *testing.T) {
	for _, tc := range []struct {
		name     string
		fraction float64
		life     time.Duration
		want     time.Duration // gap between fetches
	}{
		{"default 0.8", 0, time.Minute, 48 * time.Second},
		{"0.5", 0.5, time.Minute, 30 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				path := filepath.Join(t.TempDir(), "token")
				src := &fakeSource{life: tc.life}
				r, err := NewRefresher(Config{Path: path, Source: src.fetch, Mode: 0o440, GID: -1, Audience: "sts.amazonaws.com", RefreshFraction: tc.fraction})
				if err != nil {
					t.Fatal(err)
				}
				start := time.Now()
				runRefresher(t, r)
				<-r.Written()
				if b, _ := os.ReadFile(path); string(b) != "jwt-0" || time.Since(start) != 0 {
					t.Errorf("file holds %q after the first write, %v in", b, time.Since(start))
				}
				time.Sleep(2*tc.want + time.Millisecond)
				synctest.Wait()
				calls := src.times()
				if len(calls) != 3 {
					t.Fatalf("%d source calls after two refresh periods, want 3", len(calls))
				}
				for i := 1; i < 3; i++ {
					if gap := calls[i].Sub(calls[i-1]); gap != tc.want {
						t.Errorf("refresh %d after %s, want %s", i, gap, tc.want)
					}
				}
				b, _ := os.ReadFile(path)
				st := r.Status()
				if string(b) != "jwt-2" || st.Refreshes != 3 || st.Path != path || st.Audience != "sts.amazonaws.com" || st.LastError != "" || st.Failures != 0 ||
					!st.LastRefresh.Equal(calls[2]) || !st.ExpiresAt.Equal(calls[2].Add(tc.life)) || !st.NextRefresh.Equal(calls[2].Add(tc.want)) {
					t.Errorf("file holds %q, status %+v", b, st)
				}
			})
		})
	}
}

func TestRefresher_BacksOffOnErrors(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "token")
		// Calls 1..6 fail; 0 and 7 succeed.
		src := &fakeSource{life: 1000 * time.Second, failOn: map[int]bool{1: true, 2: true, 3: true, 4: true, 5: true, 6: true}}
		var logs bytes.Buffer
		var logMu sync.Mutex
		r, err := NewRefresher(Config{
			Path: path, Source: src.fetch, GID: -1, RefreshFraction: 0.1, // first refresh after 100s
			MinBackoff: time.Second, MaxBackoff: 5 * time.Second,
			Logger: slog.New(slog.NewTextHandler(lockedWriter{&logMu, &logs}, nil)),
		})
		if err != nil {
			t.Fatal(err)
		}
		runRefresher(t, r)
		<-r.Written()
		time.Sleep(102 * time.Second)
		synctest.Wait()

		st := r.Status()
		if st.Failures == 0 || st.ConsecutiveFailures == 0 || !strings.Contains(st.LastError, "fetch token failed") {
			t.Errorf("status during failures: %+v", st)
		}
		if strings.Contains(st.LastError, "unreachable") {
			t.Errorf("status error is not generic: %q", st.LastError)
		}
		if b, _ := os.ReadFile(path); string(b) != "jwt-0" {
			t.Errorf("failed refreshes changed the file: %q", b)
		}

		time.Sleep(time.Minute)
		synctest.Wait()
		calls := src.times()
		if len(calls) != 8 {
			t.Fatalf("%d source calls, want 8", len(calls))
		}
		if gap := calls[1].Sub(calls[0]); gap != 100*time.Second {
			t.Errorf("first refresh after %v, want 100s", gap)
		}
		// Retry gaps after failures 1..6: jittered within [d/2, d] for
		// d = 1, 2, 4, 5 (cap), 5, 5 s.
		for i, want := range []time.Duration{1, 2, 4, 5, 5, 5} {
			want *= time.Second
			if gap := calls[i+2].Sub(calls[i+1]); gap < want/2 || gap > want {
				t.Errorf("retry %d after %s, want within [%s, %s]", i+1, gap, want/2, want)
			}
		}
		st = r.Status()
		if b, _ := os.ReadFile(path); string(b) != "jwt-7" || st.ConsecutiveFailures != 0 || st.Failures != 6 || st.LastError != "" || st.Refreshes != 2 {
			t.Errorf("after recovery the file holds %q, status %+v", b, st)
		}
		logMu.Lock()
		if n := strings.Count(logs.String(), "token file refresh failed"); n != 6 {
			t.Errorf("%d failure log lines, want 6:\n%s", n, logs.String())
		}
		logMu.Unlock()

		var b bytes.Buffer
		metrics.Write(&b, r.Metrics())
		for _, want := range []string{`wicket_token_file_failures_total{path="` + path + `"} 6`, `wicket_token_file_refreshes_total{path="` + path + `"} 2`} {
			if !strings.Contains(b.String(), want) {
				t.Errorf("metrics lack %s:\n%s", want, b.String())
			}
		}
	})
}

// TestRefresher_RejectsUselessTokens: an empty or already expired token is
// a failure, not something to write.
func TestRefresher_RejectsUselessTokens(t *testing.T) {
	for _, tc := range []struct {
		name string
		src  Source
		want string
	}{
		{"empty", func(context.Context) (string, time.Time, error) { return "", time.Now().Add(time.Hour), nil }, "empty token"},
		{"expired", func(context.Context) (string, time.Time, error) { return "x", time.Now().Add(-time.Second), nil }, "already expired"},
		{"write fails", func(context.Context) (string, time.Time, error) { return "SECRET", time.Now().Add(time.Hour), nil }, "write failed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				dir := t.TempDir()
				path := filepath.Join(dir, "token")
				if tc.name == "write fails" {
					os.Mkdir(path, 0o700) // a directory is refused
				}
				r, err := NewRefresher(Config{Path: path, Source: tc.src, GID: -1, MinBackoff: time.Hour})
				if err != nil {
					t.Fatal(err)
				}
				runRefresher(t, r)
				synctest.Wait()
				st := r.Status()
				if st.Failures != 1 || !strings.Contains(st.LastError, tc.want) || strings.Contains(st.LastError, "SECRET") {
					t.Errorf("%d failures, last error %q, want %q", st.Failures, st.LastError, tc.want)
				}
				if fi, err := os.Lstat(path); tc.name != "write fails" && !errors.Is(err, os.ErrNotExist) {
					t.Errorf("file written: %v", fi)
				}
			})
		})
	}
}

// Config.Now is the refresher's clock: the status and the expiry check use
// it, not the wall clock.
func TestRefresher_UsesConfiguredClock(t *testing.T) {
	at := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	exp := at.Add(time.Hour)
	path := filepath.Join(t.TempDir(), "token")
	// Already expired by the wall clock, valid by the configured one.
	src := func(context.Context) (string, time.Time, error) { return "tok", exp, nil }
	r, err := NewRefresher(Config{Path: path, Source: src, GID: -1, Now: func() time.Time { return at }})
	if err != nil {
		t.Fatal(err)
	}
	if d := r.refresh(context.Background()); d != 48*time.Minute {
		t.Errorf("next refresh in %v, want 48m", d)
	}
	if st := r.Status(); !st.LastRefresh.Equal(at) || !st.NextRefresh.Equal(at.Add(48*time.Minute)) || st.Failures != 0 {
		t.Errorf("status %+v", st)
	}
}

func TestNewRefresher_Validates(t *testing.T) {
	src := func(context.Context) (string, time.Time, error) { return "", time.Time{}, nil }
	for _, c := range []Config{
		{Source: src},
		{Path: "/x"},
		{Path: "/x", Source: src, Mode: 0o2440},
		{Path: "/x", Source: src, GID: -2},
		{Path: "/x", Source: src, RefreshFraction: 1},
		{Path: "/x", Source: src, RefreshFraction: 0.01},
	} {
		if _, err := NewRefresher(c); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
	r, err := NewRefresher(Config{Path: "/x", Source: src})
	if err != nil {
		t.Fatal(err)
	}
	if r.cfg.Mode != 0o440 || r.cfg.RefreshFraction != 0.8 || r.cfg.MinBackoff != time.Second || r.cfg.MaxBackoff != time.Minute {
		t.Errorf("defaults: %+v", r.cfg)
	}
}

func TestBackoff(t *testing.T) {
	for _, tc := range []struct {
		n    int
		want time.Duration // upper bound; lower bound is half
	}{
		{1, time.Second}, {2, 2 * time.Second}, {3, 4 * time.Second}, {6, 32 * time.Second}, {7, time.Minute}, {50, time.Minute},
	} {
		for range 200 {
			if d := backoff(tc.n, time.Second, time.Minute); d < tc.want/2 || d > tc.want {
				t.Fatalf("backoff(%d) = %s, want within [%s, %s]", tc.n, d, tc.want/2, tc.want)
			}
		}
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
