package issuer

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gooidc "github.com/coreos/go-oidc/v3/oidc"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/machinetoken"
	"github.com/wicket-sh/wicket/internal/oidc"
	"github.com/wicket-sh/wicket/internal/sockettest"
	"github.com/wicket-sh/wicket/internal/wait"
)

func TestMain(m *testing.M) { sockettest.Main(m) }

// clock is a test clock that starts at the real time and can be moved.
type clock struct{ off atomic.Int64 }

func (c *clock) Now() time.Time          { return time.Now().Add(time.Duration(c.off.Load())) }
func (c *clock) Advance(d time.Duration) { c.off.Add(int64(d)) }

type testIssuer struct {
	*Issuer
	url, dir, adminSock string
	logs                *sockettest.Buffer
	clock               *clock
	stop                func()
}

func issuerConfig(dir string, extra func(*config.Issuer)) config.IssuerOverride {
	return func(c *config.Issuer) {
		c.State.Dir = filepath.Join(dir, "state")
		c.Admin.Path = filepath.Join(dir, "admin.sock")
		c.OIDC.Prepublish = config.Duration{Duration: 10 * time.Minute}
		c.OIDC.JWKSMaxAge = config.Duration{Duration: time.Minute}
		if extra != nil {
			extra(c)
		}
	}
}

// startIssuer initializes state in dir (if new) and runs an issuer on a
// loopback port until the test ends or stop is called.
func startIssuer(t *testing.T, dir string, extra func(*config.Issuer)) *testIssuer {
	t.Helper()
	return startIssuerWith(t, dir, extra, nil)
}

// startIssuerWith is startIssuer with opt adjusting the issuer's Options.
func startIssuerWith(t *testing.T, dir string, extra func(*config.Issuer), opt func(*Options)) *testIssuer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ln.Addr().String()
	ov := []config.IssuerOverride{issuerConfig(dir, extra), func(c *config.Issuer) {
		c.Server.PublicURL, c.Server.Listen = url, ln.Addr().String()
	}}
	logs := &sockettest.Buffer{}
	clk := &clock{}
	opts := Options{
		Overrides: ov, Listener: ln, Now: clk.Now,
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if opt != nil {
		opt(&opts)
	}
	r, err := Start(context.Background(), StartOptions{Options: opts, Init: true})
	if err != nil {
		t.Fatalf("Start: %v\n%s", err, logs)
	}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			if err := r.Stop(); err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	s := r.Issuer
	adminSock := s.cfg().Admin.Path
	return &testIssuer{Issuer: s, url: url, dir: dir, adminSock: adminSock, logs: logs, clock: clk, stop: stop}
}

func shortDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "wi")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func (ti *testIssuer) addMachine(t *testing.T, spec api.MachineSpec) (*api.MachineView, string) {
	t.Helper()
	b, _ := json.Marshal(spec)
	r := sockettest.Do(ti.adminSock, "POST", "/v1/machines", string(b), nil)
	if r.Status != 201 {
		t.Fatalf("add machine: %+v", r)
	}
	var out struct {
		Machine api.MachineView `json:"machine"`
		Token   api.MintedToken `json:"token"`
	}
	if err := json.Unmarshal([]byte(r.Body), &out); err != nil {
		t.Fatal(err)
	}
	return &out.Machine, out.Token.Token
}

type resp struct {
	status int
	header http.Header
	body   string
}

func (ti *testIssuer) call(t *testing.T, method, path, token, body string) resp {
	t.Helper()
	req, _ := http.NewRequest(method, ti.url+path, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "FlyV1 "+token)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return resp{res.StatusCode, res.Header, string(b)}
}

func (ti *testIssuer) oidcToken(t *testing.T, token, body string) string {
	t.Helper()
	r := ti.call(t, "POST", "/v1/tokens/oidc", token, body)
	if r.status != 200 {
		t.Fatalf("token: %d %s", r.status, r.body)
	}
	var out struct {
		Token     string `json:"token"`
		ExpiresAt string `json:"expires_at"`
	}
	json.Unmarshal([]byte(r.body), &out)
	return out.Token
}

