package unixsock

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wicket-sh/wicket/internal/sockettest"
	"github.com/wicket-sh/wicket/internal/wait"
)

func TestMain(m *testing.M) { sockettest.Main(m) }

// S-limits: one uid gets at most MaxConnsPerUID connections; the excess is
// closed at once and counted, and closing one frees its slot for that uid.
func TestPerUIDConnectionCap(t *testing.T) {
	var logs sockettest.Buffer
	l := mustListen(t, Config{Name: "api", Path: filepath.Join(sockDir(t), "uid.sock"), MaxConns: 10, MaxConnsPerUID: 2,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })

	var held []net.Conn
	for i := 0; i < 2; i++ {
		c, err := net.Dial("unix", l.Path())
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	wait.Eventually(t, 5*time.Second, func() bool { return l.Stats().Open == 2 })
	for i := 0; i < 3; i++ {
		extra, err := net.Dial("unix", l.Path())
		if err != nil {
			t.Fatal(err)
		}
		extra.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := extra.Read(make([]byte, 1)); err != io.EOF {
			t.Errorf("connection %d over the uid's cap: read n=%d err=%v, want EOF", i+3, n, err)
		}
		extra.Close()
	}
	if s := l.Stats(); s.RejectedUID != 3 || s.Rejected != 0 || s.Open != 2 || s.MaxPerUID != 2 {
		t.Errorf("stats = %+v, want rejected_over_uid_cap=3 rejected_over_cap=0 open=2 max_per_uid=2", s)
	}
	// Logged once in full; the repeats wait for the summary.
	if got := strings.Count(logs.String(), "uid at its connection cap"); got != 1 {
		t.Errorf("%d full log lines for 3 refusals, want 1:\n%s", got, logs.String())
	}
	held[0].Close()
	wait.Eventually(t, 5*time.Second, func() bool { return l.Stats().Open == 1 })
	c := &http.Client{Transport: &http.Transport{DialContext: func(_ context.Context, _, _ string) (net.Conn, error) {
		return net.Dial("unix", l.Path())
	}}}
	resp, err := c.Get("http://wicket/")
	if err != nil {
		t.Fatalf("after freeing one of the uid's slots: %v", err)
	}
	resp.Body.Close()
	held[1].Close()
	c.CloseIdleConnections()
	wait.Eventually(t, 5*time.Second, func() bool { return l.Stats().Open == 0 })
	// Closing flushes the pending summary.
	l.Close()
	if !strings.Contains(logs.String(), "connections refused at the uid cap suppressed") || !strings.Contains(logs.String(), "suppressed=2") {
		t.Errorf("no summary of the 2 unlogged refusals:\n%s", logs.String())
	}
	m := Metrics(l)
	var found bool
	for _, s := range m {
		if s.Name == "wicket_connections_rejected_per_uid_total" && s.Value == 3 && s.Labels["socket"] == "api" {
			found = true
		}
	}
	if !found {
		t.Errorf("metrics lack wicket_connections_rejected_per_uid_total{socket=\"api\"} 3: %+v", m)
	}
}

// S-limits: a uid at its cap does not keep another uid out.
func TestPerUIDConnectionCap_OtherUIDUnaffected(t *testing.T) {
	sockettest.RequireRoot(t)
	d := sockDir(t)
	os.Chmod(d, 0o755)
	l := mustListen(t, Config{Path: filepath.Join(d, "uid.sock"), Mode: 0o666, MaxConns: 8, MaxConnsPerUID: 2,
		Logger: slog.New(slog.DiscardHandler)})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })

	const req = "GET / HTTP/1.1\r\nHost: wicket\r\n\r\n"
	held := sockettest.HoldAs(t, 65534, 65534, l.Path(), 8, req)
	if held.Count("200") != 2 || held.Count("closed") != 6 {
		t.Fatalf("uid 65534 with 8 connections: %v, want 2 served and 6 closed", held.Outcomes)
	}
	if s := l.Stats(); s.RejectedUID != 6 || s.Open != 2 {
		t.Errorf("stats = %+v, want rejected_over_uid_cap=6 open=2", s)
	}
	// Root is a uid like any other: it has its own two slots.
	for i := 0; i < 2; i++ {
		c, err := net.Dial("unix", l.Path())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, req)
		if b, err := io.ReadAll(io.LimitReader(c, 12)); err != nil || !bytes.HasPrefix(b, []byte("HTTP/1.1 200")) {
			t.Errorf("root connection %d while uid 65534 is at its cap: %q %v", i, b, err)
		}
	}
	// The holder leaves: its slots are free for it again.
	held.Release()
	wait.Eventually(t, 5*time.Second, func() bool { return l.Stats().Open == 2 })
	if again := sockettest.HoldAs(t, 65534, 65534, l.Path(), 2, req); again.Count("200") != 2 {
		t.Errorf("uid 65534 after releasing: %v, want 2 served", again.Outcomes)
	}
}
