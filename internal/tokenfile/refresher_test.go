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

// runRefresher starts r and stops it when the test ends.
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

func waitCalls(t *testing.T, src *fakeSource, n int, within time.Duration) []time.Time {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		if c := src.times(); len(c) >= n {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d source calls after %s, want %d", len(src.times()), within, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestRefresher_RefreshesAtFraction(t *testing.T) {
	for _, tc := range []struct {
		name     string
		fraction float64
		life     time.Duration
		want     time.Duration // gap between fetches
	}{
		{"default 0.8", 0, time.Second, 800 * time.Millisecond},
		{"0.5", 0.5, time.Second, 500 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "token")
			src := &fakeSource{life: tc.life}
			r, err := NewRefresher(Config{Path: path, Source: src.fetch, Mode: 0o440, GID: -1, Audience: "sts.amazonaws.com", RefreshFraction: tc.fraction})
			if err != nil {
				t.Fatal(err)
			}
			runRefresher(t, r)
			select {
			case <-r.Written():
			case <-time.After(2 * time.Second):
				t.Fatal("first write did not happen")
			}
			if b, _ := os.ReadFile(path); string(b) != "jwt-0" {
				t.Errorf("file holds %q after the first write", b)
			}
			calls := waitCalls(t, src, 3, 3*tc.want+time.Second)
			for i := 1; i < 3; i++ {
				gap := calls[i].Sub(calls[i-1])
				if gap < tc.want-20*time.Millisecond || gap > tc.want+150*time.Millisecond {
					t.Errorf("refresh %d after %s, want ≈%s", i, gap.Round(time.Millisecond), tc.want)
				}
			}
			deadline := time.Now().Add(time.Second)
			for {
				b, _ := os.ReadFile(path)
				if st := r.Status(); string(b) == "jwt-2" && st.Refreshes >= 3 {
					if st.Path != path || st.Audience != "sts.amazonaws.com" || st.LastError != "" || st.Failures != 0 ||
						st.ExpiresAt.Before(st.LastRefresh) || st.NextRefresh.Before(st.LastRefresh) {
						t.Errorf("status %+v", st)
					}
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("file holds %q, status %+v", b, r.Status())
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
}

func TestRefresher_BacksOffOnErrors(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token")
	// Calls 1..4 fail; 0 and 5 succeed.
	src := &fakeSource{life: 2 * time.Second, failOn: map[int]bool{1: true, 2: true, 3: true, 4: true}}
	var logs bytes.Buffer
	var logMu sync.Mutex
	r, err := NewRefresher(Config{
		Path: path, Source: src.fetch, GID: -1, RefreshFraction: 0.1, // first refresh after 200ms
		MinBackoff: 80 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(lockedWriter{&logMu, &logs}, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	runRefresher(t, r)
	<-r.Written()
	calls := waitCalls(t, src, 4, 3*time.Second)

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

	calls = waitCalls(t, src, 6, 3*time.Second)
	// Retry gaps after failures 1,2,3,4: jittered within [d/2, d] for
	// d = 80, 160, 200 (cap), 200 ms.
	for i, want := range []time.Duration{80, 160, 200, 200} {
		want *= time.Millisecond
		gap := calls[i+2].Sub(calls[i+1])
		if gap < want/2-10*time.Millisecond || gap > want+100*time.Millisecond {
			t.Errorf("retry %d after %s, want within [%s, %s]", i+1, gap.Round(time.Millisecond), want/2, want)
		}
	}
	deadline := time.Now().Add(time.Second)
	for {
		st := r.Status()
		if b, _ := os.ReadFile(path); string(b) == "jwt-5" && st.ConsecutiveFailures == 0 {
			if st.Failures != 4 || st.LastError != "" || st.Refreshes != 2 {
				t.Errorf("status after recovery: %+v", st)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("did not recover: %+v", st)
		}
		time.Sleep(5 * time.Millisecond)
	}
	logMu.Lock()
	if n := strings.Count(logs.String(), "token file refresh failed"); n != 4 {
		t.Errorf("%d failure log lines, want 4:\n%s", n, logs.String())
	}
	logMu.Unlock()

	var b bytes.Buffer
	metrics.Write(&b, r.Metrics())
	for _, want := range []string{`wicket_token_file_failures_total{path="` + path + `"} 4`, `wicket_token_file_refreshes_total{path="` + path + `"} 2`} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("metrics lack %s:\n%s", want, b.String())
		}
	}
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
			deadline := time.Now().Add(2 * time.Second)
			for r.Status().Failures == 0 {
				if time.Now().After(deadline) {
					t.Fatal("no failure recorded")
				}
				time.Sleep(5 * time.Millisecond)
			}
			if st := r.Status(); !strings.Contains(st.LastError, tc.want) || strings.Contains(st.LastError, "SECRET") {
				t.Errorf("last error %q, want %q", st.LastError, tc.want)
			}
			if fi, err := os.Lstat(path); tc.name != "write fails" && !errors.Is(err, os.ErrNotExist) {
				t.Errorf("file written: %v", fi)
			}
		})
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
