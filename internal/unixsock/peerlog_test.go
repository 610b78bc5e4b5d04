package unixsock

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

// TestPeer_LogValue: slog logs a Peer as its uid, gid and pid, in both
// handlers, and nothing else of it.
func TestPeer_LogValue(t *testing.T) {
	p := Peer{UID: 65534, GID: 100, PID: 4321, proc: &peerProc{}}
	var text, js bytes.Buffer
	slog.New(slog.NewTextHandler(&text, nil)).Info("x", "peer", p)
	slog.New(slog.NewJSONHandler(&js, nil)).Info("x", "peer", p)
	if !strings.Contains(text.String(), "peer.uid=65534 peer.gid=100 peer.pid=4321\n") {
		t.Errorf("text: %q", text.String())
	}
	if !strings.Contains(js.String(), `"peer":{"uid":65534,"gid":100,"pid":4321}}`) {
		t.Errorf("json: %q", js.String())
	}
}
