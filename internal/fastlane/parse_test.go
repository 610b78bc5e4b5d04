package fastlane

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"net/textproto"
	"strings"
	"testing"
)

// testPaths are the targets parse is given in these tests.
var testPaths = []string{"/v1/meta", "/v1/token"}

// head is a fast GET's head for /v1/meta with extra header lines (each
// "Name: value" without its CRLF) after Host.
func head(lines ...string) string {
	s := "GET /v1/meta HTTP/1.1\r\nHost: localhost\r\n"
	for _, l := range lines {
		s += l + "\r\n"
	}
	return s + "\r\n"
}

// TestParse_Accepts: the strict form parse serves gives the request's
// method, path, Accept (first value, count), Close and body, and n is the
// request's own length, whatever follows it.
func TestParse_Accepts(t *testing.T) {
	post := "POST /v1/token HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello"
	tests := []struct {
		name    string
		in      string
		n       int // the request's length; 0: len(in)
		want    Request
		wantRaw string // want.Accept as a string
	}{
		{name: "get", in: head(),
			want: Request{Method: "GET", Path: "/v1/meta"}},
		{name: "second path", in: "GET /v1/token HTTP/1.1\r\nHost: localhost\r\n\r\n",
			want: Request{Method: "GET", Path: "/v1/token"}},
		{name: "post without body", in: "POST /v1/token HTTP/1.1\r\nHost: x\r\n\r\n",
			want: Request{Method: "POST", Path: "/v1/token"}},
		{name: "post with empty body", in: "POST /v1/token HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
			want: Request{Method: "POST", Path: "/v1/token"}},
		{name: "post with body", in: post,
			want: Request{Method: "POST", Path: "/v1/token", Body: []byte("hello")}},
		{name: "post with leading zeros", in: "POST /v1/token HTTP/1.1\r\nHost: x\r\nContent-Length: 0003\r\n\r\nabc",
			want: Request{Method: "POST", Path: "/v1/token", Body: []byte("abc")}},
		{name: "largest body", in: "POST /v1/token HTTP/1.1\r\nHost: x\r\nContent-Length: 4096\r\n\r\n" + strings.Repeat("b", 4096),
			want: Request{Method: "POST", Path: "/v1/token", Body: []byte(strings.Repeat("b", 4096))}},
		{name: "headers after host", in: head("X-Other: 1", "x-y: [::1]:80"),
			want: Request{Method: "GET", Path: "/v1/meta"}},
		{name: "host with port", in: "GET /v1/meta HTTP/1.1\r\nHost: a-b_c.d:8080\r\n\r\n",
			want: Request{Method: "GET", Path: "/v1/meta"}},
		{name: "host ipv6", in: "GET /v1/meta HTTP/1.1\r\nhost: [::1]:80\r\n\r\n",
			want: Request{Method: "GET", Path: "/v1/meta"}},
		{name: "host empty", in: "GET /v1/meta HTTP/1.1\r\nHost:\r\n\r\n",
			want: Request{Method: "GET", Path: "/v1/meta"}},
		{name: "accept", in: head("Accept: application/json"),
			want: Request{Method: "GET", Path: "/v1/meta", Accepts: 1}, wantRaw: "application/json"},
		{name: "accept trimmed", in: head("accept: \t text/plain \t"),
			want: Request{Method: "GET", Path: "/v1/meta", Accepts: 1}, wantRaw: "text/plain"},
		{name: "accept first of three", in: head("Accept: a/b", "X: y", "ACCEPT: c/d", "Accept: e/f"),
			want: Request{Method: "GET", Path: "/v1/meta", Accepts: 3}, wantRaw: "a/b"},
		{name: "accept empty", in: head("Accept:"),
			want: Request{Method: "GET", Path: "/v1/meta", Accepts: 1}, wantRaw: ""},
		{name: "connection close", in: head("Connection: close"),
			want: Request{Method: "GET", Path: "/v1/meta", Close: true}},
		{name: "connection close any case", in: head("CONNECTION:   ClOsE  "),
			want: Request{Method: "GET", Path: "/v1/meta", Close: true}},
		{name: "connection keep-alive", in: head("Connection: keep-alive"),
			want: Request{Method: "GET", Path: "/v1/meta"}},
		{name: "connection keep-alive any case", in: head("connection: Keep-Alive"),
			want: Request{Method: "GET", Path: "/v1/meta"}},
		{name: "other headers ignored", in: head("User-Agent: curl/8.0", "X-Token!#$%&'*+-.^_`|~: v\tw", "Cookie: a=b; c=d"),
			want: Request{Method: "GET", Path: "/v1/meta"}},
		{name: "header before host", in: "GET /v1/meta HTTP/1.1\r\nAccept: */*\r\nHost: x\r\n\r\n",
			want: Request{Method: "GET", Path: "/v1/meta", Accepts: 1}, wantRaw: "*/*"},
		{name: "pipelined get", in: head() + head("Accept: x"), n: len(head()),
			want: Request{Method: "GET", Path: "/v1/meta"}},
		{name: "pipelined post", in: post + "GET /other HTTP/1.0\r\n", n: len(post),
			want: Request{Method: "POST", Path: "/v1/token", Body: []byte("hello")}},
		{name: "pipelined partial", in: head() + "GE", n: len(head()),
			want: Request{Method: "GET", Path: "/v1/meta"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, n, ok := parse([]byte(tt.in), testPaths)
			if !ok {
				t.Fatalf("parse(%q) declined", tt.in)
			}
			wantN := tt.n
			if wantN == 0 {
				wantN = len(tt.in)
			}
			if n != wantN {
				t.Errorf("n = %d, want %d", n, wantN)
			}
			if req.Method != tt.want.Method || req.Path != tt.want.Path || req.Close != tt.want.Close {
				t.Errorf("got %s %s close=%v, want %s %s close=%v",
					req.Method, req.Path, req.Close, tt.want.Method, tt.want.Path, tt.want.Close)
			}
			if !bytes.Equal(req.Body, tt.want.Body) {
				t.Errorf("body = %q, want %q", req.Body, tt.want.Body)
			}
			if req.Accepts != tt.want.Accepts || string(req.Accept) != tt.wantRaw {
				t.Errorf("accept = %q (%d), want %q (%d)", req.Accept, req.Accepts, tt.wantRaw, tt.want.Accepts)
			}
			if cap(req.Body) != len(req.Body) {
				t.Errorf("body capacity %d beyond its length %d: an append would overwrite what follows", cap(req.Body), len(req.Body))
			}
		})
	}
}

