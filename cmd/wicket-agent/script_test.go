package main

import (
	"os"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/wicket-sh/wicket/internal/cli"
)

// TestMain lets the scripts run `wicket-agent` as a command: testscript
// re-executes this test binary under that name.
func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"wicket-agent": func() { os.Exit(cli.Run(newRoot(), os.Args[1:])) },
	})
}

// TestScripts runs the CLI behaviour written as txtar scripts in
// testdata/script: what a user types and what they see, where that reads
// better than Go.
func TestScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{Dir: "testdata/script"})
}
