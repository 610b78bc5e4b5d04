package issuer

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/machinetoken"
)

// agentCopy attenuates tok the way the agent does for one OIDC request.
func agentCopy(t *testing.T, tok string, now time.Time, ttl time.Duration, aud ...string) string {
	t.Helper()
	c, err := machinetoken.RestrictScope(tok, now, ttl, machinetoken.Scope{
		Features: []machinetoken.Feature{machinetoken.FeatureOIDC}, Audiences: aud})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func expiresAt(t *testing.T, r resp) time.Time {
	t.Helper()
	if r.status != 200 {
		t.Fatalf("token: %d %s", r.status, r.body)
	}
	var out struct {
		ExpiresAt time.Time `json:"expires_at"`
	}
	if err := json.Unmarshal([]byte(r.body), &out); err != nil {
		t.Fatal(err)
	}
	return out.ExpiresAt
}

// A JWT minted with an attenuated copy never outlives the copy; a root
// token still gets what it asks for, up to max_ttl.
func TestOIDCToken_CopyCannotOutliveItself(t *testing.T) {
	ti := startIssuer(t, shortDir(t), nil)
	_, tok := ti.addMachine(t, devSpec)
	now := ti.clock.Now()
	short := agentCopy(t, tok, now, 2*time.Minute, "sts.amazonaws.com")
	end := now.Add(2 * time.Minute).Truncate(time.Second)
	for _, body := range []string{`{"aud":"sts.amazonaws.com","ttl":"1h"}`, `{"aud":"sts.amazonaws.com"}`} {
		if exp := expiresAt(t, ti.call(t, "POST", "/v1/tokens/oidc", short, body)); exp.After(end) {
			t.Errorf("%s: copy valid until %s bought a JWT expiring %s", body, end.Format(time.RFC3339), exp.Format(time.RFC3339))
		}
	}
	// A copy longer than the JWT asked for changes nothing.
	long := agentCopy(t, tok, now, 20*time.Minute, "sts.amazonaws.com")
	if exp := expiresAt(t, ti.call(t, "POST", "/v1/tokens/oidc", long, `{"aud":"sts.amazonaws.com","ttl":"5m"}`)); exp.Sub(now) < 4*time.Minute || exp.Sub(now) > 5*time.Minute+time.Second {
		t.Errorf("long copy, ttl 5m: expires in %s", exp.Sub(now))
	}
	// The root token (tests, wicket dev, the CLI) is bounded by max_ttl only.
	if exp := expiresAt(t, ti.call(t, "POST", "/v1/tokens/oidc", tok, `{"aud":"sts.amazonaws.com","ttl":"1h"}`)); exp.Sub(now) < 59*time.Minute {
		t.Errorf("root token, ttl 1h: expires in %s", exp.Sub(now))
	}
	if r := ti.call(t, "POST", "/v1/tokens/oidc", tok, `{"ttl":"2h"}`); r.status != 400 {
		t.Errorf("root token, ttl beyond max_ttl: %d", r.status)
	}
}

// A copy bound to an audience gets JWTs for that audience only; the
// refusal is the same 401 as any other and its reason is logged without
// the token.
func TestOIDCToken_CopyAudienceBound(t *testing.T) {
	ti := startIssuer(t, shortDir(t), nil)
	_, tok := ti.addMachine(t, devSpec)
	now := ti.clock.Now()
	sts := agentCopy(t, tok, now, time.Minute, "sts.amazonaws.com")
	def := agentCopy(t, tok, now, time.Minute, machinetoken.DefaultAudience)
	unauth := ti.call(t, "POST", "/v1/tokens/oidc", "", "").body
	for _, tc := range []struct {
		name, copy, body string
		want             int
	}{
		{"its audience", sts, `{"aud":"sts.amazonaws.com"}`, 200},
		{"another audience", sts, `{"aud":"https://attacker.example"}`, 401},
		{"its audience plus another", sts, `{"aud":["sts.amazonaws.com","https://attacker.example"]}`, 401},
		{"the default, not bound to it", sts, ``, 401},
		{"default-bound, default", def, ``, 200},
		{"default-bound, default as {}", def, `{}`, 200},
		{"default-bound, another audience", def, `{"aud":"https://attacker.example"}`, 401},
		{"default-bound, bad body", def, `not json`, 400},
		{"bound, bad body", sts, `not json`, 401},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := ti.call(t, "POST", "/v1/tokens/oidc", tc.copy, tc.body)
			if r.status != tc.want {
				t.Fatalf("status %d, want %d", r.status, tc.want)
			}
			if r.status == 401 && r.body != unauth {
				t.Errorf("401 body %q differs from the generic %q", r.body, unauth)
			}
		})
	}
	// Two audience caveats intersect.
	both, _ := machinetoken.AttenuateScope(agentCopy(t, tok, now, time.Minute, "a", "b"), time.Time{}, time.Time{}, machinetoken.Scope{Audiences: []string{"b", "c"}})
	for aud, want := range map[string]int{"a": 401, "b": 200, "c": 401} {
		if r := ti.call(t, "POST", "/v1/tokens/oidc", both, `{"aud":"`+aud+`"}`); r.status != want {
			t.Errorf("intersection, aud %s: %d, want %d", aud, r.status, want)
		}
	}
	logs := ti.logs.String()
	if !strings.Contains(logs, "audience not granted") {
		t.Error("refusal reason not logged")
	}
	if strings.Contains(logs, strings.TrimPrefix(sts, "fm2_")[:40]) || strings.Contains(logs, tok[len(tok)-24:]) {
		t.Error("token in the log")
	}
}