var devSpec = api.MachineSpec{Name: "m1", Org: "dev", App: "dev-app", Region: "local", Image: "registry/app:1",
	ImageDigest: "sha256:" + strings.Repeat("ab", 32), PrivateIP: "fdaa::2", Tags: map[string]string{"env": "dev"}}

func TestOIDCToken_VerifiedByGoOIDC(t *testing.T) {
	ti := startIssuer(t, shortDir(t), nil)
	m, tok := ti.addMachine(t, devSpec)
	other := devSpec
	other.Org, other.Name = "acme", "m9"
	_, otherTok := ti.addMachine(t, other)

	ctx := context.Background()
	provider, err := gooidc.NewProvider(ctx, ti.url+"/dev")
	if err != nil {
		t.Fatalf("discovery: %v", err)
	}
	jwt := ti.oidcToken(t, tok, `{"aud":"sts.amazonaws.com"}`)
	idt, err := provider.Verifier(&gooidc.Config{ClientID: "sts.amazonaws.com"}).Verify(ctx, jwt)
	if err != nil {
		t.Fatalf("go-oidc rejected a good token: %v", err)
	}
	var claims map[string]any
	idt.Claims(&claims)
	for k, want := range map[string]any{
		"iss": ti.url + "/dev", "sub": "dev:dev-app:m1", "aud": "sts.amazonaws.com", "org": "dev", "app": "dev-app",
		"machine_id": m.MachineID, "machine_name": "m1", "region": "local", "image": "registry/app:1", "image_digest": devSpec.ImageDigest,
	} {
		if claims[k] != want {
			t.Errorf("claim %s = %v, want %v", k, claims[k], want)
		}
	}
	for _, k := range []string{"exp", "iat", "nbf", "jti"} {
		if claims[k] == nil {
			t.Errorf("claim %s missing", k)
		}
	}
	if exp := idt.Expiry.Sub(idt.IssuedAt); exp != 10*time.Minute {
		t.Errorf("lifetime %s, want 10m", exp)
	}

	// Default audience is the org's issuer URL.
	def := ti.oidcToken(t, tok, "")
	if _, err := provider.Verifier(&gooidc.Config{ClientID: ti.url + "/dev"}).Verify(ctx, def); err != nil {
		t.Errorf("default audience: %v", err)
	}
	// Wrong audience.
	if _, err := provider.Verifier(&gooidc.Config{ClientID: "other-aud"}).Verify(ctx, jwt); err == nil {
		t.Error("wrong audience accepted")
	}
	// Another org's token against this org's provider (issuer and key differ).
	acmeJWT := ti.oidcToken(t, otherTok, `{"aud":"sts.amazonaws.com"}`)
	if _, err := provider.Verifier(&gooidc.Config{ClientID: "sts.amazonaws.com"}).Verify(ctx, acmeJWT); err == nil {
		t.Error("another org's token accepted")
	}
	// Expired.
	late := func() time.Time { return time.Now().Add(11 * time.Minute) }
	if _, err := provider.Verifier(&gooidc.Config{ClientID: "sts.amazonaws.com", Now: late}).Verify(ctx, jwt); err == nil {
		t.Error("expired token accepted")
	}
	// Bad requests: empty aud, too long, too many, bad ttl, unknown field.
	for _, body := range []string{`{"aud":""}`, `{"aud":"` + strings.Repeat("a", 300) + `"}`,
		`{"aud":["a","b","c","d","e","f","g","h","i","j","k"]}`, `{"ttl":"2h"}`, `{"audience":"x"}`, `{"aud":5}`, `not json`} {
		if r := ti.call(t, "POST", "/v1/tokens/oidc", tok, body); r.status != 400 || strings.Contains(r.body, "aaaa") {
			t.Errorf("body %.40s: %d %s", body, r.status, r.body)
		}
	}
	// Several audiences and a custom ttl.
	multi := ti.oidcToken(t, tok, `{"aud":["a","b"],"ttl":"5m"}`)
	idt, err = provider.Verifier(&gooidc.Config{ClientID: "b"}).Verify(ctx, multi)
	if err != nil || idt.Expiry.Sub(idt.IssuedAt) != 5*time.Minute {
		t.Errorf("multi aud / ttl: %v %v", err, idt)
	}
}

