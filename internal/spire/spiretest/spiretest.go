// Package spiretest runs a SPIRE deployment (internal/spire) for a test:
// in t.TempDir, stopped by t.Cleanup, skipped (failed when CI is set)
// when the SPIRE binaries are missing.
package spiretest

import (
	"context"
	"errors"
	"os"
	"testing"

	"github.com/wicket-sh/wicket/internal/sockettest"
	"github.com/wicket-sh/wicket/internal/spire"
)

// Binaries returns the SPIRE binaries from WICKET_SPIRE_BIN_DIR, or skips
// t (fails it when CI is set) when they are missing.
func Binaries(t testing.TB) spire.Bins {
	t.Helper()
	b, err := spire.Binaries("")
	if errors.Is(err, spire.ErrNoBinaries) {
		sockettest.Unavailable(t, "%v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Start runs spire.Start in a temporary directory and stops the
// deployment when the test ends; when the test failed, the end of both
// logs (join tokens redacted) is logged first.
func Start(t testing.TB, o spire.Options) *spire.Deployment {
	t.Helper()
	if o.Server.Bins == (spire.Bins{}) {
		o.Server.Bins = Binaries(t)
	}
	d, err := spire.Start(context.Background(), Dir(t), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("SPIRE logs:\n%s\n%s", d.Server.LogTail(), d.Agent.LogTail())
		}
		if err := d.Close(); err != nil {
			t.Errorf("stopping SPIRE: %v", err)
		}
	})
	return d
}

// Dir is a private temporary directory removed when the test ends, like
// t.TempDir but directly under the system's temporary directory: the
// sockets SPIRE makes in it must stay within the 107 bytes of a Unix
// socket path whatever the test's name.
func Dir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "spire")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}