// A cached verification for one audience never answers for another.
func TestVerifyCache_AudienceNotShared(t *testing.T) {
	ti := startIssuer(t, shortDir(t), nil)
	_, tok := ti.addMachine(t, devSpec)
	sts := agentCopy(t, tok, ti.clock.Now(), time.Minute, "sts.amazonaws.com")
	h := ti.publicHandler()
	call := func(body string) int {
		r := httptest.NewRequest("POST", "/v1/tokens/oidc", strings.NewReader(body))
		r.RemoteAddr = "127.0.0.1:1000"
		r.Header.Set("Authorization", "FlyV1 "+sts)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w.Code
	}
	for i := 0; i < 2; i++ { // the second is served from the cache
		if c := call(`{"aud":"sts.amazonaws.com"}`); c != 200 {
			t.Fatalf("own audience, call %d: %d", i, c)
		}
	}
	if c := call(`{"aud":"https://attacker.example"}`); c != 401 {
		t.Errorf("other audience after a cached success: %d", c)
	}
	if c := call(``); c != 401 {
		t.Errorf("default audience after a cached success: %d", c)
	}
}

// A copy the agent made for an external upstream is refused on every
// endpoint, whatever features it carries.
func TestExternalCopy_RefusedOnEveryEndpoint(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) }))
	defer up.Close()
	ti := startIssuer(t, shortDir(t), func(c *config.Issuer) { c.Gateway.Upstream = up.URL })
	_, tok := ti.addMachine(t, devSpec)
	ext, err := machinetoken.RestrictScope(tok, ti.clock.Now(), time.Minute, machinetoken.Scope{External: "https://api.example"})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ method, path, body string }{
		{"GET", "/v1/machines/self", ""},
		{"POST", "/v1/tokens/oidc", ""},
		{"POST", "/v1/tokens/oidc", `{"aud":"sts.amazonaws.com"}`},
		{"GET", "/v1/apps/dev-app/machines", ""},
	} {
		if r := ti.call(t, c.method, c.path, ext, c.body); r.status != 401 {
			t.Errorf("%s %s: %d, want 401", c.method, c.path, r.status)
		}
	}
	// The same copy without the caveat passes the gateway: it is the reason.
	plain, _ := machinetoken.Restrict(tok, ti.clock.Now(), time.Minute, nil)
	if r := ti.call(t, "GET", "/v1/apps/dev-app/machines", plain, ""); r.status != 200 {
		t.Errorf("plain copy on the gateway: %d", r.status)
	}
	if !strings.Contains(ti.logs.String(), "copy made for an external upstream") {
		t.Error("refusal reason not logged")
	}
}
