// Package configtest helps tests write config files.
package configtest

import (
	"fmt"
	"slices"
	"strings"
)

// MergeTOML returns base with extra's keys set in the tables they belong
// to, replacing a key base already has; TOML refuses a table defined twice,
// so a test cannot simply append "[oidc]\ngrace = …" to a base that has an
// [oidc] table. Arrays of tables ([[x]]) are appended, never merged. Only
// the subset of TOML that tests write is understood: one "key = value" per
// line, no inline tables spanning lines.
func MergeTOML(base, extra string) string {
	type table struct {
		header string // "" for the root, "[x]" or "[[x]]"
		lines  []string
	}
	var tables []*table
	find := func(header string) *table {
		if !strings.HasPrefix(header, "[[") {
			for _, t := range tables {
				if t.header == header {
					return t
				}
			}
		}
		t := &table{header: header}
		tables = append(tables, t)
		return t
	}
	for _, doc := range []string{base, extra} {
		cur := find("")
		for _, line := range strings.Split(doc, "\n") {
			line = strings.TrimSpace(line)
			switch {
			case line == "" || strings.HasPrefix(line, "#"):
			case strings.HasPrefix(line, "["):
				cur = find(line)
			default:
				key, _, _ := strings.Cut(line, "=")
				key = strings.TrimSpace(key)
				cur.lines = slices.DeleteFunc(cur.lines, func(l string) bool {
					k, _, _ := strings.Cut(l, "=")
					return strings.TrimSpace(k) == key
				})
				cur.lines = append(cur.lines, line)
			}
		}
	}
	var b strings.Builder
	for _, t := range tables {
		if t.header != "" {
			fmt.Fprintln(&b, t.header)
		}
		for _, l := range t.lines {
			fmt.Fprintln(&b, l)
		}
	}
	return b.String()
}