func TestES256(t *testing.T) {
	ti := startIssuer(t, shortDir(t), func(c *config.Issuer) { c.OIDC.Alg = "ES256" })
	_, tok := ti.addMachine(t, devSpec)
	provider, err := gooidc.NewProvider(context.Background(), ti.url+"/dev")
	if err != nil {
		t.Fatal(err)
	}
	jwt := ti.oidcToken(t, tok, `{"aud":"x"}`)
	if _, err := provider.Verifier(&gooidc.Config{ClientID: "x", SupportedSigningAlgs: []string{"ES256"}}).Verify(context.Background(), jwt); err != nil {
		t.Errorf("ES256 token: %v", err)
	}
}

func jwksKids(t *testing.T, ti *testIssuer) []string {
	t.Helper()
	r := ti.call(t, "GET", "/dev/.well-known/jwks", "", "")
	var set struct {
		Keys []struct {
			Kid string `json:"kid"`
			D   string `json:"d"`
		} `json:"keys"`
	}
	if err := json.Unmarshal([]byte(r.body), &set); err != nil {
		t.Fatalf("jwks %q: %v", r.body, err)
	}
	var kids []string
	for _, k := range set.Keys {
		if k.D != "" {
			t.Fatal("JWKS holds private material")
		}
		kids = append(kids, k.Kid)
	}
	if cc := r.header.Get("Cache-Control"); !strings.Contains(cc, "max-age=60") {
		t.Errorf("JWKS Cache-Control %q, want max-age shorter than prepublish", cc)
	}
	return kids
}

func kidOf(t *testing.T, jwt string) string {
	t.Helper()
	hdr, _, _ := strings.Cut(jwt, ".")
	var h struct {
		Kid string `json:"kid"`
	}
	b, _ := jsonB64(hdr)
	json.Unmarshal(b, &h)
	return h.Kid
}

