// Package awsname holds STS's naming rules without the AWS SDK: the agent's
// [aws] feature checks and derives role session names with them, and so
// does internal/cloud/aws, so the rule is written once.
package awsname

import (
	"regexp"
	"strings"
)

// Audience is the audience AWS STS expects in web identity tokens by default.
const Audience = "sts.amazonaws.com"

var sessionNameRE = regexp.MustCompile(`^[\w+=,.@-]{2,64}$`)

// Valid reports whether STS accepts s as a role session name.
func Valid(s string) bool { return sessionNameRE.MatchString(s) }

// SessionName turns s (a machine id, a hostname) into a valid session
// name: invalid characters become '-', and it is cut to 64 characters;
// "wicket" when too short.
func SessionName(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("+=,.@_-", c) >= 0) {
			b[i] = '-'
		}
	}
	if len(b) > 64 {
		b = b[:64]
	}
	if len(b) < 2 {
		return "wicket"
	}
	return string(b)
}