// TestParse_PathIsTheServersString: Path is the very string of Paths, not
// one built from the buffer (which the next read overwrites).
func TestParse_PathIsTheServersString(t *testing.T) {
	b := []byte(head())
	req, _, ok := parse(b, testPaths)
	if !ok {
		t.Fatal("declined")
	}
	copy(b, strings.Repeat("x", len(b)))
	if req.Path != "/v1/meta" {
		t.Fatalf("Path = %q after the buffer changed", req.Path)
	}
}

// TestParse_Declines: every rule of parse's doc comment, broken once,
// sends the request to net/http.
func TestParse_Declines(t *testing.T) {
	tests := []struct{ name, in string }{
		// request line
		{"head method", "HEAD /v1/meta HTTP/1.1\r\nHost: x\r\n\r\n"},
		{"put method", "PUT /v1/meta HTTP/1.1\r\nHost: x\r\n\r\n"},
		{"lower-case method", "get /v1/meta HTTP/1.1\r\nHost: x\r\n\r\n"},
		{"options", "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n"},
		{"other path", "GET /v1/other HTTP/1.1\r\nHost: x\r\n\r\n"},
		{"path prefix", "GET /v1/met HTTP/1.1\r\nHost: x\r\n\r\n"},
		{"path longer", "GET /v1/meta/ HTTP/1.1\r\nHost: x\r\n\r\n"},
		{"query string", "GET /v1/meta?a=b HTTP/1.1\r\nHost: x\r\n\r\n"},
		{"empty query", "GET /v1/meta? HTTP/1.1\r\nHost: x\r\n\r\n"},
		{"fragment", "GET /v1/meta#f HTTP/1.1\r\nHost: x\r\n\r\n"},
		{"absolute form", "GET http://x/v1/meta HTTP/1.1\r\nHost: x\r\n\r\n"},
		{"escaped path", "GET /v1/%6deta HTTP/1.1\r\nHost: x\r\n\r\n"},
		{"two spaces", "GET  /v1/meta HTTP/1.1\r\nHost: x\r\n\r\n"},
		{"tab separator", "GET\t/v1/meta HTTP/1.1\r\nHost: x\r\n\r\n"},
		{"http/1.0", "GET /v1/meta HTTP/1.0\r\nHost: x\r\n\r\n"},
		{"http/2", "GET /v1/meta HTTP/2.0\r\nHost: x\r\n\r\n"},
		{"lower-case version", "GET /v1/meta http/1.1\r\nHost: x\r\n\r\n"},
		{"no version", "GET /v1/meta\r\nHost: x\r\n\r\n"},
		{"trailing space", "GET /v1/meta HTTP/1.1 \r\nHost: x\r\n\r\n"},
		{"bare LF request line", "GET /v1/meta HTTP/1.1\nHost: x\r\n\r\n"},
		// header lines
		{"bare LF header", "GET /v1/meta HTTP/1.1\r\nHost: x\nX: y\r\n\r\n"},
		{"bare LF end", "GET /v1/meta HTTP/1.1\r\nHost: x\r\n\n"},
		{"CR without LF", "GET /v1/meta HTTP/1.1\r\nHost: x\rX: y\r\n\r\n"},
		{"CR at end of head", "GET /v1/meta HTTP/1.1\r\nHost: x\r\n\rX"},
		{"obs-fold space", head("X: a", " b")},
		{"obs-fold tab", head("X: a", "\tb")},
		{"obs-fold host", "GET /v1/meta HTTP/1.1\r\nHost:\r\n x\r\n\r\n"},
		{"space before colon", head("Accept : x")},
		{"space before colon host", "GET /v1/meta HTTP/1.1\r\nHost : x\r\n\r\n"},
		{"tab before colon", head("X\t: x")},
		{"no colon", head("X-Thing")},
		{"empty name", head(": x")},
		{"name with quote", head(`X"Y: z`)},
		{"name with paren", head("X(Y): z")},
		{"name with slash", head("X/Y: z")},
		{"name with at", head("X@Y: z")},
		{"name with non-ASCII", head("X\xc3\xa9: z")},
		{"name with NUL", head("X\x00: z")},
		{"value with NUL", head("X: a\x00b")},
		{"value with DEL", head("X: a\x7fb")},
		{"value with ESC", head("X: a\x1bb")},
		{"value with non-ASCII", head("X: caf\xc3\xa9")},
		{"value with vertical tab", head("X: a\vb")},
		// Host
		{"no host", "GET /v1/meta HTTP/1.1\r\nAccept: x\r\n\r\n"},
		{"no headers", "GET /v1/meta HTTP/1.1\r\n\r\n"},
		{"two hosts", head("Host: localhost")},
		{"two hosts other case", head("HOST: other")},
		{"host with slash", "GET /v1/meta HTTP/1.1\r\nHost: a/b\r\n\r\n"},
		{"host with space", "GET /v1/meta HTTP/1.1\r\nHost: a b\r\n\r\n"},
		{"host with at", "GET /v1/meta HTTP/1.1\r\nHost: u@a\r\n\r\n"},
		{"host with percent", "GET /v1/meta HTTP/1.1\r\nHost: a%20b\r\n\r\n"},
		{"host with comma", "GET /v1/meta HTTP/1.1\r\nHost: a,b\r\n\r\n"},
		{"host with tab inside", "GET /v1/meta HTTP/1.1\r\nHost: a\tb\r\n\r\n"},
		// Content-Length
		{"two content-lengths", "POST /v1/token HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na"},
		{"content-length on get", "GET /v1/meta HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"},
		{"content-length on get with body", "GET /v1/meta HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\na"},
		{"content-length empty", "POST /v1/token HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n\r\n"},
		{"content-length sign", "POST /v1/token HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\na"},
		{"content-length negative", "POST /v1/token HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"},
		{"content-length hex", "POST /v1/token HTTP/1.1\r\nHost: x\r\nContent-Length: 0x1\r\n\r\na"},
		{"content-length list", "POST /v1/token HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 1\r\n\r\na"},
		{"content-length inner space", "POST /v1/token HTTP/1.1\r\nHost: x\r\nContent-Length: 1 1\r\n\r\n" + strings.Repeat("a", 11)},
		{"content-length too large", "POST /v1/token HTTP/1.1\r\nHost: x\r\nContent-Length: 4097\r\n\r\n" + strings.Repeat("a", 4097)},
		{"content-length five digits", "POST /v1/token HTTP/1.1\r\nHost: x\r\nContent-Length: 00001\r\n\r\na"},
		{"content-length huge", "POST /v1/token HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n"},
		{"body not all there", "POST /v1/token HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhell"},
		{"body missing", "POST /v1/token HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n"},
		// incomplete heads
		{"empty", ""},
		{"method only", "GET"},
		{"request line only", "GET /v1/meta HTTP/1.1\r\n"},
		{"request line without LF", "GET /v1/meta HTTP/1.1\r"},
		{"in a header name", "GET /v1/meta HTTP/1.1\r\nHo"},
		{"in a header value", "GET /v1/meta HTTP/1.1\r\nHost: loc"},
		{"header without LF", "GET /v1/meta HTTP/1.1\r\nHost: x\r"},
		{"no final CRLF", "GET /v1/meta HTTP/1.1\r\nHost: x\r\n"},
		{"final CR only", "GET /v1/meta HTTP/1.1\r\nHost: x\r\n\r"},
		// headers the lane leaves to net/http
		{"transfer-encoding", "POST /v1/token HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"},
		{"transfer-encoding identity", "POST /v1/token HTTP/1.1\r\nHost: x\r\ntransfer-encoding: identity\r\n\r\n"},
		{"expect", "POST /v1/token HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\na"},
		{"expect on get", head("EXPECT: x")},
		{"upgrade", head("Connection: keep-alive", "Upgrade: websocket")},
		{"upgrade alone", head("Upgrade: h2c")},
		{"trailer", head("Trailer: X")},
		{"connection upgrade", head("Connection: Upgrade")},
		{"connection close list", head("Connection: close, x")},
		{"connection keep-alive list", head("Connection: keep-alive, Upgrade")},
		{"connection two tokens", head("Connection: keep-alive close")},
		{"connection empty", head("Connection:")},
		{"two connections", head("Connection: close", "Connection: close")},
		{"connection te", head("Connection: TE")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if req, n, ok := parse([]byte(tt.in), testPaths); ok {
				t.Fatalf("parse(%q) = %+v, %d, accepted", tt.in, req, n)
			}
		})
	}
}

