package issuer

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/wicket-sh/wicket/internal/config"
)

// gatewayUpstream is a platform API stand-in recording the last request.
func gatewayUpstream(t *testing.T) (*httptest.Server, *atomic.Pointer[http.Request]) {
	t.Helper()
	var got atomic.Pointer[http.Request]
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.Store(r.Clone(context.Background()))
		io.WriteString(w, "ok")
	}))
	t.Cleanup(up.Close)
	return up, &got
}

// gatewayCall sends one gateway request with header names exactly as
// written and returns what the upstream received.
func gatewayCall(t *testing.T, ti *testIssuer, got *atomic.Pointer[http.Request], tok string, hdr http.Header) *http.Request {
	t.Helper()
	got.Store(nil)
	req, _ := http.NewRequest("GET", ti.url+"/v1/apps/dev-app/machines", nil)
	for k, vs := range hdr {
		req.Header[k] = vs
	}
	req.Header.Set("Authorization", "FlyV1 "+tok)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	r := got.Load()
	if res.StatusCode != 200 || r == nil {
		t.Fatalf("gateway: %d, forwarded %v", res.StatusCode, r != nil)
	}
	return r
}

// TestGateway_UnderscoreAndOverrideHeadersDropped: the platform API trusts
// the gateway's X-Wicket-* headers, so nothing a machine sends may pass
// for them (X_Wicket_Machine_Id is X-Wicket-Machine-Id to a WSGI/CGI
// server), nor change the method, path or client address the upstream
// acts on.
func TestGateway_UnderscoreAndOverrideHeadersDropped(t *testing.T) {
	up, got := gatewayUpstream(t)
	ti := startIssuer(t, shortDir(t), func(c *config.Issuer) { c.Gateway.Upstream = up.URL })
	m, tok := ti.addMachine(t, devSpec)
	override := []string{"X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override", "X-Original-URL",
		"X-Rewrite-URL", "X-Real-IP", "True-Client-IP", "Via", "X-Client-IP", "X-Original-Method"}
	sent := http.Header{
		"X_Wicket_Machine_Id": {"m-forged"},
		"X-Wicket_App":        {"forged-app"},
		"x_wicket_org":        {"forged-org"},
		"X-Wicket-Extra":      {"forged"},
		"Some_Header":         {"x"},
		"Accept":              {"application/json"},
	}
	for _, h := range override {
		sent.Set(h, "DELETE")
	}
	r := gatewayCall(t, ti, got, tok, sent)
	want := map[string]string{"x-wicket-machine-id": m.MachineID, "x-wicket-app": "dev-app", "x-wicket-org": "dev"}
	for k, vs := range r.Header {
		folded := strings.ReplaceAll(strings.ToLower(k), "_", "-")
		switch {
		case strings.Contains(k, "_"):
			t.Errorf("upstream received %s: %q", k, vs)
		case strings.HasPrefix(folded, "x-wicket"):
			if len(vs) != 1 || vs[0] != want[folded] {
				t.Errorf("upstream received %s: %q, want only the gateway's %q", k, vs, want[folded])
			}
		}
	}
	for _, h := range override {
		if v := r.Header.Get(h); v != "" {
			t.Errorf("upstream received %s: %q", h, v)
		}
	}
	if r.Method != "GET" || r.Header.Get("Accept") != "application/json" {
		t.Errorf("upstream saw %s with headers %v", r.Method, r.Header)
	}
}

// TestGateway_HeaderAllowlist: the gateway forwards only
// gateway.forward_headers (by default proxy.DefaultForwardHeaders), plus
// the identity headers it sets itself.
func TestGateway_HeaderAllowlist(t *testing.T) {
	sent := http.Header{
		"Accept":       {"application/json"},
		"If-Match":     {`"e1"`},
		"X-Tenant":     {"t1"},
		"X-Custom":     {"c"},
		"Content-Type": {"text/plain"},
	}
	forwarded := func(r *http.Request) []string {
		var out []string
		for _, k := range []string{"Accept", "If-Match", "X-Tenant", "X-Custom", "Content-Type"} {
			if r.Header.Get(k) == sent.Get(k) {
				out = append(out, k)
			}
		}
		return out
	}
	for _, tc := range []struct {
		name  string
		allow []string
		want  string
	}{
		{"default", nil, "Accept,If-Match,Content-Type"},
		{"configured", []string{"x-tenant", "Accept"}, "Accept,X-Tenant"},
		{"none", []string{}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up, got := gatewayUpstream(t)
			ti := startIssuer(t, shortDir(t), func(c *config.Issuer) {
				c.Gateway.Upstream = up.URL
				c.Gateway.ForwardHeaders = tc.allow
			})
			m, tok := ti.addMachine(t, devSpec)
			r := gatewayCall(t, ti, got, tok, sent)
			if g := strings.Join(forwarded(r), ","); g != tc.want {
				t.Errorf("forwarded %q, want %q (upstream got %v)", g, tc.want, r.Header)
			}
			if r.Header.Get("X-Wicket-Machine-Id") != m.MachineID || r.Header.Get("X-Wicket-App") != "dev-app" {
				t.Errorf("identity headers missing: %v", r.Header)
			}
		})
	}
}

// TestGateway_CallerTrailersDropped: trailers are headers that arrive
// after the body; a machine must not be able to send X-Wicket-* or an
// override that way either.
func TestGateway_CallerTrailersDropped(t *testing.T) {
	var got atomic.Pointer[http.Header]
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body) // trailers are known once the body is read
		tr := r.Trailer.Clone()
		if tr == nil {
			tr = http.Header{}
		}
		got.Store(&tr)
	}))
	t.Cleanup(up.Close)
	ti := startIssuer(t, shortDir(t), func(c *config.Issuer) { c.Gateway.Upstream = up.URL })
	_, tok := ti.addMachine(t, devSpec)

	pr, pw := io.Pipe()
	req, _ := http.NewRequest("POST", ti.url+"/v1/apps/dev-app/machines", pr)
	req.Header.Set("Authorization", "FlyV1 "+tok)
	req.Trailer = http.Header{"X-Wicket-Machine-Id": nil, "X-Http-Method-Override": nil}
	go func() {
		io.WriteString(pw, "body")
		req.Trailer.Set("X-Wicket-Machine-Id", "m-forged")
		req.Trailer.Set("X-Http-Method-Override", "DELETE")
		pw.Close()
	}()
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	tr := got.Load()
	if res.StatusCode != 200 || tr == nil {
		t.Fatalf("gateway: %d, forwarded %v", res.StatusCode, tr != nil)
	}
	if len(*tr) != 0 {
		t.Errorf("upstream received the caller's trailers: %v", *tr)
	}
}
