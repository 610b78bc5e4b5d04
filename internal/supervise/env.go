package supervise

import (
	"slices"
	"strings"

	"github.com/wicket-sh/wicket/api"
)

// ChildEnv returns the workload's environment: parent without every
// WICKET_* variable except WICKET_SOCKET, without the variables named in
// drop (secrets kept under other names, such as the admin token's
// variable) and without malformed entries, then with add's KEY=value pairs
// set, replacing any parent value of the same key.
func ChildEnv(parent, add []string, drop ...string) []string {
	addKeys := make([]string, len(add))
	for i, kv := range add {
		if k, _, ok := strings.Cut(kv, "="); ok {
			addKeys[i] = k
		}
	}
	env := make([]string, 0, len(parent)+len(add))
	for _, kv := range parent {
		k, _, ok := strings.Cut(kv, "=")
		switch {
		case !ok || k == "":
		// WICKET_* is meant for wicket itself (the machine token, admin
		// tokens, seal keys); only the socket's path reaches the workload.
		case strings.HasPrefix(k, api.EnvPrefix) && k != api.SocketEnv:
		case slices.Contains(drop, k) || slices.Contains(addKeys, k):
		default:
			env = append(env, kv)
		}
	}
	for i, kv := range add {
		k, _, ok := strings.Cut(kv, "=")
		// A key given twice in add: the last value wins, once.
		if ok && k != "" && !slices.Contains(addKeys[i+1:], k) {
			env = append(env, kv)
		}
	}
	return env
}
