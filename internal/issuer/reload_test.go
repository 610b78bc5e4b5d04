package issuer

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/config/configtest"
	"github.com/wicket-sh/wicket/internal/sockettest"
)

// reloadBase is the issuer config every case of
// TestReload_EveryDynamicFieldTakesEffect starts from; each case adds one
// setting on top of it.
const reloadBase = `
[admin]
socket_mode = "0660"
socket_group = "65534"
[oidc]
alg = "RS256"
token_ttl = "4m"
max_ttl = "10m"
prepublish = "15m"
grace = "2h"
jwks_max_age = "1m"
[machine_tokens]
default_ttl = "720h"
max_ttl = "8760h"
[remote_admin]
rate = 0.01
burst = 2
[log]
level = "info"
`

// reloadCase changes one dynamic setting: before is checked on the base
// config, after once the setting is added and the config reloaded.
type reloadCase struct {
	field  string // as config.DynamicFields names it
	toml   string // merged into reloadBase
	before func(t *testing.T, ti *testIssuer)
	after  func(t *testing.T, ti *testIssuer)
}

// TestReload_EveryDynamicFieldTakesEffect changes each dynamic field of
// the issuer config in turn, reloads, and checks the visible effect: no
// component may keep a private copy of a dynamic value. The case list
// must name every field config.DynamicFields reports, so a new dynamic
// field without a case fails here.
func TestReload_EveryDynamicFieldTakesEffect(t *testing.T) {
	sockettest.RequireRoot(t) // admin allow_uids/gids are checked as other uids
	dir := shortDir(t)
	os.Chmod(dir, 0o755) // the other-uid helper must reach the admin socket
	cfgPath := filepath.Join(dir, "issuer.toml")
	write := func(t *testing.T, extra string) {
		t.Helper()
		if err := os.WriteFile(cfgPath, []byte(configtest.MergeTOML(reloadBase, extra)), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(t, "")
	level := new(slog.LevelVar)
	ti := startIssuerWith(t, dir, nil, func(o *Options) {
		// Only the paths and the listener come from overrides; every
		// dynamic setting comes from the file.
		o.Overrides[0] = func(c *config.Issuer) {
			c.State.Dir = filepath.Join(dir, "state")
			c.Admin.Path = filepath.Join(dir, "admin.sock")
			c.RemoteAdmin.Listen = "127.0.0.1:0" // static: where, not how much
		}
		o.ConfigPath = cfgPath
		o.LogLevel = level
	})
	m, tok := ti.addMachine(t, devSpec)
	adminTok := "" // the admin token the running config requires
	hdr := func() map[string]string {
		if adminTok == "" {
			return nil
		}
		return map[string]string{"Authorization": "Bearer " + adminTok}
	}
	reload := func(t *testing.T) {
		t.Helper()
		r := sockettest.Do(ti.adminSock, "POST", "/v1/reload", "", hdr())
		if r.Status != 200 || !strings.Contains(r.Body, `"restart_required": []`) {
			t.Fatalf("reload: %d %s %s", r.Status, r.Body, r.Err)
		}
	}

	upstream := func(h http.HandlerFunc) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: h}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
		return "http://" + ln.Addr().String()
	}
	fast := upstream(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Saw-Custom", r.Header.Get("X-Custom"))
		w.Write([]byte("from upstream"))
	})
	slow := upstream(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
	})
	adminTokenFile := filepath.Join(dir, "admin.token")
	os.WriteFile(adminTokenFile, []byte("file-admin-token-0123456789abcdef"), 0o600)
	t.Setenv("WICKET_TEST_ADMIN_TOKEN", "env-admin-token-0123456789abcdef")

	jwtLife := func(t *testing.T) time.Duration {
		var c struct{ Exp, Iat int64 }
		_, payload, _ := strings.Cut(ti.oidcToken(t, tok, `{"aud":"x"}`), ".")
		payload, _, _ = strings.Cut(payload, ".")
		b, _ := jsonB64(payload)
		json.Unmarshal(b, &c)
		return time.Duration(c.Exp-c.Iat) * time.Second
	}
	wantLife := func(d time.Duration) func(*testing.T, *testIssuer) {
		return func(t *testing.T, _ *testIssuer) {
			if got := jwtLife(t); got != d {
				t.Errorf("JWT lifetime %v, want %v", got, d)
			}
		}
	}
	maxAge := func(want string) func(*testing.T, *testIssuer) {
		return func(t *testing.T, ti *testIssuer) {
			for _, doc := range []string{"jwks", "openid-configuration"} {
				if cc := ti.call(t, "GET", "/dev/.well-known/"+doc, "", "").header.Get("Cache-Control"); cc != "public, max-age="+want {
					t.Errorf("%s Cache-Control %q, want max-age=%s", doc, cc, want)
				}
			}
		}
	}
	oidcStatus := func(body string, want int) func(*testing.T, *testIssuer) {
		return func(t *testing.T, ti *testIssuer) {
			if r := ti.call(t, "POST", "/v1/tokens/oidc", tok, body); r.status != want {
				t.Errorf("token %s: %d, want %d (%s)", body, r.status, want, r.body)
			}
		}
	}
	rotate := func(t *testing.T) api.KeyInfo {
		r := sockettest.Do(ti.adminSock, "POST", "/v1/keys/rotate", `{"org":"dev"}`, hdr())
		if r.Status != 200 {
			t.Fatalf("rotate: %+v", r)
		}
		var k api.KeyInfo
		json.Unmarshal([]byte(r.Body), &k)
		return k
	}
	prepublished := func(want time.Duration) func(*testing.T, *testIssuer) {
		return func(t *testing.T, _ *testIssuer) {
			if k := rotate(t); k.ActivateAt.Sub(k.CreatedAt) != want {
				t.Errorf("new key activates after %v, want %v", k.ActivateAt.Sub(k.CreatedAt), want)
			}
		}
	}
	alg := func(want string) func(*testing.T, *testIssuer) {
		return func(t *testing.T, _ *testIssuer) {
			if k := rotate(t); k.Alg != want {
				t.Errorf("new key alg %s, want %s", k.Alg, want)
			}
		}
	}
	// retired is a key that retired 30 minutes ago: inside the base
	// grace (2h), outside the reloaded one (15m).
	var retired string
	retiredPublished := func(want bool) func(*testing.T, *testIssuer) {
		return func(t *testing.T, ti *testIssuer) {
			if got := slices.Contains(ti.kids(t), retired); got != want {
				t.Errorf("key retired 30m ago in JWKS: %v, want %v", got, want)
			}
		}
	}
	scheduled := func(want bool) func(*testing.T, *testIssuer) {
		return func(t *testing.T, ti *testIssuer) {
			before := len(ti.kids(t))
			ti.clock.Advance(25 * time.Hour)
			if err := ti.maintainKeys(context.Background()); err != nil {
				t.Fatal(err)
			}
			// Pruning may drop retired keys; a scheduled rotation adds one
			// that is pending (published, not yet signing).
			pending := 0
			r := sockettest.Do(ti.adminSock, "GET", "/v1/keys", "", hdr())
			var keys struct{ Keys []api.KeyInfo }
			if err := json.Unmarshal([]byte(r.Body), &keys); err != nil {
				t.Fatalf("keys: %s", r.Body)
			}
			for _, k := range keys.Keys {
				if k.Kind == "oidc" && k.State == "pending" {
					pending++
				}
			}
			if got := pending > 0; got != want {
				t.Errorf("scheduled rotation happened: %v, want %v (%d keys before)", got, want, before)
			}
		}
	}
	machineTTL := func(want time.Duration) func(*testing.T, *testIssuer) {
		return func(t *testing.T, ti *testIssuer) {
			mt := ti.mintToken(t, m.MachineID)
			if got := mt.ExpiresAt.Sub(ti.clock.Now()).Round(time.Hour); got != want {
				t.Errorf("machine token lives %v, want %v", got, want)
			}
		}
	}
	mintStatus := func(ttl string, want int) func(*testing.T, *testIssuer) {
		return func(t *testing.T, ti *testIssuer) {
			r := sockettest.Do(ti.adminSock, "POST", "/v1/machines/"+m.MachineID+"/tokens", `{"ttl":"`+ttl+`"}`, hdr())
			if r.Status != want {
				t.Errorf("mint ttl %s: %d, want %d", ttl, r.Status, want)
			}
		}
	}
	gateway := func(want int) func(*testing.T, *testIssuer) {
		return func(t *testing.T, ti *testIssuer) {
			if r := ti.call(t, "GET", "/v1/apps/dev-app/machines", tok, ""); r.status != want {
				t.Errorf("gateway: %d, want %d (%s)", r.status, want, r.body)
			}
		}
	}
	// forwards reports whether the gateway passes the machine's X-Custom.
	forwards := func(want bool) func(*testing.T, *testIssuer) {
		return func(t *testing.T, ti *testIssuer) {
			req, _ := http.NewRequest("GET", ti.url+"/v1/apps/dev-app/machines", nil)
			req.Header.Set("Authorization", "FlyV1 "+tok)
			req.Header.Set("X-Custom", "yes")
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			if got := res.Header.Get("X-Saw-Custom") == "yes"; res.StatusCode != 200 || got != want {
				t.Errorf("gateway: %d, X-Custom forwarded %v, want %v", res.StatusCode, got, want)
			}
		}
	}
	logLevel := func(want slog.Level) func(*testing.T, *testIssuer) {
		return func(t *testing.T, _ *testIssuer) {
			if level.Level() != want {
				t.Errorf("log level %v, want %v", level.Level(), want)
			}
		}
	}
	adminAs := func(uid, gid uint32, want int) func(*testing.T, *testIssuer) {
		return func(t *testing.T, ti *testIssuer) {
			if r := sockettest.RequestAs(t, uid, gid, ti.adminSock, "GET", "/v1/health", "", nil); r.Status != want {
				t.Errorf("admin as %d:%d: %d, want %d", uid, gid, r.Status, want)
			}
		}
	}
	adminToken := func(tokenSet string) func(*testing.T, *testIssuer) {
		return func(t *testing.T, ti *testIssuer) {
			plain := sockettest.Do(ti.adminSock, "GET", "/v1/health", "", nil).Status
			if tokenSet == "" {
				if plain != 200 {
					t.Errorf("admin without token: %d, want 200", plain)
				}
				return
			}
			with := sockettest.Do(ti.adminSock, "GET", "/v1/health", "", map[string]string{"Authorization": "Bearer " + tokenSet}).Status
			if plain != 403 || with != 200 {
				t.Errorf("admin token: without %d (want 403), with %d (want 200)", plain, with)
			}
		}
	}

	// The remote admin API's limits, each checked with a fresh admin
	// token (a bucket of its own). The base rate (0.01/s) refills nothing
	// within a test, so only the settings decide.
	remoteStatuses := func(n int) []int {
		tok := ti.mintAdmin(t, api.AdminTokenRequest{Label: "reload"}).Token
		var out []int
		for range n {
			out = append(out, ti.remote(t, "GET", "/v1/status", tok, "").status)
		}
		return out
	}
	burst := func(want int) func(*testing.T, *testIssuer) {
		return func(t *testing.T, _ *testIssuer) {
			got := remoteStatuses(want + 1)
			for i, st := range got {
				if (i < want && st != 200) || (i == want && st != 429) {
					t.Errorf("statuses %v, want %d times 200 then 429", got, want)
					break
				}
			}
		}
	}
	refill := func(want int) func(*testing.T, *testIssuer) {
		return func(t *testing.T, ti *testIssuer) {
			tok := ti.mintAdmin(t, api.AdminTokenRequest{Label: "reload"}).Token
			for range 2 {
				ti.remote(t, "GET", "/v1/status", tok, "")
			}
			ti.clock.Advance(time.Second)
			if st := ti.remote(t, "GET", "/v1/status", tok, "").status; st != want {
				t.Errorf("a second after the burst: %d, want %d", st, want)
			}
		}
	}
	remoteBody := func(want int) func(*testing.T, *testIssuer) {
		return func(t *testing.T, ti *testIssuer) {
			tok := ti.mintAdmin(t, api.AdminTokenRequest{Label: "reload"}).Token
			if st := ti.remote(t, "POST", "/v1/machines", tok, `{"image":"`+strings.Repeat("x", 3000)+`"}`).status; st != want {
				t.Errorf("3 kB body: %d, want %d", st, want)
			}
		}
	}
	remoteSlowBody := func(want string) func(*testing.T, *testIssuer) {
		return func(t *testing.T, ti *testIssuer) {
			tok := ti.mintAdmin(t, api.AdminTokenRequest{Label: "reload"}).Token
			if got := bodyTimeout(t, ti.RemoteAdminAddr().String(), tok); got != want {
				t.Errorf("stalled body: %s, want %s", got, want)
			}
		}
	}

	cases := []reloadCase{
		{"remote_admin.burst", "[remote_admin]\nburst = 1", burst(2), burst(1)},
		{"remote_admin.rate", "[remote_admin]\nrate = 10.0", refill(429), refill(200)},
		{"remote_admin.max_body_bytes", "[remote_admin]\nmax_body_bytes = 2048", remoteBody(400), remoteBody(413)},
		{"remote_admin.body_timeout", "[remote_admin]\nbody_timeout = \"300ms\"", nil, remoteSlowBody("408")},
		{"oidc.jwks_max_age", "[oidc]\njwks_max_age = \"7m\"", maxAge("60"), maxAge("420")},
		{"oidc.token_ttl", "[oidc]\ntoken_ttl = \"2m\"", wantLife(4 * time.Minute), wantLife(2 * time.Minute)},
		{"oidc.max_ttl", "[oidc]\nmax_ttl = \"5m\"", oidcStatus(`{"aud":"x","ttl":"8m"}`, 200), oidcStatus(`{"aud":"x","ttl":"8m"}`, 400)},
		{"oidc.grace", "[oidc]\ngrace = \"15m\"", func(t *testing.T, ti *testIssuer) {
			retired = kidOf(t, ti.oidcToken(t, tok, `{"aud":"x"}`))
			rotate(t)
			ti.clock.Advance(15*time.Minute + time.Second) // the new key signs, the old one retires
			ti.clock.Advance(30 * time.Minute)
			retiredPublished(true)(t, ti)
		}, retiredPublished(false)},
		{"oidc.prepublish", "[oidc]\nprepublish = \"8m\"", prepublished(15 * time.Minute), prepublished(8 * time.Minute)},
		{"oidc.alg", "[oidc]\nalg = \"ES256\"", alg("RS256"), alg("ES256")},
		{"oidc.rotate_every", "[oidc]\nrotate_every = \"24h\"", scheduled(false), scheduled(true)},
		{"machine_tokens.default_ttl", "[machine_tokens]\ndefault_ttl = \"48h\"", machineTTL(720 * time.Hour), machineTTL(48 * time.Hour)},
		{"machine_tokens.max_ttl", "[machine_tokens]\nmax_ttl = \"72h\"\ndefault_ttl = \"24h\"", mintStatus("100h", 201), mintStatus("100h", 400)},
		{"gateway.upstream", "[gateway]\nupstream = \"" + fast + "\"", gateway(404), gateway(200)},
		{"gateway.timeout", "[gateway]\nupstream = \"" + slow + "\"\ntimeout = \"200ms\"", nil, gateway(504)},
		{"gateway.forward_headers", "[gateway]\nupstream = \"" + fast + "\"\nforward_headers = [\"X-Custom\"]", func(t *testing.T, ti *testIssuer) {
			write(t, "[gateway]\nupstream = \""+fast+"\"")
			reload(t)
			forwards(false)(t, ti)
		}, forwards(true)},
		{"log.level", "[log]\nlevel = \"debug\"", logLevel(slog.LevelInfo), logLevel(slog.LevelDebug)},
		{"admin.allow_uids", "[admin]\nallow_uids = [65534]", adminAs(65534, 65534, 403), adminAs(65534, 65534, 200)},
		{"admin.allow_gids", "[admin]\nallow_gids = [65534]", adminAs(12345, 65534, 403), adminAs(12345, 65534, 200)},
		{"admin.token_file", "[admin]\ntoken_file = \"" + adminTokenFile + "\"", adminToken(""), adminToken("file-admin-token-0123456789abcdef")},
		{"admin.token_env", "[admin]\ntoken_env = \"WICKET_TEST_ADMIN_TOKEN\"", adminToken(""), adminToken("env-admin-token-0123456789abcdef")},
	}

	var covered []string
	for _, c := range cases {
		covered = append(covered, c.field)
		t.Run(c.field, func(t *testing.T) {
			if !strings.Contains(c.toml, strings.SplitN(c.field, ".", 2)[1]) {
				t.Fatalf("case %s does not set its field", c.field)
			}
			write(t, "")
			reload(t) // with the token the previous case's config requires
			adminTok = ""
			if c.before != nil {
				c.before(t, ti)
			}
			write(t, c.toml)
			reload(t)
			adminTok = adminTokenFor(c.field)
			c.after(t, ti)
		})
	}
	// Leave the base config in place for the cleanup's shutdown.
	write(t, "")
	reload(t)

	for _, f := range config.DynamicFields(&config.Issuer{}) {
		if !slices.Contains(covered, f) {
			t.Errorf("dynamic field %s has no reload case", f)
		}
	}
}

// adminTokenFor is the admin token the issuer requires once the case for
// field is applied.
func adminTokenFor(field string) string {
	switch field {
	case "admin.token_file":
		return "file-admin-token-0123456789abcdef"
	case "admin.token_env":
		return "env-admin-token-0123456789abcdef"
	}
	return ""
}
