package httpapi

import (
	"net"
	"strings"
)

// MaxLoggedPath is how much of a request path a log line carries: the path
// is caller input, so a caller must not be able to make every line it
// causes a megabyte long.
const MaxLoggedPath = 128

// Truncate returns s cut to n bytes, marked with "…" when cut. Log caller
// input through it (slog quotes what it is given, so the input cannot
// forge log structure either).
func Truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// LoopbackHost reports whether host (a URL's host, with or without the
// brackets of an IPv6 literal, without a port) is this machine's loopback:
// "localhost" or an address in 127.0.0.0/8 or ::1. Plain HTTP to anything
// else travels the network unencrypted.
func LoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	return ip != nil && ip.IsLoopback()
}
