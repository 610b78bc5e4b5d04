package fastlane

import "slices"

// Request is one request the lane parsed. Its byte slices point into the
// connection's buffer and are valid only until the handler returns.
type Request struct {
	// Method is "GET" or "POST".
	Method string
	// Path is the request target, one of the server's Paths (the very
	// string given there).
	Path string
	// Body is a POST's body (Content-Length bytes; empty without one).
	Body []byte
	// Accept is the first Accept header's value and Accepts how many
	// Accept headers the request has.
	Accept  []byte
	Accepts int
	// Close: the client asked for the connection to be closed after the
	// reply (Connection: close).
	Close bool
}

// maxContentLength bounds the bodies the lane reads itself: any larger
// one goes to net/http (and to the caller's body limits there).
const maxContentLength = 4096

// parse reads one request from b. It returns the request and its length
// in bytes when b holds all of it and it is of the strict form the lane
// serves; ok is false otherwise, whether b holds only part of a request
// or anything else (another method or target, another HTTP version,
// Transfer-Encoding, Expect, a header net/http could refuse, ...): such
// bytes go to net/http unread, and it gives its own answer.
//
// The form: "GET" or "POST", a target equal to one of paths, "HTTP/1.1";
// header lines "Name: value" ending in CRLF, names of token characters,
// values of printable ASCII and tabs; exactly one Host (of conservative
// characters); at most one Content-Length (decimal, at most
// maxContentLength, and only on a POST), whose body b also holds; at most
// one Connection, "close" or "keep-alive"; no Transfer-Encoding, Expect,
// Upgrade or Trailer. Other headers are ignored, as the handlers behind
// the lane ignore them.
func parse(b []byte, paths []string) (req Request, n int, ok bool) {
	req, n, st := scan(b, paths)
	return req, n, st == scanned
}

// scan results.
const (
	scanned     = iota // a request of the strict form, all in b
	scanMore           // so far of the strict form, its head not all in b
	scanDecline        // not of the strict form
)

// scan is parse, telling apart a request b holds only part of the head
// of, which more bytes may complete, from one of another form. A head
// whose body is not all in b is declined: the lane never waits for a
// body, which net/http reads only once the guard admitted the caller, in
// the body's own time.
func scan(b []byte, paths []string) (req Request, n int, st int) {
	i, st := parseRequestLine(b, &req, paths)
	if st != scanned {
		return Request{}, 0, st
	}
	hosts, lengths, conns := 0, 0, 0
	contentLength := 0
	for {
		if i+1 >= len(b) {
			return Request{}, 0, scanMore
		}
		if b[i] == '\r' {
			if b[i+1] != '\n' {
				return Request{}, 0, scanDecline
			}
			i += 2
			break // end of the header
		}
		// name
		start := i
		for i < len(b) && isTokenChar(b[i]) {
			i++
		}
		if i == len(b) {
			return Request{}, 0, scanMore // a name running to the end
		}
		if i == start || b[i] != ':' {
			return Request{}, 0, scanDecline
		}
		name := b[start:i]
		i++
		// value: printable ASCII and tabs up to CRLF, trimmed of spaces
		// and tabs
		vstart := i
		for i < len(b) && b[i] != '\r' {
			c := b[i]
			if c != '\t' && (c < ' ' || c > '~') {
				return Request{}, 0, scanDecline
			}
			i++
		}
		if i+1 >= len(b) {
			return Request{}, 0, scanMore
		}
		if b[i+1] != '\n' {
			return Request{}, 0, scanDecline
		}
		value := trimOWS(b[vstart:i])
		i += 2

		switch {
		case equalFold(name, "host"):
			hosts++
			if !validHost(value) {
				return Request{}, 0, scanDecline
			}
		case equalFold(name, "content-length"):
			lengths++
			v, ok := parseLength(value)
			if !ok {
				return Request{}, 0, scanDecline
			}
			contentLength = v
		case equalFold(name, "connection"):
			conns++
			switch {
			case equalFold(value, "close"):
				req.Close = true
			case equalFold(value, "keep-alive"):
			default:
				return Request{}, 0, scanDecline
			}
		case equalFold(name, "accept"):
			if req.Accepts == 0 {
				req.Accept = value
			}
			req.Accepts++
		case equalFold(name, "transfer-encoding"), equalFold(name, "expect"),
			equalFold(name, "upgrade"), equalFold(name, "trailer"):
			return Request{}, 0, scanDecline
		}
	}
	if hosts != 1 || lengths > 1 || conns > 1 {
		return Request{}, 0, scanDecline
	}
	if lengths == 1 && req.Method != "POST" {
		return Request{}, 0, scanDecline
	}
	if len(b)-i < contentLength {
		// The body is not all here: net/http reads it, after the
		// policy and under the body's own limits.
		return Request{}, 0, scanDecline
	}
	if contentLength > 0 {
		req.Body = b[i : i+contentLength : i+contentLength]
	}
	return req, i + contentLength, scanned
}

// parseRequestLine reads "METHOD SP target SP HTTP/1.1 CRLF" and returns
// the offset after it; scanMore when b ends inside a line that may still
// become one.
func parseRequestLine(b []byte, req *Request, paths []string) (int, int) {
	var i int
	switch {
	case hasPrefix(b, "GET "):
		req.Method, i = "GET", 4
	case hasPrefix(b, "POST "):
		req.Method, i = "POST", 5
	case isPrefix(b, "GET ") || isPrefix(b, "POST "):
		return 0, scanMore
	default:
		return 0, scanDecline
	}
	end := i
	for end < len(b) && b[end] != ' ' {
		end++
	}
	target := b[i:end]
	for _, p := range paths {
		if string(target) == p {
			req.Path = p
			break
		}
	}
	if req.Path == "" {
		if end == len(b) && slices.ContainsFunc(paths, func(p string) bool { return isPrefix(target, p) }) {
			return 0, scanMore
		}
		return 0, scanDecline
	}
	const version = " HTTP/1.1\r\n"
	if !hasPrefix(b[end:], version) {
		if isPrefix(b[end:], version) {
			return 0, scanMore
		}
		return 0, scanDecline
	}
	return end + len(version), scanned
}

// isPrefix reports whether b is a proper prefix of s: more bytes may make
// it s.
func isPrefix(b []byte, s string) bool {
	return len(b) < len(s) && string(b) == s[:len(b)]
}

func hasPrefix(b []byte, s string) bool {
	return len(b) >= len(s) && string(b[:len(s)]) == s
}

// parseLength reads a Content-Length: decimal digits only, at most
// maxContentLength.
func parseLength(v []byte) (int, bool) {
	if len(v) == 0 || len(v) > 4 {
		return 0, false
	}
	n := 0
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, n <= maxContentLength
}

// validHost accepts the characters of a host name, an IPv4 or bracketed
// IPv6 address and a port; anything else goes to net/http's own check.
func validHost(v []byte) bool {
	for _, c := range v {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '.' || c == '-' || c == '_' || c == ':' || c == '[' || c == ']':
		default:
			return false
		}
	}
	return true
}

func trimOWS(v []byte) []byte {
	for len(v) > 0 && (v[0] == ' ' || v[0] == '\t') {
		v = v[1:]
	}
	for len(v) > 0 && (v[len(v)-1] == ' ' || v[len(v)-1] == '\t') {
		v = v[:len(v)-1]
	}
	return v
}

// equalFold reports whether b is s in any ASCII case; s is lower case.
func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

// isTokenChar reports whether c may appear in a header name (RFC 9110
// tchar).
func isTokenChar(c byte) bool {
	return c < 0x80 && tokenChars[c]
}

var tokenChars = func() (t [128]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()
