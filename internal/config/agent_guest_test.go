package config

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var guestValid = strings.Replace(valid, "max_body_bytes = 4096\n", "max_body_bytes = 4096\ntoken_rate = 2.5\ntoken_burst = 5\n", 1) + `
[issuer]
url = "https://issuer.example:8650/base"
token_file = "/run/wicket/machine-token"
token_unlink = true
request_timeout = "3s"

[[policy]]
name = "app-binary"
uids = [1000]
exes = ["/usr/bin/app"]
allow = ["POST /v1/tokens/oidc"]
`

func TestLoadAgent_GuestKeys(t *testing.T) {
	c, err := LoadAgent(writeFile(t, guestValid), nil)
	if err != nil {
		t.Fatal(err)
	}
	want := AgentIssuer{URL: "https://issuer.example:8650/base", TokenFile: "/run/wicket/machine-token", TokenUnlink: true, RequestTimeout: Duration{3 * time.Second}}
	if diff := cmp.Diff(want, c.Issuer); diff != "" {
		t.Errorf("issuer (-want +got):\n%s", diff)
	}
	if c.Limits.TokenRate != 2.5 || c.Limits.TokenBurst != 5 {
		t.Errorf("limits %+v", c.Limits)
	}
	if c.Limits.MaxBodyBytes != 4096 || c.Limits.BodyTimeout.Duration != 10*time.Second {
		t.Errorf("shared limits in the same table lost: %+v", c.Limits)
	}
	if got := c.Policy[1].Exes; len(got) != 1 || got[0] != "/usr/bin/app" {
		t.Errorf("exes = %v", got)
	}
}

func TestLoadAgent_GuestDefaults(t *testing.T) {
	c, err := LoadAgent("", nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Issuer.URL != "" || c.Issuer.RequestTimeout.Duration != 10*time.Second ||
		c.Limits.TokenRate != 10 || c.Limits.TokenBurst != 20 {
		t.Errorf("defaults: %+v %+v", c.Issuer, c.Limits)
	}
}

func TestLoadAgent_GuestInvalid(t *testing.T) {
	for _, tc := range []struct{ body, want string }{
		{"[issuer]\nurl = \"ftp://x\"\n", "issuer.url"},
		{"[issuer]\nurl = \"https://u:p@x\"\n", "credentials"},
		{"[issuer]\nurl = \"https://x/?q\"\n", "issuer.url"},
		{"[issuer]\ntoken_file = \"relative\"\n", "issuer.token_file"},
		{"[issuer]\ntoken_unlink = true\n", "token_unlink"},
		{"[issuer]\nrequest_timeout = \"1ms\"\n", "request_timeout"},
		{"[issuer]\ntoken = \"fm2_x\"\n", "unknown keys: issuer.token"},
		{"[limits]\ntoken_rate = 0.0\n", "limits.token_rate"},
		{"[limits]\ntoken_burst = 0\n", "limits.token_burst"},
		{"[[policy]]\nuids = [1]\nexes = [\"app\"]\nallow = [\"*\"]\n", "exes entry"},
		{"[[policy]]\nuids = [1]\nexes = [\"/usr/../bin/app\"]\nallow = [\"*\"]\n", "exes entry"},
	} {
		_, err := LoadAgent(writeFile(t, tc.body), nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: err = %v, want %q", tc.body, err, tc.want)
		}
	}
}

func TestRestartRequired_Guest(t *testing.T) {
	a, err := LoadAgent(writeFile(t, guestValid), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := LoadAgent(writeFile(t, guestValid), nil)
	b.Issuer.URL = "https://other.example"
	b.Issuer.TokenFile = "/other"
	b.Issuer.TokenUnlink = false
	b.Issuer.RequestTimeout = Duration{time.Second} // dynamic
	b.Limits.TokenRate = 100                        // dynamic
	want := []string{"issuer.url", "issuer.token_file", "issuer.token_unlink"}
	if diff := cmp.Diff(want, RestartRequired(a, b)); diff != "" {
		t.Errorf("RestartRequired (-want +got):\n%s", diff)
	}
}
