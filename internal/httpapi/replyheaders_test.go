package httpapi

import (
	"net/http"
	"testing"
)

// An Add to one reply's header copies the shared value (len == cap), so
// the next reply still gets the originals.
func TestSetPrivateReply_SharedValuesNotWritable(t *testing.T) {
	h := http.Header{}
	SetPrivateReply(h)
	h.Add("Cache-Control", "public")
	h.Add("X-Content-Type-Options", "other")
	next := http.Header{}
	SetPrivateReply(next)
	if got := next.Values("Cache-Control"); len(got) != 1 || got[0] != "no-store" {
		t.Errorf("Cache-Control after another reply's Add: %q", got)
	}
	if got := next.Values("X-Content-Type-Options"); len(got) != 1 || got[0] != "nosniff" {
		t.Errorf("X-Content-Type-Options after another reply's Add: %q", got)
	}
}
