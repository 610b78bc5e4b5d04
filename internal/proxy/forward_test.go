package proxy

import (
	"compress/gzip"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestRequestHeaderFilter(t *testing.T) {
	in := http.Header{
		"Authorization":       {"Bearer x"},
		"Cookie":              {"a=b"},
		"Proxy-Authorization": {"Basic x"},
		"Proxy-Anything":      {"x"},
		"Connection":          {"close, X-Listed"},
		"X-Listed":            {"x"},
		"Keep-Alive":          {"x"},
		"Te":                  {"trailers"},
		"Trailer":             {"X"},
		"Transfer-Encoding":   {"chunked"},
		"Upgrade":             {"h2c"},
		"X-Wicket-App":        {"forged"},
		"X-Forwarded-Host":    {"evil"},
		"Forwarded":           {"for=1.2.3.4"},
		"Accept-Encoding":     {"br"},
		"Accept":              {"application/json"},
		"X-Request-Id":        {"1"},
	}
	def, err := CompileHeaders(nil)
	if err != nil {
		t.Fatal(err)
	}
	if out := def.Filter(in); len(out) != 2 || out.Get("Accept") != "application/json" || out.Get("X-Request-Id") != "1" {
		t.Errorf("forwarded headers = %v", out)
	}
	// A header the caller's Connection lists is hop-by-hop even when
	// allowlisted.
	listed, err := CompileHeaders([]string{"x-listed", "Accept"})
	if err != nil {
		t.Fatal(err)
	}
	if out := listed.Filter(in); len(out) != 1 || out.Get("Accept") != "application/json" {
		t.Errorf("forwarded headers = %v", out)
	}
	if out := (&HeaderAllowlist{}).Filter(in); len(out) != 0 {
		t.Errorf("empty allowlist forwarded %v", out)
	}
}

// TestNeverForwarded_WhateverTheAllowlist: the names no allowlist can
// forward, in any case and spelling, are refused by CompileHeaders and
// dropped by Filter.
func TestNeverForwarded_WhateverTheAllowlist(t *testing.T) {
	never := []string{
		"X_Wicket_Machine_Id", "x-wicket_app", "X-WICKET-ORG", "x-wicket-anything", "Some_Header", "Accept_Language",
		"Authorization", "cookie", "Cookie2", "Proxy-Authorization", "proxy-anything", "Forwarded",
		"X-Forwarded-For", "x-forwarded-host", "Connection", "Keep-Alive", "TE", "Trailer",
		"Transfer-Encoding", "Upgrade", "Host", "Content-Length", "Accept-Encoding", "Expect",
		"X-HTTP-Method-Override", "x-http-method", "X-Method-Override", "X-Original-URL",
		"X-Rewrite-URL", "X-Real-IP", "True-Client-IP", "Via", "X-Client-IP", "X-Original-Method",
	}
	for _, n := range never {
		if !NeverForwarded(n) {
			t.Errorf("NeverForwarded(%q) = false", n)
		}
		if _, err := CompileHeaders([]string{"Accept", n}); err == nil {
			t.Errorf("CompileHeaders accepted %q", n)
		}
		in := http.Header{n: {"v"}, "Accept": {"a"}}
		all := &HeaderAllowlist{names: map[string]bool{"Accept": true, http.CanonicalHeaderKey(n): true}}
		if out := all.Filter(in); len(out) != 1 {
			t.Errorf("Filter forwarded %q: %v", n, out)
		}
	}
	for _, bad := range []string{"", "X Tenant", "X-Tenant:", "X-Ténant", strings.Repeat("a", 129)} {
		if _, err := CompileHeaders([]string{bad}); err == nil {
			t.Errorf("CompileHeaders accepted %q", bad)
		}
	}
	many := make([]string, MaxForwardHeaders+1)
	for i := range many {
		many[i] = "X-H" + strings.Repeat("a", i)
	}
	if _, err := CompileHeaders(many); err == nil {
		t.Error("CompileHeaders accepted more than MaxForwardHeaders")
	}
	for _, ok := range []string{"Accept", "x-tenant", "Idempotency-Key", "If-None-Match"} {
		if NeverForwarded(ok) {
			t.Errorf("NeverForwarded(%q) = true", ok)
		}
	}
	a, err := CompileHeaders([]string{"x-tenant", "X-Tenant", "accept"})
	if err != nil || strings.Join(a.Names(), ",") != "X-Tenant,Accept" {
		t.Errorf("CompileHeaders: %v %v", a.Names(), err)
	}
	if a, err := CompileHeaders([]string{}); err != nil || len(a.Names()) != 0 {
		t.Errorf("empty list: %v %v", a.Names(), err)
	}
}

func TestResponseHeaderFilter(t *testing.T) {
	in := http.Header{
		"Set-Cookie":         {"s=1"},
		"Set-Cookie2":        {"s=1"},
		"Connection":         {"X-Listed"},
		"X-Listed":           {"x"},
		"Proxy-Authenticate": {"Basic"},
		"Transfer-Encoding":  {"chunked"},
		"X-Token":            {"FlyV1 fm2_abc"},
		"X-Sent":             {"prefix SENTTOKENBODY0123456789 suffix"},
		"Content-Type":       {"application/json"},
		"Etag":               {`"1"`},
	}
	out := http.Header{}
	f := NewForwarder(Options{})
	n := copyResponseHeader(out, in, func(v string) bool { return f.tokenMaterial([]byte(v), "fm2_SENTTOKENBODY0123456789") })
	if n != 2 || len(out) != 2 || out.Get("Content-Type") != "application/json" || out.Get("Etag") != `"1"` {
		t.Errorf("relayed %v (dropped %d for token material)", out, n)
	}
}

func forward(t *testing.T, f *Forwarder, h http.Handler, base string, rc RouteConfig, method, target string, body string) *httptest.ResponseRecorder {
	t.Helper()
	up := httptest.NewServer(h)
	t.Cleanup(up.Close)
	if base == "" {
		base = up.URL
	} else {
		base = up.URL + base
	}
	tb := mustTable(t, rc)
	u, _ := ParseUpstream(base)
	r := httptest.NewRequest(method, target, strings.NewReader(body))
	w := httptest.NewRecorder()
	f.Forward(w, r, tb.routes[0], u, "FlyV1 fm2_SENT")
	return w
}

func TestForward(t *testing.T) {
	f := NewForwarder(Options{MaxResponseBytes: 1 << 10})
	t.Run("base path, query, body", func(t *testing.T) {
		var got *http.Request
		var gotBody string
		w := forward(t, f, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			got = r
			b, _ := io.ReadAll(r.Body)
			gotBody = string(b)
			w.Write([]byte("ok"))
		}), "/gw/", RouteConfig{Match: "PUT /a/*"}, "PUT", "/a/b%20c?x=1&y=2", "payload")
		if w.Code != 200 || got.URL.Path != "/gw/a/b c" || got.URL.RawQuery != "x=1&y=2" || gotBody != "payload" || got.Header.Get("Authorization") != "FlyV1 fm2_SENT" {
			t.Errorf("upstream saw %s %q %q body %q auth %q", got.Method, got.URL.Path, got.URL.RawQuery, gotBody, got.Header.Get("Authorization"))
		}
	})
	t.Run("redirect relayed, not followed", func(t *testing.T) {
		var n atomic.Int32
		w := forward(t, f, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			n.Add(1)
			http.Redirect(w, r, "/elsewhere", http.StatusFound)
		}), "", RouteConfig{Match: "GET /a"}, "GET", "/a", "")
		if w.Code != 302 || n.Load() != 1 || w.Header().Get("Location") != "/elsewhere" {
			t.Errorf("redirect: %d after %d calls", w.Code, n.Load())
		}
	})
	t.Run("gzip decoded, then checked", func(t *testing.T) {
		w := forward(t, f, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("Accept-Encoding") != "gzip" {
				t.Errorf("Accept-Encoding upstream = %q", r.Header.Get("Accept-Encoding"))
			}
			w.Header().Set("Content-Encoding", "gzip")
			gz := gzip.NewWriter(w)
			gz.Write([]byte("leaked fm2_SENT here"))
			gz.Close()
		}), "", RouteConfig{Match: "GET /a"}, "GET", "/a", "")
		if w.Code != 502 || strings.Contains(w.Body.String(), "fm2_") {
			t.Errorf("compressed token echo: %d %q", w.Code, w.Body.String())
		}
	})
	t.Run("unrequested encoding refused", func(t *testing.T) {
		w := forward(t, f, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Encoding", "br")
			w.Write([]byte("????"))
		}), "", RouteConfig{Match: "GET /a"}, "GET", "/a", "")
		if w.Code != 502 {
			t.Errorf("br reply: %d", w.Code)
		}
	})
	t.Run("size cap", func(t *testing.T) {
		for _, chunked := range []bool{false, true} {
			w := forward(t, f, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if chunked {
					w.(http.Flusher).Flush()
				}
				w.Write([]byte(strings.Repeat("x", 2<<10)))
			}), "", RouteConfig{Match: "GET /a"}, "GET", "/a", "")
			if w.Code != 502 {
				t.Errorf("oversized (chunked=%v): %d", chunked, w.Code)
			}
		}
	})
	t.Run("timeout during body", func(t *testing.T) {
		start := time.Now()
		w := forward(t, f, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Write([]byte("partial"))
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
			case <-time.After(5 * time.Second):
			}
		}), "", RouteConfig{Match: "GET /a", Timeout: 200 * time.Millisecond}, "GET", "/a", "")
		if w.Code != 504 || strings.Contains(w.Body.String(), "partial") || time.Since(start) > 3*time.Second {
			t.Errorf("slow body: %d %q after %v", w.Code, w.Body.String(), time.Since(start))
		}
	})
	t.Run("bad query", func(t *testing.T) {
		r := httptest.NewRequest("GET", "/a", nil)
		r.URL.RawQuery = "x=%zz"
		w := httptest.NewRecorder()
		u, _ := url.Parse("http://127.0.0.1:1")
		res := f.Forward(w, r, mustTable(t, RouteConfig{Match: "GET /a"}).routes[0], u, "FlyV1 fm2_x")
		if w.Code != 400 || res.Outcome != OutcomeBadRequest {
			t.Errorf("bad query: %d %s", w.Code, res.Outcome)
		}
	})
}
