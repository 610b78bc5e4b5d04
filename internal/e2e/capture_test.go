package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"github.com/superfly/macaroon"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/client"
	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/sockettest"
)

// capture is an upstream that logs what the agent sends, the adversary
// SECURITY.md names "someone who captures a request upstream": it keeps
// every Authorization header it sees, then forwards the request to next
// (or answers 200 itself when next is empty).
type capture struct {
	URL  string
	mu   sync.Mutex
	seen map[string][]string // path → Authorization headers
}

func newCapture(t *testing.T, next string) *capture {
	t.Helper()
	c := &capture{seen: map[string][]string{}}
	var fwd http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	if next != "" {
		u, err := url.Parse(next)
		if err != nil {
			t.Fatal(err)
		}
		rp := httputil.NewSingleHostReverseProxy(u)
		rp.ErrorLog = log.New(io.Discard, "", 0) // the agent's long poll is cut at shutdown
		fwd = rp
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.mu.Lock()
		c.seen[r.URL.Path] = append(c.seen[r.URL.Path], r.Header.Get("Authorization"))
		c.mu.Unlock()
		fwd.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	c.URL = srv.URL
	return c
}

// last returns the machine token copy most recently sent for path.
func (c *capture) last(t *testing.T, path string) string {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	hs := c.seen[path]
	if len(hs) == 0 {
		t.Fatalf("nothing captured for %s", path)
	}
	tok, ok := strings.CutPrefix(hs[len(hs)-1], "FlyV1 ")
	if !ok {
		t.Fatalf("captured Authorization for %s is not a FlyV1 token", path)
	}
	return tok
}

// notAfter reads a copy's earliest validity-window end without the key,
// as anyone holding it can.
func notAfter(t *testing.T, tok string) time.Time {
	t.Helper()
	raw, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(tok, "fm2_"))
	if err != nil {
		t.Fatal("captured copy is not base64")
	}
	m, err := macaroon.Decode(raw)
	if err != nil {
		t.Fatal("captured copy does not decode")
	}
	var end time.Time
	for _, c := range m.UnsafeCaveats.Caveats {
		if w, ok := c.(*macaroon.ValidityWindow); ok {
			if na := time.Unix(w.NotAfter, 0); end.IsZero() || na.Before(end) {
				end = na
			}
		}
	}
	if end.IsZero() {
		t.Fatal("captured copy has no validity window")
	}
	return end
}

// replay sends a captured copy straight to the issuer, as its captor would.
func replay(t *testing.T, method, url, tok, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	req.Header.Set("Authorization", "FlyV1 "+tok)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(res.Body, 1<<20))
	return res.StatusCode, string(b)
}

// oidcVia asks the agent for a token for aud (the default when empty), so
// its copy passes through the capture in front of the issuer.
func oidcVia(t *testing.T, ag *Agent, aud string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, _, err := client.New(ag.APISocket).OIDCToken(ctx, aud); err != nil {
		t.Fatalf("agent oidc token (aud %q): %v", aud, err)
	}
}

// A copy captured on its way to the issuer, replayed with a long ttl,
// buys no JWT that outlives the copy itself.
func TestCapturedCopy_CannotOutliveItself(t *testing.T) {
	ti := StartIssuer(t)
	mt := ti.MachineToken(t, "dev", "dev-app", "web-1")
	cp := newCapture(t, ti.URL)
	ag := StartAgent(t, cp.URL, mt, "")
	oidcVia(t, ag, "sts.amazonaws.com")
	copyTok := cp.last(t, "/v1/tokens/oidc")
	end := notAfter(t, copyTok)

	status, body := replay(t, "POST", ti.URL+"/v1/tokens/oidc", copyTok, `{"aud":"sts.amazonaws.com","ttl":"1h"}`)
	if status != 200 {
		return // refused outright: nothing bought
	}
	var out struct {
		ExpiresAt time.Time `json:"expires_at"`
	}
	if err := json.Unmarshal([]byte(body), &out); err != nil {
		t.Fatalf("replay reply: %v", err)
	}
	if out.ExpiresAt.After(end) {
		t.Errorf("replayed copy (valid until %s) bought a JWT expiring %s", end.UTC().Format(time.RFC3339), out.ExpiresAt.UTC().Format(time.RFC3339))
	}
}