// TestParse_NoPaths: a server without paths serves nothing.
func TestParse_NoPaths(t *testing.T) {
	if _, _, ok := parse([]byte(head()), nil); ok {
		t.Fatal("accepted without paths")
	}
	if _, _, ok := parse([]byte("GET  HTTP/1.1\r\nHost: x\r\n\r\n"), []string{""}); ok {
		t.Fatal("accepted an empty target")
	}
}

// FuzzParse: whatever parse accepts, net/http reads the same way: the
// same method, path (no query), body, Close and Accept values, and the
// same bytes left after the request (n).
//
// The one difference net/http has, and that the lane avoids rather than
// reproduces, is leniency: net/http accepts far more (bare LF, obs-fold,
// other methods and versions, non-ASCII header values, repeated equal
// Content-Lengths, a body on a GET, ...); parse declines all that, and
// the fuzzer checks only that its acceptances are a subset of net/http's.
// Both trim a header value of spaces and tabs on either side (RFC 9110
// OWS), so Accept compares equal as it is.
func FuzzParse(f *testing.F) {
	seeds := []string{
		head(),
		head("Accept: application/json", "Accept: text/plain"),
		head("Connection: close"),
		head("connection: Keep-Alive", "User-Agent: x"),
		"POST /v1/token HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
		"POST /v1/token HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /v1/meta HTTP/1.1\r\n",
		head() + head("Accept: */*"),
		"POST /v1/token HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"GET /v1/meta?x HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /v1/meta HTTP/1.1\nHost: x\n\n",
		head("X: a", " b"),
		head("Accept : x"),
		"GET /v1/meta HTTP/1.1\r\nHost: [::1]:80\r\nAccept:\t a \t\r\n\r\n",
		"POST /v1/token HTTP/1.1\r\nhost:\r\ncontent-length: 0003\r\nCONNECTION: CLOSE\r\n\r\nabcdef",
		"POST /v1/token HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na",
		"GET /v1/token HTTP/1.1\r\nX-!#$%&'*+-.^_`|~: \t\r\nHost: h\r\n\r\n\r\n",
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		req, n, ok := parse(in, testPaths)
		if !ok {
			return
		}
		if n <= 0 || n > len(in) {
			t.Fatalf("n = %d of %d bytes", n, len(in))
		}
		if cap(req.Body) != len(req.Body) {
			t.Fatalf("%q: body capacity %d, length %d", in, cap(req.Body), len(req.Body))
		}
		// The request is its n bytes, whatever follows, and none fewer.
		if again, m, ok := parse(in[:n], testPaths); !ok || m != n || !sameRequest(again, req) {
			t.Fatalf("%q: its first %d bytes parse as %+v, %d, %v; all of it %+v", in, n, again, m, ok, req)
		}
		if _, _, ok := parse(in[:n-1], testPaths); ok {
			t.Fatalf("%q: accepted without its last byte", in[:n])
		}
		br := bufio.NewReader(bytes.NewReader(in))
		r, err := http.ReadRequest(br)
		if err != nil {
			t.Fatalf("parse accepted %q; net/http: %v", in, err)
		}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			t.Fatalf("net/http body of %q: %v", in, err)
		}
		rest, _ := io.ReadAll(br)
		checkSameRequest(t, in, req, n, r, body, rest)
	})
}