func TestKeyRotation(t *testing.T) {
	ti := startIssuer(t, shortDir(t), nil)
	_, tok := ti.addMachine(t, devSpec)
	ctx := context.Background()
	oldJWT := ti.oidcToken(t, tok, `{"aud":"x"}`)
	oldKid := kidOf(t, oldJWT)

	r := sockettest.Do(ti.adminSock, "POST", "/v1/keys/rotate", `{"org":"dev"}`, nil)
	if r.Status != 200 {
		t.Fatalf("rotate: %+v", r)
	}
	var nk api.KeyInfo
	json.Unmarshal([]byte(r.Body), &nk)
	// Published before it signs anything.
	if kids := jwksKids(t, ti); len(kids) != 2 || !contains(kids, nk.ID) {
		t.Fatalf("new key %s not pre-published: %v", nk.ID, kids)
	}
	if k := kidOf(t, ti.oidcToken(t, tok, `{"aud":"x"}`)); k != oldKid {
		t.Errorf("new key signed before its activation: %s", k)
	}
	// After the prepublish delay the new key signs; the old token still verifies.
	ti.clock.Advance(10*time.Minute + time.Second)
	newJWT := ti.oidcToken(t, tok, `{"aud":"x"}`)
	if k := kidOf(t, newJWT); k != nk.ID {
		t.Errorf("after activation signed by %s, want %s", k, nk.ID)
	}
	provider, err := gooidc.NewProvider(ctx, ti.url+"/dev")
	if err != nil {
		t.Fatal(err)
	}
	v := provider.Verifier(&gooidc.Config{ClientID: "x", Now: ti.clock.Now, SkipExpiryCheck: true})
	for name, jwt := range map[string]string{"old": oldJWT, "new": newJWT} {
		if _, err := v.Verify(ctx, jwt); err != nil {
			t.Errorf("%s token during grace: %v", name, err)
		}
	}
	// After the grace period the retired key leaves the JWKS and the store.
	ti.clock.Advance(2*time.Hour + time.Minute)
	if err := ti.maintainKeys(ctx); err != nil {
		t.Fatal(err)
	}
	if kids := jwksKids(t, ti); len(kids) != 1 || kids[0] != nk.ID {
		t.Errorf("after grace JWKS = %v, want only %s", kids, nk.ID)
	}
	provider2, _ := gooidc.NewProvider(ctx, ti.url+"/dev")
	if _, err := provider2.Verifier(&gooidc.Config{ClientID: "x", SkipExpiryCheck: true}).Verify(ctx, oldJWT); err == nil {
		t.Error("token of a pruned key still verifies")
	}
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func TestMachineToken_Refusals(t *testing.T) {
	ti := startIssuer(t, shortDir(t), nil)
	m1, tok := ti.addMachine(t, devSpec)
	spec2 := devSpec
	spec2.Name = "m2"
	m2, tok2 := ti.addMachine(t, spec2)
	spec3 := devSpec
	spec3.Name, spec3.SourceAddrs = "m3", []string{"10.9.9.0/24"}
	_, tokAddr := ti.addMachine(t, spec3)

	// A token signed by a key the issuer does not have, with a plausible id.
	foreign, _, _ := machinetoken.Mint(machinetoken.NewKey(), tokenLocation, machinetoken.Claims{Org: "dev", App: "dev-app", MachineID: m1.MachineID,
		Features: []machinetoken.Feature{"metadata"}, NotAfter: time.Now().Add(time.Hour)})
	// Right key id, wrong secret.
	kr := ti.keys.Load()
	wrongSecret := machinetoken.Key{ID: kr.mintKey.ID, Secret: machinetoken.NewKey().Secret}
	forged, _, _ := machinetoken.Mint(wrongSecret, tokenLocation, machinetoken.Claims{Org: "dev", App: "dev-app", MachineID: m1.MachineID,
		Features: []machinetoken.Feature{"metadata"}, NotAfter: time.Now().Add(time.Hour)})
	// Expired window.
	expired, _, _ := machinetoken.Mint(*kr.mintKey, tokenLocation, machinetoken.Claims{Org: "dev", App: "dev-app", MachineID: m1.MachineID,
		Features: []machinetoken.Feature{"metadata"}, NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: time.Now().Add(-time.Hour)})
	// Feature not granted.
	oidcOnly, _ := machinetoken.Attenuate(tok, time.Time{}, time.Now().Add(time.Hour), []machinetoken.Feature{"oidc"})
	// Token claiming m2 but in another app (inconsistent with the registry).
	wrongApp, _, _ := machinetoken.Mint(*kr.mintKey, tokenLocation, machinetoken.Claims{Org: "dev", App: "other-app", MachineID: m2.MachineID,
		Features: []machinetoken.Feature{"metadata"}, NotAfter: time.Now().Add(time.Hour)})
	tampered := []byte(tok)
	tampered[len(tampered)/2] ^= 0x01

	// Revoked: mint a second token for m1 and revoke it.
	r := sockettest.Do(ti.adminSock, "POST", "/v1/machines/"+m1.MachineID+"/tokens", `{"ttl":"1h"}`, nil)
	var minted api.MintedToken
	json.Unmarshal([]byte(r.Body), &minted)
	if r := sockettest.Do(ti.adminSock, "POST", "/v1/revocations", `{"token_id":"`+minted.TokenID+`"}`, nil); r.Status != 200 {
		t.Fatalf("revoke: %+v", r)
	}
	// Removed machine.
	if r := sockettest.Do(ti.adminSock, "DELETE", "/v1/machines/"+m2.MachineID, "", nil); r.Status != 200 {
		t.Fatalf("remove: %+v", r)
	}

	if r := ti.call(t, "GET", "/v1/machines/self", tok, ""); r.status != 200 || !strings.Contains(r.body, m1.MachineID) {
		t.Fatalf("good token refused: %d %s", r.status, r.body)
	}
	cases := map[string]string{
		"unknown key":         foreign,
		"wrong secret":        forged,
		"tampered":            string(tampered),
		"expired":             expired,
		"revoked":             minted.Token,
		"removed machine":     tok2,
		"wrong source":        tokAddr,
		"feature not granted": oidcOnly,
		"registry mismatch":   wrongApp,
		"garbage":             "fm2_AAAA",
	}
	for name, bad := range cases {
		r := ti.call(t, "GET", "/v1/machines/self", bad, "")
		if r.status != 401 || r.body != "{\"error\":\"unauthorized\",\"code\":\"unauthorized\"}\n" {
			t.Errorf("%s: %d %q", name, r.status, r.body)
		}
	}
	// Another machine's token only ever yields that machine's metadata.
	if r := ti.call(t, "GET", "/v1/machines/self", tok, ""); strings.Contains(r.body, m2.MachineID) {
		t.Error("metadata of another machine")
	}
	logs := ti.logs.String()
	for name, bad := range cases {
		if len(bad) > 20 && strings.Contains(logs, bad[4:40]) {
			t.Errorf("%s: token bytes in the log", name)
		}
	}
	if strings.Contains(logs, tok[4:40]) || strings.Contains(logs, minted.Token[4:40]) {
		t.Error("a machine token appears in the log")
	}
	if n := strings.Count(logs, "machine token refused"); n < len(cases) {
		t.Errorf("%d refusals logged, want %d", n, len(cases))
	}
}

func TestMachineToken_SourceAddressAllowed(t *testing.T) {
	ti := startIssuer(t, shortDir(t), nil)
	spec := devSpec
	spec.SourceAddrs = []string{"127.0.0.0/8"}
	_, tok := ti.addMachine(t, spec)
	if r := ti.call(t, "GET", "/v1/machines/self", tok, ""); r.status != 200 {
		t.Errorf("token from an allowed address: %d %s", r.status, r.body)
	}
	// Narrowing the registry applies to existing tokens at once.
	r := sockettest.Do(ti.adminSock, "PATCH", "/v1/machines/dev%2Fdev-app%2Fm1", `{"source_addrs":["10.0.0.0/8"]}`, nil)
	if r.Status != 200 {
		t.Fatalf("update by org/app/name: %+v", r)
	}
	if r := ti.call(t, "GET", "/v1/machines/self", tok, ""); r.status != 401 {
		t.Errorf("after narrowing: %d", r.status)
	}
}

func TestAttenuation(t *testing.T) {
	ti := startIssuer(t, shortDir(t), nil)
	_, tok := ti.addMachine(t, devSpec)
	narrow, err := machinetoken.Attenuate(tok, time.Time{}, time.Now().Add(2*time.Minute), []machinetoken.Feature{machinetoken.FeatureOIDC})
	if err != nil {
		t.Fatal(err)
	}
	if r := ti.call(t, "POST", "/v1/tokens/oidc", narrow, ""); r.status != 200 {
		t.Errorf("narrowed token, kept feature: %d", r.status)
	}
	if r := ti.call(t, "GET", "/v1/machines/self", narrow, ""); r.status != 401 {
		t.Errorf("narrowed token, removed feature: %d", r.status)
	}
	ti.clock.Advance(3 * time.Minute)
	if r := ti.call(t, "POST", "/v1/tokens/oidc", narrow, ""); r.status != 401 {
		t.Errorf("narrowed window passed: %d", r.status)
	}
	if r := ti.call(t, "POST", "/v1/tokens/oidc", tok, ""); r.status != 200 {
		t.Errorf("original token after the narrowed window: %d", r.status)
	}
}

func TestLongPoll(t *testing.T) {
	ti := startIssuer(t, shortDir(t), nil)
	m, tok := ti.addMachine(t, devSpec)
	r := ti.call(t, "GET", "/v1/machines/self", tok, "")
	etag := r.header.Get("ETag")
	if etag == "" {
		t.Fatal("no ETag")
	}
	// Mismatch → at once.
	start := time.Now()
	r = ti.call(t, "GET", "/v1/machines/self?wait=true&etag=%22stale%22&timeout=10s", tok, "")
	if r.status != 200 || time.Since(start) > 5*time.Second || r.header.Get("ETag") != etag {
		t.Errorf("stale etag: %d after %s", r.status, time.Since(start))
	}
	// No change → at the timeout, same ETag.
	start = time.Now()
	r = ti.call(t, "GET", "/v1/machines/self?wait=true&etag="+etag+"&timeout=1s", tok, "")
	if r.status != 200 || time.Since(start) < time.Second || r.header.Get("ETag") != etag {
		t.Errorf("timeout: %d after %s etag %s", r.status, time.Since(start), r.header.Get("ETag"))
	}
	// Change → wakes with the new state.
	done := make(chan resp, 1)
	go func() { done <- ti.call(t, "GET", "/v1/machines/self?wait=true&etag="+etag+"&timeout=60s", tok, "") }()
	wait.Eventually(t, 10*time.Second, func() bool { return ti.longPolls.Load() == 1 })
	if _, err := ti.UpdateMachine(context.Background(), m.MachineID, api.MachineUpdate{SetTags: map[string]string{"color": "blue"}}); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		if r.status != 200 || r.header.Get("ETag") == etag || !strings.Contains(r.body, `"color":"blue"`) {
			t.Errorf("after change: %d %s %s", r.status, r.header.Get("ETag"), r.body)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("long poll did not wake on change")
	}
	if r := ti.call(t, "GET", "/v1/machines/self?wait=true&etag=x&timeout=10m", tok, ""); r.status != 400 {
		t.Errorf("out-of-range timeout: %d", r.status)
	}
}

// State survives a restart, and the state file holds no private key in the
// clear: neither PEM/DER encodings nor the raw secrets.
func TestState_SurvivesRestartAndIsSealed(t *testing.T) {
	dir := shortDir(t)
	ti := startIssuer(t, dir, nil)
	m, tok := ti.addMachine(t, devSpec)
	jwt := ti.oidcToken(t, tok, `{"aud":"x"}`)
	kr := ti.keys.Load()
	var secrets [][]byte
	secrets = append(secrets, kr.mintKey.Secret)
	for _, k := range kr.oidcKeys["dev"] {
		der, _ := k.MarshalPrivate()
		secrets = append(secrets, der)
		switch p := k.Private.(type) {
		case *rsa.PrivateKey:
			secrets = append(secrets, p.D.Bytes(), p.Primes[0].Bytes())
		case *ecdsa.PrivateKey:
			b, _ := p.Bytes()
			secrets = append(secrets, b)
		}
	}
	ti.stop()

	raw, err := os.ReadFile(filepath.Join(dir, "state", "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	for _, marker := range []string{"PRIVATE KEY", `"d":`} {
		if bytes.Contains(raw, []byte(marker)) {
			t.Errorf("state file contains %q", marker)
		}
	}
	for i, s := range secrets {
		if len(bytes.Trim(s, "\x00")) < 16 {
			t.Fatalf("secret #%d is mostly zero bytes: a key was wiped while in use", i)
		}
		if bytes.Contains(raw, s[:min(len(s), 32)]) {
			t.Errorf("state file contains secret #%d in the clear", i)
		}
	}

	ti2 := startIssuer(t, dir, nil)
	if r := ti2.call(t, "GET", "/v1/machines/self", tok, ""); r.status != 200 || !strings.Contains(r.body, m.MachineID) {
		t.Errorf("token after restart: %d %s", r.status, r.body)
	}
	provider, err := gooidc.NewProvider(context.Background(), ti2.url+"/dev")
	if err != nil {
		t.Fatal(err)
	}
	// The pre-restart JWT was signed with a key still published: same keys.
	if kidOf(t, jwt) != kidOf(t, ti2.oidcToken(t, tok, `{"aud":"x"}`)) {
		t.Error("signing key changed across restart")
	}
	_ = provider

	// A wrong seal key refuses to start rather than run on garbage.
	os.WriteFile(filepath.Join(dir, "state", "seal.key"), []byte("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"), 0o600)
	ti2.stop()
	_, err = New(context.Background(), Options{Overrides: []config.IssuerOverride{issuerConfig(dir, nil)}, Logger: slog.New(slog.DiscardHandler)})
	if err == nil || !strings.Contains(err.Error(), "unseal") {
		t.Errorf("wrong seal key: %v", err)
	}
}

func TestAdmin_MachineLifecycle(t *testing.T) {
	ti := startIssuer(t, shortDir(t), nil)
	m, _ := ti.addMachine(t, devSpec)
	if r := sockettest.Do(ti.adminSock, "GET", "/v1/machines", "", nil); r.Status != 200 || !strings.Contains(r.Body, m.MachineID) {
		t.Errorf("list: %+v", r)
	}
	// Duplicate name and invalid input: 400 with a field-level message, no echo.
	b, _ := json.Marshal(devSpec)
	if r := sockettest.Do(ti.adminSock, "POST", "/v1/machines", string(b), nil); r.Status != 400 {
		t.Errorf("duplicate: %+v", r)
	}
	bad := devSpec
	bad.Name = "Bad<Name>"
	b, _ = json.Marshal(bad)
	if r := sockettest.Do(ti.adminSock, "POST", "/v1/machines", string(b), nil); r.Status != 400 || strings.Contains(r.Body, "<Name>") {
		t.Errorf("invalid name: %+v", r)
	}
	if r := sockettest.Do(ti.adminSock, "GET", "/v1/machines/nope", "", nil); r.Status != 404 {
		t.Errorf("show unknown: %+v", r)
	}
	r := sockettest.Do(ti.adminSock, "PATCH", "/v1/machines/"+m.MachineID, `{"set_tags":{"a":"1"},"remove_tags":["env"],"region":"fra"}`, nil)
	if r.Status != 200 || !strings.Contains(r.Body, `"a": "1"`) || strings.Contains(r.Body, `"env"`) || !strings.Contains(r.Body, `"region": "fra"`) || !strings.Contains(r.Body, `"version": 2`) {
		t.Errorf("update: %+v", r)
	}
	if r := sockettest.Do(ti.adminSock, "PATCH", "/v1/machines/"+m.MachineID, `{"region":"x","expect_version":1}`, nil); r.Status != 409 {
		t.Errorf("stale expect_version: %+v", r)
	}
	if r := sockettest.Do(ti.adminSock, "GET", "/v1/keys", "", nil); r.Status != 200 || strings.Contains(r.Body, "PRIVATE") || !strings.Contains(r.Body, `"kind": "oidc"`) {
		t.Errorf("keys: %+v", r)
	}
	if r := sockettest.Do(ti.adminSock, "GET", "/metrics", "", nil); r.Status != 200 ||
		!strings.Contains(r.Body, `wicket_connections_open{socket="admin"}`) ||
		!strings.Contains(r.Body, `wicket_connections_rejected_total{socket="admin"} 0`) ||
		!strings.Contains(r.Body, "wicket_machine_tokens_minted_total 1") {
		t.Errorf("issuer metrics: %d\n%s", r.Status, r.Body)
	}
	if logs := ti.logs.String(); !strings.Contains(logs, "machine added") || !strings.Contains(logs, "peer_uid=") {
		t.Errorf("admin audit log missing:\n%s", logs)
	}
}

func TestGateway(t *testing.T) {
	var got atomic.Pointer[http.Request]
	up := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.Store(r.Clone(context.Background()))
		io.WriteString(w, "upstream says hi")
	})}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	go up.Serve(ln)
	defer up.Close()
	ti := startIssuer(t, shortDir(t), func(c *config.Issuer) { c.Gateway.Upstream = "http://" + ln.Addr().String() })
	m, tok := ti.addMachine(t, devSpec)

	req, _ := http.NewRequest("GET", ti.url+"/v1/apps/dev-app/machines?x=1", nil)
	req.Header.Set("Authorization", "FlyV1 "+tok)
	req.Header.Set("Cookie", "s=1")
	req.Header.Set("X-Wicket-Machine-Id", "spoofed")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || string(body) != "upstream says hi" {
		t.Fatalf("gateway: %d %s", res.StatusCode, body)
	}
	r := got.Load()
	if r.Header.Get("Authorization") != "" || r.Header.Get("Cookie") != "" {
		t.Error("token or cookie forwarded upstream")
	}
	if r.Header.Get("X-Wicket-Machine-Id") != m.MachineID || r.Header.Get("X-Wicket-App") != "dev-app" || r.Header.Get("X-Wicket-Org") != "dev" {
		t.Errorf("identity headers: %v", r.Header)
	}
	if r.URL.Path != "/v1/apps/dev-app/machines" || r.URL.RawQuery != "x=1" {
		t.Errorf("forwarded to %s", r.URL)
	}
	// Another app's path: 401 and nothing forwarded.
	got.Store(nil)
	if r := ti.call(t, "GET", "/v1/apps/other-app/machines", tok, ""); r.status != 401 || got.Load() != nil {
		t.Errorf("other app: %d forwarded=%v", r.status, got.Load() != nil)
	}
}

