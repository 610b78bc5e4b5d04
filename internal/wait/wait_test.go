package wait

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

func TestUntil_HoldsAtOnceWithoutSleeping(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		if !Until(time.Hour, func() bool { return true }) {
			t.Fatal("a condition that holds reported false")
		}
		if el := time.Since(start); el != 0 {
			t.Errorf("waited %v for a condition that already held", el)
		}
	})
}

func TestUntil_BoundedInTimeAndCount(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls atomic.Int64
		start := time.Now()
		if Until(time.Second, func() bool { calls.Add(1); return false }) {
			t.Fatal("a condition that never holds reported true")
		}
		if el := time.Since(start); el < time.Second || el > time.Second+Interval {
			t.Errorf("gave up after %v, want 1s", el)
		}
		if n, max := calls.Load(), int64(time.Second/Interval)+2; n > max {
			t.Errorf("%d checks, want at most %d", n, max)
		}
	})
}

// A condition slower than the bound is still checked only a bounded
// number of times.
func TestUntil_SlowConditionBoundedInCount(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls atomic.Int64
		Until(100*time.Millisecond, func() bool { calls.Add(1); time.Sleep(time.Second); return false })
		if n := calls.Load(); n > 2 {
			t.Errorf("%d checks of a condition slower than the bound", n)
		}
	})
}

func TestUntil_BecomesTrue(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		ok := Until(time.Minute, func() bool { return time.Since(start) >= 3*time.Second })
		if !ok {
			t.Fatal("condition that became true reported false")
		}
		if el := time.Since(start); el < 3*time.Second || el > 3*time.Second+Interval {
			t.Errorf("noticed after %v, want 3s", el)
		}
	})
}

// fakeT records a Fatalf instead of ending the goroutine's test.
type fakeT struct {
	testing.TB
	msg string
}

func (f *fakeT) Helper() {}
func (f *fakeT) Fatalf(format string, args ...any) {
	f.msg = strings.TrimSpace(fmt.Sprintf(format, args...))
}

func TestEventually_FailsWithMessage(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ft := &fakeT{TB: t}
		Eventually(ft, time.Second, func() bool { return false }, "token %s refreshed", "x")
		if ft.msg != "token x refreshed: not met within 1s" {
			t.Errorf("failure message %q", ft.msg)
		}
		ft.msg = ""
		Eventually(ft, time.Second, func() bool { return false })
		if ft.msg != "condition: not met within 1s" {
			t.Errorf("failure message %q", ft.msg)
		}
		ft.msg = ""
		start := time.Now()
		if d := Eventually(ft, time.Minute, func() bool { return time.Since(start) >= 2*time.Second }); ft.msg != "" || d < 2*time.Second {
			t.Errorf("Eventually: %v, message %q", d, ft.msg)
		}
	})
}
