// Package spiretest runs a SPIRE deployment (internal/spire) for a test:
// in t.TempDir, stopped by t.Cleanup, skipped (failed when CI is set)
// when the SPIRE binaries are missing.
package spiretest

import (
	"context"
	"errors"
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
// deployment when the test ends.
func Start(t testing.TB, o spire.Options) *spire.Deployment {
	t.Helper()
	if o.Server.Bins == (spire.Bins{}) {
		o.Server.Bins = Binaries(t)
	}
	d, err := spire.Start(context.Background(), t.TempDir(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Errorf("stopping SPIRE: %v", err)
		}
	})
	return d
}
