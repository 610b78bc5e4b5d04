package awsname

import (
	"strings"
	"testing"
)

func TestSessionName(t *testing.T) {
	for in, want := range map[string]string{
		"0123abcd":              "0123abcd",
		"m-01:ab/c d":           "m-01-ab-c-d",
		"x":                     "wicket",
		"":                      "wicket",
		strings.Repeat("a", 70): strings.Repeat("a", 64),
		"web.1@fra+=,_":         "web.1@fra+=,_",
		"dev:dev-app:m1":        "dev-dev-app-m1",
		"host.example.com":      "host.example.com",
		"héllo":                 "h--llo",
	} {
		if got := SessionName(in); got != want || !Valid(got) {
			t.Errorf("SessionName(%q) = %q, want %q", in, got, want)
		}
	}
}