func TestPublic_UnknownPathsNoEcho(t *testing.T) {
	ti := startIssuer(t, shortDir(t), nil)
	for _, p := range []string{"/EVILmarker", "/nosuchorg/.well-known/jwks", "/v1/apps/x/y"} {
		r := ti.call(t, "GET", p, "", "")
		if r.status != 404 && r.status != 401 {
			t.Errorf("%s: %d", p, r.status)
		}
		if strings.Contains(r.body, "EVIL") || strings.Contains(r.body, "nosuchorg") {
			t.Errorf("%s echoed: %s", p, r.body)
		}
	}
}

func BenchmarkOIDCTokenEndpoint(b *testing.B) {
	for _, alg := range []string{"RS256", "ES256"} {
		b.Run(alg, func(b *testing.B) {
			t := &testing.T{}
			_ = t
			dir, _ := os.MkdirTemp("", "wb")
			defer os.RemoveAll(dir)
			ln, _ := net.Listen("tcp", "127.0.0.1:0")
			ov := []config.IssuerOverride{issuerConfig(dir, func(c *config.Issuer) { c.OIDC.Alg = alg }),
				func(c *config.Issuer) { c.Server.PublicURL = "http://" + ln.Addr().String() }}
			r, err := Start(context.Background(), StartOptions{Init: true, Options: Options{Overrides: ov, Listener: ln, Logger: slog.New(slog.DiscardHandler)}})
			if err != nil {
				b.Fatal(err)
			}
			defer r.Stop()
			s, ctx := r.Issuer, context.Background()
			_, tok, err := s.AddMachine(ctx, devSpec)
			if err != nil {
				b.Fatal(err)
			}
			h := s.publicHandler()
			key, _ := s.keys.Load().oidcSets["dev"].Signer(oidc.Alg(alg), time.Now())
			claims := oidc.Claims{Issuer: "https://x/dev", Subject: "dev:dev-app:m1", Audience: []string{"x"},
				IssuedAt: time.Now(), Expiry: time.Now().Add(10 * time.Minute), ID: "j", Org: "dev", App: "dev-app", MachineID: "m", MachineName: "m1"}
			body := []byte(`{"aud":"x"}`)
			b.Run("bare-sign", func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					if _, err := oidc.Sign(key, claims); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("endpoint", func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					req, _ := http.NewRequest("POST", "/v1/tokens/oidc", bytes.NewReader(body))
					req.RemoteAddr = "127.0.0.1:1234"
					req.Header.Set("Authorization", "FlyV1 "+tok.Token)
					w := &discardWriter{h: http.Header{}}
					h.ServeHTTP(w, req)
					if w.status != 0 && w.status != 200 {
						b.Fatalf("status %d", w.status)
					}
				}
			})
		})
	}
}

type discardWriter struct {
	h      http.Header
	status int
}

func (d *discardWriter) Header() http.Header         { return d.h }
func (d *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (d *discardWriter) WriteHeader(s int)           { d.status = s }

var _ = fmt.Sprintf
var _ = netip.Addr{}
