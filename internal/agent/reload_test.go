package agent

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wicket-sh/wicket/internal/agent/agenttest"
	"github.com/wicket-sh/wicket/internal/agent/builtin"
	"github.com/wicket-sh/wicket/internal/agent/feature"
	"github.com/wicket-sh/wicket/internal/agent/feature/oidctoken"
	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/config/configtest"
	"github.com/wicket-sh/wicket/internal/sockettest"
	"github.com/wicket-sh/wicket/internal/wait"
)

// TestReload_EveryDynamicFieldTakesEffect changes each dynamic field of
// the agent config in turn, reloads, and checks the visible effect: no
// component may keep a private copy of a dynamic value. The case list
// must name every field config.DynamicFields reports, so a new dynamic
// field without a case fails here.
func TestReload_EveryDynamicFieldTakesEffect(t *testing.T) {
	sockettest.RequireRoot(t) // admin allow_uids/gids are checked as other uids
	is := agenttest.New(t)
	tok := is.MachineToken(t)
	mt, err := ParseMachineToken(tok)
	if err != nil {
		t.Fatal(err)
	}
	base := `
[api]
socket_path = "%[1]s/api.sock"
socket_group = "65534"
[admin]
socket_path = "%[1]s/admin.sock"
socket_mode = "0660"
socket_group = "65534"
[issuer]
url = "` + is.URL + `"
[limits]
token_rate = 100.0
token_burst = 50
[spiffe]
enabled = true
socket_path = "%[1]s/spiffe.sock"
`
	level := new(slog.LevelVar)
	h := startAgentWith(t, base, fastRetries(Options{MachineToken: mt, LogLevel: level}), nil)
	g := &guest{harness: h, is: is, token: tok, hc: sockettest.Client(h.api)}
	t.Cleanup(g.hc.CloseIdleConnections)

	adminTok := "" // the admin token the running config requires
	hdr := func() map[string]string {
		if adminTok == "" {
			return nil
		}
		return map[string]string{"Authorization": "Bearer " + adminTok}
	}
	write := func(t *testing.T, extra string) {
		t.Helper()
		h.write(t, configtest.MergeTOML(base, extra))
	}
	reload := func(t *testing.T) {
		t.Helper()
		r := h.do("POST", h.admin, "/v1/reload", "", hdr())
		if r.Status != 200 || !strings.Contains(r.Body, `"restart_required": []`) {
			t.Fatalf("reload: %d %s %s", r.Status, r.Body, r.Err)
		}
	}
	token := func(t *testing.T, aud, pad string) sockettest.Result {
		t.Helper()
		return g.req(t, "POST", "/v1/tokens/oidc", `{"aud":"`+aud+`"`+pad+`}`, nil)
	}
	status := func(t *testing.T, r sockettest.Result, want int) {
		t.Helper()
		if r.Status != want {
			t.Errorf("status %d, want %d (%s %s)", r.Status, want, r.Body, r.Err)
		}
	}

	adminTokenFile := filepath.Join(h.dir, "admin.token")
	os.WriteFile(adminTokenFile, []byte("file-admin-token-0123456789abcdef"), 0o600)
	t.Setenv("WICKET_TEST_ADMIN_TOKEN", "env-admin-token-0123456789abcdef")
	up := newUpstream(t)
	tf := filepath.Join(h.dir, "tf")
	os.Mkdir(tf, 0o755)
	fileAppears := func(name string, want bool) func(*testing.T) {
		return func(t *testing.T) {
			p := filepath.Join(tf, name)
			if !want {
				time.Sleep(50 * time.Millisecond) // give a wrongly started refresher a chance
				if _, err := os.Stat(p); err == nil {
					t.Errorf("%s exists before the reload", name)
				}
				return
			}
			wait.Eventually(t, 5*time.Second, func() bool { _, err := os.Stat(p); return err == nil })
		}
	}
	envHas := func(want string, has bool) func(*testing.T) {
		return func(t *testing.T) {
			if got := slices.Contains(h.agent.WorkloadEnv(), want); got != has {
				t.Errorf("workload env has %s: %v, want %v (%v)", want, got, has, h.agent.WorkloadEnv())
			}
		}
	}
	// refreshFraction is where in a fresh token's life the cache renews it.
	refreshFraction := func(want float64) func(*testing.T) {
		return func(t *testing.T) {
			aud := "refresh-" + strconv.FormatFloat(want, 'f', 2, 64)
			status(t, token(t, aud, ""), 200)
			e, ok := g.agent.tokens.(*oidctoken.Feature).Cached(aud)
			if !ok {
				t.Fatalf("%s not cached", aud)
			}
			got := float64(e.RefreshAt.Sub(e.Fetched)) / float64(e.Expires.Sub(e.Fetched))
			if got < want-0.02 || got > want+0.02 {
				t.Errorf("refresh at %.2f of the life, want %.2f", got, want)
			}
		}
	}
	// jwtLife is the lifetime of a token the agent fetches for a new audience.
	jwtLife := func(want time.Duration) func(*testing.T) {
		return func(t *testing.T) {
			r := g.req(t, "POST", "/v1/tokens/oidc", `{"aud":"life-`+want.String()+`"}`, map[string]string{"Accept": "application/json"})
			var out struct {
				ExpiresAt time.Time `json:"expires_at"`
			}
			json.Unmarshal([]byte(r.Body), &out)
			if got := time.Until(out.ExpiresAt).Round(time.Minute); r.Status != 200 || got != want {
				t.Errorf("token: %d, lives %v, want %v", r.Status, got, want)
			}
		}
	}
	// evicts reports whether asking for three audiences evicts the first.
	evicts := func(want bool) func(*testing.T) {
		return func(t *testing.T) {
			p := fmt.Sprintf("evict-%v-", want)
			for _, a := range []string{"a", "b", "c"} {
				status(t, token(t, p+a, ""), 200)
			}
			before := is.TokenCalls.Load()
			status(t, token(t, p+"a", ""), 200)
			if got := is.TokenCalls.Load() > before; got != want {
				t.Errorf("first audience refetched: %v, want %v", got, want)
			}
		}
	}
	// bodyLimit sends a 3,000-byte body: over the reloaded 2,048-byte
	// limit, and small enough that the client writes the whole request
	// in one write (its buffer is 4 KiB). A request in two writes can
	// meet a connection the agent closed after its 413, and the client
	// then reports the broken pipe, not the reply.
	bodyLimit := func(want int) func(*testing.T) {
		return func(t *testing.T) {
			status(t, token(t, "body", strings.Repeat(" ", 3000)), want)
		}
	}
	// bodyTimeout sends headers announcing a body that never comes.
	bodyTimeout := func(t *testing.T) {
		c, err := net.Dial("unix", h.api)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprint(c, "POST /v1/tokens/oidc HTTP/1.1\r\nHost: wicket\r\nContent-Length: 50\r\n\r\n{")
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 64)
		n, _ := c.Read(buf)
		if !strings.HasPrefix(string(buf[:n]), "HTTP/1.1 408") {
			t.Errorf("slow body answered %q, want 408", buf[:n])
		}
	}
	// refillsQuickly drains the caller's bucket, pauses briefly and
	// reports whether the next request is served: at 100/s the pause
	// refills ~5 tokens, at 0.01/s not one. (The base rate is low enough
	// that requests drain the bucket faster than it refills, even under
	// the race detector.)
	refillsQuickly := func(t *testing.T) bool {
		drained := false
		for range 200 {
			if token(t, "rate", "").Status == 429 {
				drained = true
				break
			}
		}
		if !drained {
			t.Fatal("no 429 in 200 requests")
		}
		time.Sleep(50 * time.Millisecond)
		return token(t, "rate", "").Status == 200
	}
	allowed := func(t *testing.T) int {
		n := 0
		for range 30 {
			if token(t, "burst", "").Status == 429 {
				break
			}
			n++
		}
		return n
	}
	adminAs := func(uid, gid uint32, want int) func(*testing.T) {
		return func(t *testing.T) {
			if r := sockettest.RequestAs(t, uid, gid, h.admin, "GET", "/v1/health", "", nil); r.Status != want {
				t.Errorf("admin as %d:%d: %d, want %d", uid, gid, r.Status, want)
			}
		}
	}
	adminToken := func(tokenSet string) func(*testing.T) {
		return func(t *testing.T) {
			plain := h.do("GET", h.admin, "/v1/health", "", nil).Status
			if tokenSet == "" {
				if plain != 200 {
					t.Errorf("admin without token: %d, want 200", plain)
				}
				return
			}
			with := h.do("GET", h.admin, "/v1/health", "", map[string]string{"Authorization": "Bearer " + tokenSet}).Status
			if plain != 403 || with != 200 {
				t.Errorf("admin token: without %d (want 403), with %d (want 200)", plain, with)
			}
		}
	}

	type reloadCase struct {
		field         string // as config.DynamicFields names it
		toml          string // merged into base
		before, after func(*testing.T)
	}
	cases := []reloadCase{
		{"log.level", "[log]\nlevel = \"debug\"",
			func(t *testing.T) {
				if level.Level() != slog.LevelInfo {
					t.Errorf("level %v", level.Level())
				}
			},
			func(t *testing.T) {
				if level.Level() != slog.LevelDebug {
					t.Errorf("level %v", level.Level())
				}
			}},
		{"tokens.refresh_at", "[tokens]\nrefresh_at = 0.5", refreshFraction(0.8), refreshFraction(0.5)},
		{"tokens.ttl", "[tokens]\nttl = \"2m\"", jwtLife(10 * time.Minute), jwtLife(2 * time.Minute)},
		{"tokens.max_audiences", "[tokens]\nmax_audiences = 2", evicts(false), evicts(true)},
		{"limits.max_body_bytes", "[limits]\nmax_body_bytes = 2048", bodyLimit(200), bodyLimit(413)},
		{"limits.body_timeout", "[limits]\nbody_timeout = \"200ms\"", nil, bodyTimeout},
		{"limits.token_rate", "[limits]\ntoken_rate = 0.01",
			func(t *testing.T) {
				if !refillsQuickly(t) {
					t.Error("at 100/s a 50ms pause did not refill the bucket")
				}
			},
			func(t *testing.T) {
				if refillsQuickly(t) {
					t.Error("at 0.01/s a 50ms pause refilled the bucket")
				}
			}},
		{"limits.token_burst", "[limits]\ntoken_burst = 3\ntoken_rate = 0.01",
			func(t *testing.T) {
				// Refill the bucket at the base rate (100/s) first.
				time.Sleep(600 * time.Millisecond)
				status(t, token(t, "burst", ""), 200)
			},
			func(t *testing.T) {
				if n := allowed(t); n != 3 {
					t.Errorf("%d requests before 429 with burst 3", n)
				}
			}},
		{"policy", "[[policy]]\nuids = [0]\nallow = [\"GET /v1/health\"]",
			func(t *testing.T) { status(t, token(t, "policy", ""), 200) },
			func(t *testing.T) {
				status(t, token(t, "policy", ""), 403)
				status(t, g.req(t, "GET", "/v1/health", "", nil), 200)
			}},
		{"proxy.route", "[[proxy.route]]\nmatch = \"GET /direct/*\"\nupstream = \"" + up.srv.URL + "\"",
			func(t *testing.T) { status(t, g.req(t, "GET", "/direct/x", "", nil), 404) },
			func(t *testing.T) { status(t, g.req(t, "GET", "/direct/x", "", nil), 200) }},
		{"issuer.request_timeout", "[issuer]\nrequest_timeout = \"200ms\"",
			nil,
			func(t *testing.T) {
				is.SetTokenDelay(3 * time.Second)
				defer is.SetTokenDelay(0)
				if r := token(t, "slow-issuer", ""); r.Status < 500 {
					t.Errorf("slow issuer: %d, want a 5xx after the request timeout", r.Status)
				}
			}},
		{"token_file", "[[token_file]]\npath = \"" + tf + "/plain\"\naudience = \"files\"", fileAppears("plain", false), fileAppears("plain", true)},
		{"svid_file", "[[svid_file]]\ndir = \"" + tf + "/svid\"", fileAppears("svid/svid.pem", false), fileAppears("svid/svid.pem", true)},
		{"aws.role_arn", "[aws]\nrole_arn = \"arn:aws:iam::123456789012:role/r\"\ntoken_file = \"" + tf + "/aws\"",
			envHas("AWS_ROLE_ARN=arn:aws:iam::123456789012:role/r", false), func(t *testing.T) {
				envHas("AWS_ROLE_ARN=arn:aws:iam::123456789012:role/r", true)(t)
				fileAppears("aws", true)(t)
			}},
		{"aws.session_name", "[aws]\nrole_arn = \"arn:aws:iam::123456789012:role/r\"\nsession_name = \"chosen\"\ntoken_file = \"" + tf + "/aws\"",
			envHas("AWS_ROLE_SESSION_NAME=chosen", false), envHas("AWS_ROLE_SESSION_NAME=chosen", true)},
		{"aws.token_file", "[aws]\nrole_arn = \"arn:aws:iam::123456789012:role/r\"\ntoken_file = \"" + tf + "/aws2\"",
			fileAppears("aws2", false), func(t *testing.T) {
				envHas("AWS_WEB_IDENTITY_TOKEN_FILE="+tf+"/aws2", true)(t)
				fileAppears("aws2", true)(t)
			}},
		{"azure.client_id", "[azure]\nclient_id = \"cid\"\ntenant_id = \"tid\"\ntoken_file = \"" + tf + "/az\"",
			envHas("AZURE_CLIENT_ID=cid", false), func(t *testing.T) {
				envHas("AZURE_CLIENT_ID=cid", true)(t)
				fileAppears("az", true)(t)
			}},
		{"azure.tenant_id", "[azure]\nclient_id = \"cid\"\ntenant_id = \"tid2\"\ntoken_file = \"" + tf + "/az\"",
			envHas("AZURE_TENANT_ID=tid2", false), envHas("AZURE_TENANT_ID=tid2", true)},
		{"azure.token_file", "[azure]\nclient_id = \"cid\"\ntenant_id = \"tid\"\ntoken_file = \"" + tf + "/az2\"",
			fileAppears("az2", false), func(t *testing.T) {
				envHas("AZURE_FEDERATED_TOKEN_FILE="+tf+"/az2", true)(t)
				fileAppears("az2", true)(t)
			}},
		{"azure.authority_host", "[azure]\nclient_id = \"cid\"\ntenant_id = \"tid\"\ntoken_file = \"" + tf + "/az\"\nauthority_host = \"https://login.example.test/\"",
			envHas("AZURE_AUTHORITY_HOST=https://login.example.test/", false), envHas("AZURE_AUTHORITY_HOST=https://login.example.test/", true)},
		{"gcp.project", "[gcp]\nproject = \"my-project\"", envHas("GOOGLE_CLOUD_PROJECT=my-project", false), envHas("GOOGLE_CLOUD_PROJECT=my-project", true)},
		{"gcp.credentials_file", "[gcp]\ncredentials_file = \"/etc/wicket/gcp.json\"",
			envHas("GOOGLE_APPLICATION_CREDENTIALS=/etc/wicket/gcp.json", false), envHas("GOOGLE_APPLICATION_CREDENTIALS=/etc/wicket/gcp.json", true)},
		{"admin.allow_uids", "[admin]\nallow_uids = [65534]", adminAs(65534, 65534, 403), adminAs(65534, 65534, 200)},
		{"admin.allow_gids", "[admin]\nallow_gids = [65534]", adminAs(12345, 65534, 403), adminAs(12345, 65534, 200)},
		{"admin.token_file", "[admin]\ntoken_file = \"" + adminTokenFile + "\"", adminToken(""), adminToken("file-admin-token-0123456789abcdef")},
		{"admin.token_env", "[admin]\ntoken_env = \"WICKET_TEST_ADMIN_TOKEN\"", adminToken(""), adminToken("env-admin-token-0123456789abcdef")},
	}

	var covered []string
	for _, c := range cases {
		covered = append(covered, c.field)
		t.Run(c.field, func(t *testing.T) {
			key := c.field[strings.LastIndex(c.field, ".")+1:]
			if !strings.Contains(c.toml, key) {
				t.Fatalf("case %s does not set its field", c.field)
			}
			write(t, "")
			reload(t) // with the token the previous case's config requires
			adminTok = ""
			time.Sleep(100 * time.Millisecond) // the base rate (100/s) refills ~10 of the caller's tokens
			if c.before != nil {
				c.before(t)
			}
			write(t, c.toml)
			reload(t)
			switch c.field {
			case "admin.token_file":
				adminTok = "file-admin-token-0123456789abcdef"
			case "admin.token_env":
				adminTok = "env-admin-token-0123456789abcdef"
			}
			c.after(t)
		})
	}
	write(t, "")
	reload(t)

	// Every dynamic key of the core and of every registered feature's
	// section.
	for _, f := range config.AgentDynamicFields(feature.Sections(builtin.Features())) {
		if !slices.Contains(covered, f) {
			t.Errorf("dynamic field %s has no reload case", f)
		}
	}
}
