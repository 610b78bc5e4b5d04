package soak

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// soakFor stretches the sustained-load tests; 0 is the default duration every
// `go test ./...` runs.
var soakFor = flag.Duration("soak", 0, "run the sustained-load tests for this long (0: the default duration)")

// wicketBin is the real binary under test, built once in TestMain.
var wicketBin string

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		// Every test skips (skipShort): no binary to build.
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "wicket-soak-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	wicketBin = filepath.Join(dir, "wicket")
	out, err := exec.Command("go", "build", "-o", wicketBin, "github.com/wicket-sh/wicket/cmd/wicket").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build wicket: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// skipShort skips a soak test under go test -short: the suite runs real
// processes under load for tens of seconds, which the quick loop of
// `go test -short ./...` leaves to the full run (and CI).
func skipShort(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("soak suite: skipped in -short mode")
	}
}

// sustained returns how long a sustained-load test runs: short by default,
// the -soak duration when given, and never past the test's own deadline
// (go test -timeout) minus a margin for setup and checks.
func sustained(t *testing.T, short time.Duration) time.Duration {
	t.Helper()
	d := short
	if *soakFor > 0 {
		d = *soakFor
	}
	if dl, ok := t.Deadline(); ok {
		if left := time.Until(dl) - 90*time.Second; d > left {
			d = max(left, short)
			t.Logf("soak duration cut to %s by the test deadline; pass -timeout to go test for longer", d)
		}
	}
	return d
}