func sameRequest(a, b Request) bool {
	return a.Method == b.Method && a.Path == b.Path && bytes.Equal(a.Body, b.Body) &&
		bytes.Equal(a.Accept, b.Accept) && a.Accepts == b.Accepts && a.Close == b.Close
}

// checkSameRequest fails t when net/http's reading of in (r, its body and
// the bytes after it) is not the lane's (req, n).
func checkSameRequest(t *testing.T, in []byte, req Request, n int, r *http.Request, body, rest []byte) {
	t.Helper()
	if r.Method != req.Method {
		t.Errorf("%q: method %q, net/http %q", in, req.Method, r.Method)
	}
	if r.URL.Path != req.Path || r.URL.RawQuery != "" || r.URL.Host != "" || r.URL.Scheme != "" {
		t.Errorf("%q: path %q, net/http URL %#v", in, req.Path, r.URL)
	}
	if r.ProtoMajor != 1 || r.ProtoMinor != 1 {
		t.Errorf("%q: net/http proto %q", in, r.Proto)
	}
	if !bytes.Equal(body, req.Body) {
		t.Errorf("%q: body %q, net/http %q", in, req.Body, body)
	}
	if r.Close != req.Close {
		t.Errorf("%q: close %v, net/http %v", in, req.Close, r.Close)
	}
	accepts := r.Header["Accept"]
	if len(accepts) != req.Accepts {
		t.Errorf("%q: %d Accept, net/http %d", in, req.Accepts, len(accepts))
	} else if len(accepts) > 0 && accepts[0] != string(req.Accept) {
		t.Errorf("%q: Accept %q, net/http %q", in, req.Accept, accepts[0])
	}
	// net/http's server refuses an HTTP/1.1 request without exactly one
	// Host, a check ReadRequest leaves to it (and it drops the header
	// from r.Header): count them as textproto reads them.
	tp := textproto.NewReader(bufio.NewReader(bytes.NewReader(in)))
	if _, err := tp.ReadLine(); err != nil {
		t.Fatalf("%q: textproto request line: %v", in, err)
	}
	h, err := tp.ReadMIMEHeader()
	if err != nil {
		t.Fatalf("%q: textproto header: %v", in, err)
	}
	if hosts := h["Host"]; len(hosts) != 1 || r.Host != hosts[0] {
		t.Errorf("%q: net/http Host headers %q, Host %q", in, hosts, r.Host)
	}
	if len(r.TransferEncoding) != 0 {
		t.Errorf("%q: net/http transfer encoding %q", in, r.TransferEncoding)
	}
	if !bytes.Equal(rest, in[n:]) {
		t.Errorf("%q: after the request %q, net/http %q", in, in[n:], rest)
	}
}

// TestScan_EveryPrefixOfAHeadIsMore: every proper prefix of a head of the
// lane's form is scanMore, wherever the sender's writes split it (in the
// request line, in a header name), so that the lane reads the rest under
// its header timeout and serves it, as it does for a split in a value;
// scanDecline would hand a request of its own form to net/http.
func TestScan_EveryPrefixOfAHeadIsMore(t *testing.T) {
	for _, full := range []string{head("Accept: y"), post("/v1/token", "")} {
		if _, _, st := scan([]byte(full), testPaths); st != scanned {
			t.Fatalf("%q: st %d, want scanned", full, st)
		}
		for i := 1; i < len(full); i++ {
			if _, _, st := scan([]byte(full[:i]), testPaths); st != scanMore {
				t.Errorf("%q | %q: st %d, want scanMore", full[:i], full[i:], st)
			}
		}
	}
}
