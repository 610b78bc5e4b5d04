// Package wait is the one polling helper the tests share: a condition is
// checked until it holds or a bound passes, never longer, so a test that
// waits for something that never happens fails instead of hanging.
//
// Inside a testing/synctest bubble the sleeps between checks are on the
// bubble's fake clock, so a wait there costs no real time.
package wait

import (
	"fmt"
	"testing"
	"time"
)

// Interval is the pause between two checks of a condition.
const Interval = 10 * time.Millisecond

// Until checks cond every Interval until it returns true or within has
// passed, and reports whether it held. It checks at most within/Interval+2
// times, however slow cond is, so the bound holds in count as well as in
// time.
func Until(within time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(within)
	for range int(within/Interval) + 1 {
		if cond() {
			return true
		}
		if !time.Now().Before(deadline) {
			return false
		}
		time.Sleep(Interval)
	}
	return cond()
}

// Eventually is Until that fails t (t.Fatal, so call it from the test's
// own goroutine) when cond has not held within the bound. msgAndArgs, when
// given, is a format string and its arguments describing what was awaited. It
// returns how long the wait took.
func Eventually(t testing.TB, within time.Duration, cond func() bool, msgAndArgs ...any) time.Duration {
	t.Helper()
	start := time.Now()
	if !Until(within, cond) {
		what := "condition"
		if len(msgAndArgs) > 0 {
			if f, ok := msgAndArgs[0].(string); ok {
				what = fmt.Sprintf(f, msgAndArgs[1:]...)
			}
		}
		t.Fatalf("%s: not met within %v", what, within)
	}
	return time.Since(start)
}
