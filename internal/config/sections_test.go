package config

import (
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"testing"
)

func TestPercent(t *testing.T) {
	for in, want := range map[string]Percent{"80%": 0.8, "12.5%": 0.125, "0%": 0, "100%": 1} {
		var p Percent
		if err := p.UnmarshalText([]byte(in)); err != nil || p != want {
			t.Errorf("%q: %v, %v", in, p, err)
		}
		if out, _ := p.MarshalText(); string(out) != in {
			t.Errorf("%q marshals to %q", in, out)
		}
	}
	for _, in := range []string{"", "%", "80", "80 %", " 80%", "eighty%", "Inf%", "80%%"} {
		var p Percent
		if err := p.UnmarshalText([]byte(in)); err == nil {
			t.Errorf("%q accepted as %v", in, p)
		}
	}
}

// A validated token file never grants anything to others (the fuzz target's
// invariant for sockets, for files).
func TestTokenFileMode_NothingForOthers(t *testing.T) {
	for m := fs.FileMode(0); m <= 0o777; m++ {
		if CheckTokenFileMode(m) == nil && m&0o007 != 0 {
			t.Errorf("mode %04o accepted", uint32(m))
		}
	}
}

// demoSection is a feature section as a module would write one: a static
// and a dynamic key, a default, and a check.
type demoSection struct{}

type demoConfig struct {
	Addr  string `toml:"addr" reload:"restart"`
	Level int    `toml:"level"`
}

func (demoSection) Key() string { return "demo" }
func (demoSection) New() any    { return &demoConfig{Level: 3} }
func (demoSection) Validate(v any, c *Agent) []error {
	if d := v.(*demoConfig); d.Level > 9 {
		return []error{fmt.Errorf("demo.level %d: want 0..9", d.Level)}
	}
	return nil
}

// TestSections_DecodedStrictlyFromTheirOwnPrimitive: a registered section
// is decoded into its own type over its defaults and validated; a key it
// does not have, and a section nobody registered, are refused by name; its
// static keys are reported and kept on reload, its dynamic keys listed.
func TestSections_DecodedStrictlyFromTheirOwnPrimitive(t *testing.T) {
	secs := []Section{demoSection{}}
	c, err := LoadAgent(writeFile(t, "[demo]\naddr = \"a\"\n"), secs)
	if err != nil {
		t.Fatal(err)
	}
	if d := c.Section("demo").(*demoConfig); d.Addr != "a" || d.Level != 3 {
		t.Errorf("demo = %+v, want addr a and the default level 3", d)
	}
	for body, want := range map[string]string{
		"[demo]\nlevl = 1\n":      "unknown keys: demo.levl",
		"[demo]\nlevel = 10\n":    "demo.level 10",
		"[other]\nx = 1\n":        "unknown keys: other.x",
		"[api]\nbogus = 1\n":      "unknown keys: api.bogus",
		"[demo]\nlevel = \"x\"\n": "level",
	} {
		if _, err := LoadAgent(writeFile(t, body), secs); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: err = %v, want %q", body, err, want)
		}
	}
	// Without the section registered, its key is unknown.
	if _, err := LoadAgent(writeFile(t, "[demo]\nlevel = 1\n"), nil); err == nil || !strings.Contains(err.Error(), "unknown keys: demo.level") {
		t.Errorf("unregistered section: err = %v", err)
	}

	next, err := LoadAgent(writeFile(t, "[demo]\naddr = \"b\"\nlevel = 5\n"), secs)
	if err != nil {
		t.Fatal(err)
	}
	if got := RestartRequired(c, next); len(got) != 1 || got[0] != "demo.addr" {
		t.Errorf("RestartRequired = %v, want [demo.addr]", got)
	}
	KeepStatic(next, c)
	if d := next.Section("demo").(*demoConfig); d.Addr != "a" || d.Level != 5 {
		t.Errorf("after KeepStatic demo = %+v, want the running addr a and the new level 5", d)
	}
	if f := AgentDynamicFields(secs); !slices.Contains(f, "demo.level") || slices.Contains(f, "demo.addr") {
		t.Errorf("AgentDynamicFields = %v: want demo.level and not the static demo.addr", f)
	}
}
