package oidctoken

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wicket-sh/wicket/internal/config"
)

func load(t *testing.T, body string) (*config.Agent, error) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "agent.toml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return config.LoadAgent(p, []config.Section{Module{}})
}

func TestSection_KeysAndDefaults(t *testing.T) {
	c, err := load(t, "[tokens]\nrefresh_at = 0.75\nmax_audiences = 50\nttl = \"15m\"\n")
	if err != nil {
		t.Fatal(err)
	}
	if s := From(c); s.RefreshAt != 0.75 || s.MaxAudiences != 50 || s.TTL.Duration != 15*time.Minute {
		t.Errorf("tokens %+v", s)
	}
	c, err = load(t, "")
	if err != nil {
		t.Fatal(err)
	}
	if s := From(c); s.RefreshAt != 0.8 || s.MaxAudiences != 1000 || s.TTL.Duration != 10*time.Minute {
		t.Errorf("defaults %+v", s)
	}
}

func TestSection_Invalid(t *testing.T) {
	for _, tc := range []struct{ body, want string }{
		{"[tokens]\nrefresh_at = 1.0\n", "tokens.refresh_at"},
		{"[tokens]\nrefresh_at = 0.0\n", "tokens.refresh_at"},
		{"[tokens]\nmax_audiences = 0\n", "tokens.max_audiences"},
		{"[tokens]\nttl = \"30s\"\n", "tokens.ttl"},
		{"[tokens]\nttl = \"2h\"\n", "tokens.ttl"},
		{"[tokens]\nrefresh = 0.5\n", "unknown keys: tokens.refresh"},
	} {
		_, err := load(t, tc.body)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: err = %v, want %q", tc.body, err, tc.want)
		}
	}
}

// Every key of [tokens] is dynamic: a reload applies it.
func TestSection_Dynamic(t *testing.T) {
	a, _ := load(t, "")
	b, err := load(t, "[tokens]\nrefresh_at = 0.5\nmax_audiences = 2\nttl = \"2m\"\n")
	if err != nil {
		t.Fatal(err)
	}
	if got := config.RestartRequired(a, b); len(got) != 0 {
		t.Errorf("RestartRequired = %v", got)
	}
	want := []string{"tokens.refresh_at", "tokens.max_audiences", "tokens.ttl"}
	got := config.AgentDynamicFields([]config.Section{Module{}})
	for _, w := range want {
		if !strings.Contains(strings.Join(got, ","), w) {
			t.Errorf("dynamic fields %v lack %s", got, w)
		}
	}
}
