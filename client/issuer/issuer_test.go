package issuer_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/client/issuer"
	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/e2e"
	"github.com/wicket-sh/wicket/internal/sockettest"
)

func TestMain(m *testing.M) { sockettest.Main(m) }

// remoteIssuer starts a real issuer with its remote admin API and mints a
// root admin token with scope req.
func remoteIssuer(t *testing.T, req api.AdminTokenRequest) (*e2e.Issuer, string, string) {
	t.Helper()
	ti := e2e.StartIssuerWith(t, func(c *config.Issuer) { c.RemoteAdmin.Listen = "127.0.0.1:0" })
	tok, err := ti.MintAdminToken(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	return ti, "http://" + ti.RemoteAdminAddr().String(), tok.Token
}

func TestClient_Lifecycle(t *testing.T) {
	_, u, tok := remoteIssuer(t, api.AdminTokenRequest{Label: "host-1", Orgs: []string{"acme"}, Regions: []string{"fra"},
		Ops: []string{api.OpMachineAdd, api.OpMachineGet, api.OpMachineUpdate, api.OpMachineRemove, api.OpTokenMint, api.OpTokenRevoke}})
	tokFile := filepath.Join(t.TempDir(), "admin-token")
	os.WriteFile(tokFile, []byte(tok+"\n"), 0o600)
	c, err := issuer.New(issuer.Config{URL: u, TokenFile: tokFile})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	st, err := c.Status(ctx)
	if err != nil || strings.Join(st.Scope.Orgs, ",") != "acme" {
		t.Fatalf("Status = %+v, %v", st, err)
	}
	added, err := c.AddMachine(ctx, api.MachineSpec{Name: "web-1", Org: "acme", App: "web", Region: "fra"})
	if err != nil {
		t.Fatal(err)
	}
	id := added.Machine.MachineID
	if m, err := c.GetMachine(ctx, "acme/web/web-1"); err != nil || m.MachineID != id {
		t.Fatalf("GetMachine by name = %+v, %v", m, err)
	}
	img := "img:2"
	if m, err := c.UpdateMachine(ctx, id, api.MachineUpdate{Image: &img}); err != nil || m.Image != img {
		t.Fatalf("UpdateMachine = %+v, %v", m, err)
	}
	mt, err := c.MintToken(ctx, id, 2*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if rv, err := c.RevokeToken(ctx, mt.Token, "rotated"); err != nil || rv.TokenID != mt.TokenID {
		t.Fatalf("RevokeToken = %+v, %v", rv, err)
	}
	if ms, err := c.ListMachines(ctx); err != nil || len(ms) != 1 {
		t.Fatalf("ListMachines = %v, %v", ms, err)
	}
	// Out of scope: a stable code, not a string to parse.
	_, err = c.AddMachine(ctx, api.MachineSpec{Name: "web-2", Org: "acme", App: "web", Region: "ord"})
	var e *issuer.Error
	if !errors.As(err, &e) || e.Status != 403 || e.Code != api.CodeForbidden || issuer.Code(err) != api.CodeForbidden {
		t.Fatalf("out of scope: %v, want a 403 forbidden *Error", err)
	}
	if err := c.RemoveMachine(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetMachine(ctx, id); issuer.Code(err) != api.CodeNotFound {
		t.Fatalf("after remove: %v, want not_found", err)
	}
	// The token file is read on every call: an emptied file fails, and
	// the error does not contain the token.
	os.WriteFile(tokFile, []byte("fm2_AAAA"), 0o600)
	if _, err := c.Status(ctx); issuer.Code(err) != api.CodeUnauthorized || strings.Contains(err.Error(), tok) {
		t.Fatalf("with a replaced token file: %v, want unauthorized", err)
	}
}

// TestClient_RetriesOn503: 503s (the issuer's state store out of reach)
// are retried with backoff until the issuer answers; other errors are
// not. The stand-in in front of the real issuer answers 503 twice and
// checks that each retry carries the same request.
func TestClient_RetriesOn503(t *testing.T) {
	_, u, tok := remoteIssuer(t, api.AdminTokenRequest{Label: "retry"})
	target, _ := url.Parse(u)
	proxy := httputil.NewSingleHostReverseProxy(target)
	var calls atomic.Int32
	var bodies []string
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		bodies = append(bodies, r.Method+" "+r.URL.Path+" "+string(b))
		if r.Header.Get("Authorization") != "Bearer "+tok {
			t.Errorf("attempt %d without the admin token", calls.Load())
		}
		if calls.Add(1) <= 2 {
			w.Header().Set("Retry-After", "1")
			http.Error(w, `{"error":"service unavailable","code":"upstream_unavailable"}`, http.StatusServiceUnavailable)
			return
		}
		r.Body = io.NopCloser(strings.NewReader(string(b)))
		proxy.ServeHTTP(w, r)
	}))
	defer front.Close()
	c, err := issuer.New(issuer.Config{URL: front.URL, Token: tok, Backoff: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	added, err := c.AddMachine(context.Background(), api.MachineSpec{Name: "m1", Org: "acme", App: "web"})
	if err != nil {
		t.Fatalf("AddMachine through two 503s: %v", err)
	}
	if calls.Load() != 3 || bodies[0] != bodies[2] || added.Token == nil {
		t.Fatalf("%d attempts (%q), want 3 identical ones", calls.Load(), bodies)
	}
	// A 4xx is final.
	calls.Store(10)
	if _, err := c.AddMachine(context.Background(), api.MachineSpec{Name: "m1", Org: "acme", App: "web"}); issuer.Code(err) != api.CodeBadRequest || calls.Load() != 11 {
		t.Fatalf("duplicate: %v after %d attempts, want one bad_request", err, calls.Load()-10)
	}
	// Out of retries: the 503 with its code.
	calls.Store(0)
	c2, _ := issuer.New(issuer.Config{URL: front.URL, Token: tok, Retries: 1, Backoff: time.Millisecond})
	if _, err := c2.Status(context.Background()); issuer.Code(err) != api.CodeUpstreamUnavailable {
		t.Fatalf("out of retries: %v", err)
	}
}

func TestClient_RefusesPlaintextAndRedirects(t *testing.T) {
	if _, err := issuer.New(issuer.Config{URL: "http://issuer.example:8651", Token: "x"}); err == nil {
		t.Error("plain http beyond loopback accepted")
	}
	if _, err := issuer.New(issuer.Config{URL: "http://issuer.example:8651", Token: "x", AllowPlaintext: true}); err != nil {
		t.Errorf("AllowPlaintext: %v", err)
	}
	if _, err := issuer.New(issuer.Config{URL: "https://issuer.example"}); err == nil {
		t.Error("no token accepted")
	}
	// A redirect is not followed: the token stays with the issuer named.
	var leaked atomic.Bool
	elsewhere := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		leaked.Store(r.Header.Get("Authorization") != "")
	}))
	defer elsewhere.Close()
	redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, elsewhere.URL+r.URL.Path, http.StatusTemporaryRedirect)
	}))
	defer redirector.Close()
	c, _ := issuer.New(issuer.Config{URL: redirector.URL, Token: "fm2_secret"})
	if _, err := c.Status(context.Background()); err == nil || leaked.Load() {
		t.Errorf("redirect: err %v, token sent elsewhere %v", err, leaked.Load())
	}
}
