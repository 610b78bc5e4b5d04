package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/unixsock"
)

func TestValidMethod(t *testing.T) {
	for m, want := range map[string]bool{
		"GET": true, "HEAD": true, "POST": true, "PUT": true, "PATCH": true, "DELETE": true, "OPTIONS": true,
		"CONNECT": false, "TRACE": false, "get": false, "": false, "*": false, "PROPFIND": false,
	} {
		if got := ValidMethod(m); got != want {
			t.Errorf("ValidMethod(%q) = %v, want %v", m, got, want)
		}
	}
}

func TestAllowedMethods(t *testing.T) {
	mux := http.NewServeMux()
	noop := http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})
	mux.Handle("GET /v1/machines/{id}", noop)
	mux.Handle("DELETE /v1/machines/{id}", noop)
	mux.Handle("/v1/apps/{app}/", noop)
	for _, tc := range []struct{ target, want string }{
		{"/v1/machines/x", "GET, DELETE"},
		{"/v1/nothing", ""},
		{"/v1/apps/x", ""}, // ServeMux would redirect: no match, so a 404
	} {
		r := httptest.NewRequest("POST", tc.target, nil)
		if got := AllowedMethods(mux, r, "GET", "POST", "DELETE"); got != tc.want {
			t.Errorf("%s: Allow %q, want %q", tc.target, got, tc.want)
		}
	}
}

func TestTruncate(t *testing.T) {
	if got := Truncate("abcdef", 3); got != "abc…" {
		t.Errorf("Truncate = %q", got)
	}
	if got := Truncate("abc", 3); got != "abc" {
		t.Errorf("Truncate = %q", got)
	}
}

func TestLoopbackHost(t *testing.T) {
	for h, want := range map[string]bool{
		"localhost": true, "127.0.0.1": true, "127.8.9.1": true, "::1": true, "[::1]": true,
		"10.0.0.1": false, "example.com": false, "localhost.example.com": false, "": false, "[fdaa::2]": false,
	} {
		if got := LoopbackHost(h); got != want {
			t.Errorf("LoopbackHost(%q) = %v, want %v", h, got, want)
		}
	}
}

// TestWriteError_CauseLoggedNeverSent: the caller gets the generic
// envelope whatever the cause says; the log gets the cause with the peer.
func TestWriteError_CauseLoggedNeverSent(t *testing.T) {
	const hostile = "/etc/wicket/seal.key: <script>alert(1)</script>"
	for _, tc := range []struct {
		name       string
		err        error
		status     int
		code, msg  string
		wantLogged bool
	}{
		{"bad request", BadRequestError(errors.New(hostile)), 400, api.CodeBadRequest, "bad request", true},
		{"wrapped", fmt.Errorf("handler: %w", UnavailableError("token unavailable", errors.New(hostile))), 503, api.CodeUpstreamUnavailable, "token unavailable", true},
		{"plain error", errors.New(hostile), 500, api.CodeInternal, "internal error", true},
		{"no cause", NotFoundError(nil), 404, api.CodeNotFound, "not found", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer
			logger := slog.New(slog.NewJSONHandler(&logs, nil))
			r := httptest.NewRequest("POST", "/v1/x/"+strings.Repeat("a", 300)+"?q=1", nil)
			r = r.WithContext(unixsock.WithPeer(r.Context(), unixsock.Peer{UID: 1234, GID: 99, PID: 4242}))
			w := httptest.NewRecorder()
			WriteError(w, r, logger, tc.err)
			var body api.ErrorReply
			if w.Code != tc.status || json.Unmarshal(w.Body.Bytes(), &body) != nil || body.Code != tc.code || body.Error != tc.msg {
				t.Fatalf("reply %d %q, want %d %s %q", w.Code, w.Body.String(), tc.status, tc.code, tc.msg)
			}
			if strings.Contains(w.Body.String(), "seal.key") || strings.Contains(w.Body.String(), "script") {
				t.Errorf("reply echoes the cause: %q", w.Body.String())
			}
			if !tc.wantLogged {
				if logs.Len() != 0 {
					t.Errorf("logged without a cause: %s", logs.String())
				}
				return
			}
			var line struct {
				Msg    string
				Status int
				Code   string
				Err    string
				Path   string
				Peer   struct{ UID, GID, PID int }
			}
			if err := json.Unmarshal(logs.Bytes(), &line); err != nil {
				t.Fatalf("log %q: %v", logs.String(), err)
			}
			if !strings.Contains(line.Err, hostile) || line.Status != tc.status || line.Code != tc.code {
				t.Errorf("log line %+v lacks the cause or status", line)
			}
			if line.Peer.UID != 1234 || line.Peer.GID != 99 || line.Peer.PID != 4242 {
				t.Errorf("log line peer %+v, want uid 1234 gid 99 pid 4242", line.Peer)
			}
			if len(line.Path) > MaxLoggedPath+len("…") {
				t.Errorf("logged path is %d bytes, want it cut to %d", len(line.Path), MaxLoggedPath)
			}
		})
	}
}

// TestWriteError_NoPeerLogsRemote: on the issuer's TCP listener there is no
// peer; the remote address stands in.
func TestWriteError_NoPeerLogsRemote(t *testing.T) {
	var logs bytes.Buffer
	r := httptest.NewRequest("GET", "/v1/machines/self", nil)
	r.RemoteAddr = "192.0.2.7:5555"
	WriteError(httptest.NewRecorder(), r, slog.New(slog.NewTextHandler(&logs, nil)), InternalError(errors.New("boom")))
	if !strings.Contains(logs.String(), "remote=192.0.2.7:5555") || !strings.Contains(logs.String(), "level=ERROR") {
		t.Errorf("log %q", logs.String())
	}
}

func TestHandle(t *testing.T) {
	h := Handle(slog.New(slog.DiscardHandler), func(w http.ResponseWriter, r *http.Request) error {
		if r.URL.Path == "/ok" {
			w.Write([]byte("fine"))
			return nil
		}
		return BadRequestError(errors.New("no"))
	})
	for path, want := range map[string]string{"/ok": "fine", "/no": `{"error":"bad request","code":"bad_request"}` + "\n"} {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest("GET", path, nil))
		if w.Body.String() != want {
			t.Errorf("%s: %q, want %q", path, w.Body.String(), want)
		}
	}
}
