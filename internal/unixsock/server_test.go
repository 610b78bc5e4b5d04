package unixsock

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestHTTPServer_PeerInContextAndBodyLimits(t *testing.T) {
	d := sockDir(t)
	l := mustListen(t, Config{Path: filepath.Join(d, "h.sock")})
	h := LimitBody(
		func() BodyLimits { return BodyLimits{MaxBytes: 10, Timeout: 300 * time.Millisecond} },
		func(w http.ResponseWriter, r *http.Request, err error) {
			switch {
			case errors.Is(err, ErrBodyTooLarge):
				w.WriteHeader(http.StatusRequestEntityTooLarge)
			case errors.Is(err, ErrBodyTimeout):
				w.WriteHeader(http.StatusRequestTimeout)
			default:
				w.WriteHeader(http.StatusBadRequest)
			}
		},
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			p, ok := PeerFromContext(r.Context())
			if !ok {
				w.WriteHeader(http.StatusForbidden)
				return
			}
			buf, ok := BufferedBody(r)
			if !ok {
				w.WriteHeader(http.StatusInternalServerError) // LimitBody read it: must be available
				return
			}
			b, _ := io.ReadAll(r.Body)
			if string(b) != string(buf) {
				w.WriteHeader(http.StatusInternalServerError)
				return
			}
			io.WriteString(w, p.String()+" "+string(b))
		}))
	srv := NewHTTPServer(h, HTTPLimits{}, slog.New(slog.DiscardHandler))
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	c := &http.Client{Transport: &http.Transport{DialContext: func(_ context.Context, _, _ string) (net.Conn, error) {
		return net.Dial("unix", l.Path())
	}}}

	resp, err := c.Post("http://wicket/", "text/plain", strings.NewReader("small"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(string(b), "uid=") || !strings.HasSuffix(string(b), " small") {
		t.Errorf("small body: %d %q", resp.StatusCode, b)
	}

	resp, err = c.Post("http://wicket/", "text/plain", strings.NewReader(strings.Repeat("x", 11)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("oversized body: status %d, want 413", resp.StatusCode)
	}

	// A body that never finishes arriving is cut at the body timeout.
	conn, err := net.Dial("unix", l.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\nabc")
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	n, _ := conn.Read(buf)
	if !strings.HasPrefix(string(buf[:n]), "HTTP/1.1 408") {
		t.Errorf("slow body: got %q, want 408", buf[:n])
	}
}

// ReadBody reads a body of announced length into a buffer of that size,
// and gives what was sent when a body is shorter than announced or of
// unknown length, within the limit.
func TestReadBody_AnnouncedAndUnknownLength(t *testing.T) {
	for _, tc := range []struct {
		name    string
		body    string
		length  int64
		want    string
		refused bool
	}{
		{"announced", `{"aud":"x"}`, 11, `{"aud":"x"}`, false},
		{"shorter than announced", `{"a`, 11, `{"a`, false},
		{"unknown length", `{"aud":"y"}`, -1, `{"aud":"y"}`, false},
		{"unknown length over the limit", strings.Repeat("x", 65), -1, "", true},
		{"announced over the limit", strings.Repeat("x", 65), 65, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest("POST", "/", strings.NewReader(tc.body))
			r.ContentLength = tc.length
			w := httptest.NewRecorder()
			var got error
			ok := ReadBody(w, r, BodyLimits{MaxBytes: 64}, func(w http.ResponseWriter, r *http.Request, err error) { got = err })
			if ok == tc.refused {
				t.Fatalf("ReadBody = %v (%v), want refused %v", ok, got, tc.refused)
			}
			if tc.refused {
				if !errors.Is(got, ErrBodyTooLarge) {
					t.Errorf("refused with %v, want ErrBodyTooLarge", got)
				}
				return
			}
			b, buffered := BufferedBody(r)
			if !buffered || string(b) != tc.want || r.ContentLength != int64(len(tc.want)) {
				t.Errorf("buffered %v %q length %d, want %q", buffered, b, r.ContentLength, tc.want)
			}
		})
	}
}
