package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// docBlock is one fenced block of a Markdown page.
type docBlock struct {
	lang, body string
}

func fencedBlocks(t *testing.T, path string) []docBlock {
	t.Helper()
	doc, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var blocks []docBlock
	var cur *docBlock
	var indent string
	for _, l := range strings.SplitAfter(string(doc), "\n") {
		trimmed := strings.TrimSpace(l)
		switch {
		case cur == nil && strings.HasPrefix(trimmed, "```"):
			indent = l[:strings.Index(l, "```")]
			cur = &docBlock{lang: strings.TrimPrefix(trimmed, "```")}
		case cur != nil && trimmed == "```":
			blocks = append(blocks, *cur)
			cur = nil
		case cur != nil:
			cur.body += strings.TrimPrefix(l, indent)
		}
	}
	return blocks
}

// TestFederationDoc_TrustOutput runs every `wicket trust` command of
// docs/federation.md, alone in its block, and compares its output with the
// block right after it, so the printed configuration in the guide is the
// program's. A `trust check` file argument gets the JSON block before the
// command.
func TestFederationDoc_TrustOutput(t *testing.T) {
	blocks := fencedBlocks(t, "../../docs/federation.md")
	ran := 0
	for i, b := range blocks {
		line := strings.TrimSpace(b.body)
		if b.lang != "sh" || !strings.HasPrefix(line, "wicket trust ") || strings.Contains(line, "\n") || i+1 == len(blocks) {
			continue
		}
		ran++
		t.Run(line, func(t *testing.T) {
			args, err := shellWords(line)
			if err != nil {
				t.Fatal(err)
			}
			wantCode := 0
			if args[2] == "check" {
				if i == 0 || blocks[i-1].lang != "json" {
					t.Fatal("a trust check command needs the policy in a json block before it")
				}
				file := filepath.Join(t.TempDir(), args[4])
				if err := os.WriteFile(file, []byte(blocks[i-1].body), 0o600); err != nil {
					t.Fatal(err)
				}
				args[4] = file
				if strings.HasPrefix(blocks[i+1].body, "FINDING") {
					wantCode = 1
				}
			}
			out, stderr, code := run(t, args[1:]...)
			if code != wantCode || stderr != "" {
				t.Fatalf("exit %d (want %d), stderr %q", code, wantCode, stderr)
			}
			if out != blocks[i+1].body {
				t.Errorf("the guide shows:\n%s\nthe command prints:\n%s", blocks[i+1].body, out)
			}
		})
	}
	if ran < 7 {
		t.Fatalf("ran only %d wicket trust commands from the guide", ran)
	}
}
