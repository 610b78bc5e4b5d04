package main

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// The profiler the bench harness uses exists only in a -tags wicketbench
// build: the binary built by default does not link net/http/pprof at all.
func TestDeps_PprofOnlyInBenchBuild(t *testing.T) {
	deps := func(tags ...string) []string {
		out, err := exec.Command("go", append(append([]string{"list", "-deps"}, tags...), ".")...).Output()
		if err != nil {
			t.Fatalf("go list -deps %v: %v", tags, err)
		}
		return strings.Fields(string(out))
	}
	if slices.Contains(deps(), "net/http/pprof") {
		t.Error("the default wicket build links net/http/pprof")
	}
	// Else the check above would pass for the wrong reason.
	if !slices.Contains(deps("-tags", "wicketbench"), "net/http/pprof") {
		t.Error("the wicketbench build does not link net/http/pprof")
	}
}
