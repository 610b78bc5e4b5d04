package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/wicket-sh/wicket/internal/sockettest"
)

// readmeCommands returns the shell commands in the README's "Try it"
// section, in order.
func readmeCommands(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	start := strings.Index(s, "## Try it")
	end := strings.Index(s[start+1:], "\n## ")
	if start < 0 || end < 0 {
		t.Fatal("README has no \"## Try it\" section")
	}
	var cmds []string
	inShell := false
	for _, line := range strings.Split(s[start:start+1+end], "\n") {
		switch {
		case strings.HasPrefix(line, "```sh"):
			inShell = true
		case strings.HasPrefix(line, "```"):
			inShell = false
		case inShell && line != "" && !strings.HasPrefix(line, "#"):
			cmds = append(cmds, line)
		}
	}
	return cmds
}

// TestREADME_TryIt runs every command of the README walkthrough against a
// real `wicket dev`, as a new user would paste them, so the README cannot
// drift from what the program does.
func TestREADME_TryIt(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("curl is needed to run the README examples (.ci/run installs it)")
		}
		sockettest.Unavailable(t, "curl not installed; the README examples use it")
	}
	dir := shortDir(t)
	d := startDev(t, dir)
	cmds := readmeCommands(t)
	if len(cmds) < 6 {
		t.Fatalf("found only %d commands in the README walkthrough", len(cmds))
	}
	etag := strings.Trim(sockettest.Do(d.api, "GET", "/v1/metadata", "", nil).Header["Etag"], `"`)
	exampleETag := regexp.MustCompile(`etag=[0-9a-f]{24}`)
	var poll *exec.Cmd
	var pollOut strings.Builder
	for _, c := range cmds {
		c = strings.ReplaceAll(c, "127.0.0.1:8650", d.addr)
		c = strings.ReplaceAll(c, "go run ./cmd/wicket", wicketBin)
		c = exampleETag.ReplaceAllString(c, "etag="+etag)
		cmd := exec.Command("sh", "-c", c)
		cmd.Dir = dir
		if strings.Contains(c, "wait=true") {
			// The long poll: runs until the machine update below wakes it.
			cmd.Stdout = &pollOut
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			poll = cmd
			time.Sleep(300 * time.Millisecond)
			continue
		}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("README command failed: %s\n%s", c, out)
			continue
		}
		if strings.Contains(string(out), `"error"`) {
			t.Errorf("README command got an error reply: %s\n%s", c, out)
		}
	}
	if poll == nil {
		t.Fatal("no long-poll example in the README")
	}
	done := make(chan error, 1)
	go func() { done <- poll.Wait() }()
	select {
	case err := <-done:
		if err != nil || !strings.Contains(pollOut.String(), `"color":"blue"`) {
			t.Errorf("README long poll: %v %q", err, pollOut.String())
		}
	case <-time.After(20 * time.Second):
		poll.Process.Kill()
		t.Error("README long poll did not return after the machine update")
	}
	_ = filepath.Join
}
