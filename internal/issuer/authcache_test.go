package issuer

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/machinetoken"
	"github.com/wicket-sh/wicket/internal/sockettest"
)

// A cached verification must never let through what a fresh one refuses.
func TestVerifyCache_NeverWidens(t *testing.T) {
	ti := startIssuer(t, shortDir(t), nil)
	spec := devSpec
	spec.SourceAddrs = []string{"127.0.0.1/32", "10.1.0.0/16"}
	m, tok := ti.addMachine(t, spec)
	h := ti.publicHandler()
	call := func(token, remote, path string) int {
		r := httptest.NewRequest("GET", path, nil)
		r.RemoteAddr = remote
		r.Header.Set("Authorization", "FlyV1 "+token)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w.Code
	}
	// Warm the cache from an allowed address.
	if c := call(tok, "127.0.0.1:1000", "/v1/machines/self"); c != 200 {
		t.Fatalf("first call: %d", c)
	}
	if c := call(tok, "127.0.0.1:1000", "/v1/machines/self"); c != 200 {
		t.Fatalf("cached call: %d", c)
	}
	// Same token from another address: verified afresh, refused.
	if c := call(tok, "192.0.2.7:1000", "/v1/machines/self"); c != 401 {
		t.Errorf("other address served from cache: %d", c)
	}
	// A feature the cached entry was not verified for.
	oidcOnly, _ := machinetoken.Attenuate(tok, time.Time{}, time.Now().Add(time.Hour), []machinetoken.Feature{"oidc"})
	if c := call(oidcOnly, "127.0.0.1:1000", "/v1/machines/self"); c != 401 {
		t.Errorf("narrowed token: %d", c)
	}
	// Expiry: a short copy verified now is refused once its window ends.
	short, _ := machinetoken.Restrict(tok, ti.clock.Now(), 30*time.Second, []machinetoken.Feature{"metadata"})
	if c := call(short, "127.0.0.1:1000", "/v1/machines/self"); c != 200 {
		t.Fatalf("short copy: %d", c)
	}
	ti.clock.Advance(40 * time.Second)
	if c := call(short, "127.0.0.1:1000", "/v1/machines/self"); c != 401 {
		t.Errorf("expired copy served from cache: %d", c)
	}
	// Revocation applies at once to a cached token.
	if c := call(tok, "127.0.0.1:1000", "/v1/machines/self"); c != 200 {
		t.Fatalf("before revoke: %d", c)
	}
	var minted struct {
		TokenID string `json:"token_id"`
	}
	r := sockettest.Do(ti.adminSock, "POST", "/v1/machines/"+m.MachineID+"/tokens", `{"ttl":"1h"}`, nil)
	json.Unmarshal([]byte(r.Body), &minted)
	var second struct {
		Token string `json:"token"`
	}
	json.Unmarshal([]byte(r.Body), &second)
	if c := call(second.Token, "127.0.0.1:1000", "/v1/machines/self"); c != 200 {
		t.Fatalf("second token: %d", c)
	}
	if r := sockettest.Do(ti.adminSock, "POST", "/v1/revocations", `{"token_id":"`+minted.TokenID+`"}`, nil); r.Status != 200 {
		t.Fatal(r)
	}
	if c := call(second.Token, "127.0.0.1:1000", "/v1/machines/self"); c != 401 {
		t.Errorf("revoked token served from cache: %d", c)
	}
	// Machine removal applies at once too.
	if err := ti.RemoveMachine(context.Background(), m.MachineID); err != nil {
		t.Fatal(err)
	}
	if c := call(tok, "127.0.0.1:1000", "/v1/machines/self"); c != 401 {
		t.Errorf("removed machine served from cache: %d", c)
	}
	if logs := ti.logs.String(); strings.Contains(logs, tok[4:40]) {
		t.Error("token in log")
	}
	_ = http.StatusOK
}

// The gateway forwards paths to the platform API: segments an upstream
// might read as ".." and percent-encoded separators are refused before
// anything is forwarded.
func TestGateway_RefusesAmbiguousPaths(t *testing.T) {
	forwarded := 0
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { forwarded++ }))
	defer up.Close()
	ti := startIssuer(t, shortDir(t), func(c *config.Issuer) { c.Gateway.Upstream = up.URL })
	_, tok := ti.addMachine(t, devSpec)
	h := ti.publicHandler()
	for _, raw := range []string{
		"/v1/apps/dev-app/machines/..;/..;/other-app/x",
		"/v1/apps/dev-app/machines/..%5c..%5cother-app",
		"/v1/apps/dev-app/machines/%2e%2e/x",
		"/v1/apps/dev-app/a%2fb",
		"/v1/apps/dev-app/x;param=1",
	} {
		r := httptest.NewRequest("GET", "http://issuer"+raw, nil)
		r.RemoteAddr = "127.0.0.1:1"
		r.Header.Set("Authorization", "FlyV1 "+tok)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != 400 {
			t.Errorf("%s: %d, want 400", raw, w.Code)
		}
	}
	if forwarded != 0 {
		t.Errorf("%d ambiguous requests reached the upstream", forwarded)
	}
}

// A cached verification never covers another kind of SVID request: the
// same copy asking for the same ID as an X.509- and a JWT-SVID, or for
// the bundle, has three cache keys.
func TestVerifyCache_SVIDKindNotShared(t *testing.T) {
	q := machinetoken.Request{Feature: machinetoken.FeatureSVID, SPIFFEID: "spiffe://td.test/app/web/workload/a"}
	keys := map[[32]byte]machinetoken.SVIDKind{}
	for _, k := range []machinetoken.SVIDKind{machinetoken.SVIDBundle, machinetoken.SVIDX509, machinetoken.SVIDJWT, ""} {
		q.SVIDKind = k
		ck := verifyKey("fm2_token", q)
		if other, dup := keys[ck]; dup {
			t.Errorf("svid kinds %q and %q share a cache key", other, k)
		}
		keys[ck] = k
	}
}