// A copy captured on its way to the issuer mints JWTs only for the
// audience the agent asked for, the default audience included.
func TestCapturedCopy_AudienceBound(t *testing.T) {
	ti := StartIssuer(t)
	mt := ti.MachineToken(t, "dev", "dev-app", "web-1")
	cp := newCapture(t, ti.URL)
	ag := StartAgent(t, cp.URL, mt, "")
	for _, tc := range []struct{ name, aud, same string }{
		{"explicit audience", "sts.amazonaws.com", `{"aud":"sts.amazonaws.com"}`},
		{"default audience", "", `{}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			oidcVia(t, ag, tc.aud)
			copyTok := cp.last(t, "/v1/tokens/oidc")
			for _, body := range []string{`{"aud":"https://attacker.example"}`, `{"aud":["sts.amazonaws.com","https://attacker.example"]}`, `{"aud":"` + ti.URL + `/other"}`} {
				if status, _ := replay(t, "POST", ti.URL+"/v1/tokens/oidc", copyTok, body); status != 401 {
					t.Errorf("replay with %s: %d, want 401", body, status)
				}
			}
			// The copy still does what the agent made it for.
			if status, _ := replay(t, "POST", ti.URL+"/v1/tokens/oidc", copyTok, tc.same); status != 200 {
				t.Errorf("replay with the agent's own audience: %d, want 200", status)
			}
		})
	}
}

// A copy sent along a proxy route to an upstream that is not the issuer is
// refused by the issuer on every endpoint, so reflecting it is worthless.
func TestExternalUpstreamCopy_RefusedByIssuer(t *testing.T) {
	gw := newCapture(t, "") // the operator's platform API behind the gateway
	ti := StartIssuerWith(t, func(c *config.Issuer) { c.Gateway.Upstream = gw.URL })
	mt := ti.MachineToken(t, "dev", "dev-app", "web-1")
	ext := newCapture(t, "")
	ag := StartAgent(t, ti.URL, mt, `
[[proxy.route]]
match = "GET /v1/apps/{app}/things"
upstream = "`+ext.URL+`"
features = ["metadata", "proxy"]
[[proxy.route]]
match = "GET /v1/apps/{app}/gateway"
`)
	get := func(path string) sockettest.Result {
		t.Helper()
		var r sockettest.Result
		for i := 0; i < 200; i++ { // {app} is known once the first metadata fetch is in
			if r = sockettest.Do(ag.APISocket, "GET", path, "", nil); r.Status != 503 {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		return r
	}
	if r := get("/v1/apps/dev-app/things"); r.Status != 200 {
		t.Fatalf("external route: %d %s", r.Status, r.Body)
	}
	copyTok := ext.last(t, "/v1/apps/dev-app/things")
	for _, c := range []struct{ method, path, body string }{
		{"GET", "/v1/machines/self", ""},
		{"POST", "/v1/tokens/oidc", `{"aud":"https://attacker.example"}`},
		{"POST", "/v1/tokens/oidc", ""},
		{"GET", "/v1/apps/dev-app/things", ""},
	} {
		if status, _ := replay(t, c.method, ti.URL+c.path, copyTok, c.body); status != 401 {
			t.Errorf("reflected copy on %s %s: %d, want 401", c.method, c.path, status)
		}
	}
	// A route to the issuer's own gateway still gets a copy it accepts.
	if r := get("/v1/apps/dev-app/gateway"); r.Status != 200 {
		t.Errorf("gateway route: %d %s", r.Status, r.Body)
	}
}

// The copies the agent really sends for SPIFFE, captured on their way to
// the issuer, are each bound to the one kind of request they were made
// for: the bundle read's copy buys no SVID for any ID, the X.509-SVID's
// no JWT-SVID and the JWT-SVID's no X.509-SVID; each still buys what the
// agent asked for.
func TestCapturedSVIDCopies_BoundToTheirKind(t *testing.T) {
	ti := StartIssuer(t)
	mt := ti.MachineToken(t, "dev", "dev-app", "web-1")
	cp := newCapture(t, ti.URL)
	sock := filepath.Join(ShortDir(t), "spiffe.sock")
	StartAgent(t, cp.URL, mt, fmt.Sprintf("[spiffe]\nenabled = true\nsocket_path = %q\n", sock))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+sock))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	svid, err := c.FetchX509SVID(ctx)
	if err != nil {
		t.Fatalf("FetchX509SVID: %v", err)
	}
	id := svid.ID.String()
	if _, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "db"}); err != nil {
		t.Fatalf("FetchJWTSVID: %v", err)
	}
	bundleCopy, x509Copy, jwtCopy := cp.last(t, "/v1/svids/bundle"), cp.last(t, "/v1/svids/x509"), cp.last(t, "/v1/svids/jwt")
	other := "spiffe://dev.wicket.internal/app/dev-app/workload/other"
	csr := func(id string) string {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		u, _ := url.Parse(id)
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(api.X509SVIDRequest{CSR: der})
		return string(b)
	}
	jwt := func(id, aud string) string { return `{"spiffe_id":"` + id + `","aud":["` + aud + `"]}` }
	for _, tc := range []struct{ name, method, path, tok, body string }{
		{"bundle copy, x509 svid of the machine", "POST", "/v1/svids/x509", bundleCopy, csr(id)},
		{"bundle copy, x509 svid of a workload", "POST", "/v1/svids/x509", bundleCopy, csr(other)},
		{"bundle copy, jwt svid of the machine", "POST", "/v1/svids/jwt", bundleCopy, jwt(id, "db")},
		{"bundle copy, jwt svid of a workload", "POST", "/v1/svids/jwt", bundleCopy, jwt(other, "db")},
		{"x509 copy, jwt svid of its id", "POST", "/v1/svids/jwt", x509Copy, jwt(id, "db")},
		{"x509 copy, jwt svid of its id, another aud", "POST", "/v1/svids/jwt", x509Copy, jwt(id, "https://attacker.example")},
		{"x509 copy, bundle read", "GET", "/v1/svids/bundle", x509Copy, ""},
		{"jwt copy, x509 svid of its id", "POST", "/v1/svids/x509", jwtCopy, csr(id)},
		{"jwt copy, bundle read", "GET", "/v1/svids/bundle", jwtCopy, ""},
	} {
		if status, body := replay(t, tc.method, ti.URL+tc.path, tc.tok, tc.body); status != 401 {
			t.Errorf("%s: %d %s, want 401", tc.name, status, body)
		}
	}
	// What each copy was made for, it still buys.
	for _, tc := range []struct{ name, method, path, tok, body string }{
		{"bundle copy, bundle read", "GET", "/v1/svids/bundle", bundleCopy, ""},
		{"x509 copy, x509 svid of its id", "POST", "/v1/svids/x509", x509Copy, csr(id)},
		{"jwt copy, jwt svid of its id and aud", "POST", "/v1/svids/jwt", jwtCopy, jwt(id, "db")},
	} {
		if status, body := replay(t, tc.method, ti.URL+tc.path, tc.tok, tc.body); status != 200 {
			t.Errorf("%s: %d %s, want 200", tc.name, status, body)
		}
	}
}
