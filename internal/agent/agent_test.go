package agent

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/sockettest"
)

func TestMain(m *testing.M) { sockettest.Main(m) }

type harness struct {
	dir, cfgPath, api, admin string
	agent                    *Agent
	logs                     *sockettest.Buffer
	stop                     func() // ends the agent and waits for it; idempotent
}

// startAgent writes cfg (with %[1]s replaced by the socket directory) and
// runs an agent on it until the test ends.
func startAgent(t *testing.T, cfg string, overrides ...config.Override) *harness {
	t.Helper()
	return startAgentWith(t, cfg, Options{Overrides: overrides}, nil)
}

// startAgentWith is startAgent with more options; before, when set, runs
// between New and Run.
func startAgentWith(t *testing.T, cfg string, opts Options, before func(*Agent)) *harness {
	t.Helper()
	dir, err := os.MkdirTemp("", "wa")
	if err != nil {
		t.Fatal(err)
	}
	// Reachable by the other-uid helper: traversable, not writable.
	os.Chmod(dir, 0o755)
	t.Cleanup(func() { os.RemoveAll(dir) })
	h := &harness{
		dir:     dir,
		cfgPath: filepath.Join(dir, "agent.toml"),
		api:     filepath.Join(dir, "run", "api.sock"),
		admin:   filepath.Join(dir, "run", "admin.sock"),
		logs:    &sockettest.Buffer{},
	}
	h.write(t, cfg)
	opts.ConfigPath = h.cfgPath
	opts.Logger = slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	a, err := New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	h.agent = a
	if before != nil {
		before(a)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	var stopOnce sync.Once
	h.stop = func() {
		stopOnce.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(h.stop)
	select {
	case <-a.Ready():
	case err := <-done:
		t.Fatalf("Run: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("agent not ready")
	}
	return h
}

func (h *harness) write(t *testing.T, cfg string) {
	t.Helper()
	body := fmt.Sprintf(cfg, filepath.Join(h.dir, "run"))
	if err := os.WriteFile(h.cfgPath, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}

func (h *harness) do(method, sock, path, body string, hdr map[string]string) sockettest.Result {
	return sockettest.Do(sock, method, path, body, hdr)
}

const baseCfg = `
[api]
socket_path = "%[1]s/api.sock"
socket_group = "65534"
[admin]
socket_path = "%[1]s/admin.sock"
`

func TestHealthAndStatus(t *testing.T) {
	h := startAgent(t, baseCfg)
	if r := h.do("GET", h.api, "/v1/health", "", nil); r.Status != 200 || r.Body != "{\"status\":\"ok\"}\n" {
		t.Errorf("api health: %+v", r)
	}
	r := h.do("GET", h.admin, "/v1/status", "", nil)
	for _, want := range []string{`"config_generation": 1`, `"uptime_seconds"`, `"version"`, `"api"`, `"admin"`, `"open"`, `"api_denied"`} {
		if !strings.Contains(r.Body, want) {
			t.Errorf("status lacks %s: %s", want, r.Body)
		}
	}
	m := h.do("GET", h.admin, "/metrics", "", nil)
	if m.Status != 200 || !strings.Contains(m.Body, "wicket_connections_open{socket=\"api\"}") || !strings.Contains(m.Body, "wicket_config_generation 1") {
		t.Errorf("metrics: %d %s", m.Status, m.Body)
	}
}

func TestReload(t *testing.T) {
	h := startAgent(t, baseCfg+"[log]\nlevel = \"info\"\n")

	// Valid change → next generation, nothing to restart.
	h.write(t, baseCfg+"[log]\nlevel = \"debug\"\n")
	r := h.do("POST", h.admin, "/v1/reload", "", nil)
	if r.Status != 200 || !strings.Contains(r.Body, `"generation": 2`) || !strings.Contains(r.Body, `"restart_required": []`) {
		t.Fatalf("valid reload: %+v", r)
	}
	if h.agent.Config().Log.Level != "debug" {
		t.Errorf("dynamic field not applied")
	}

	// Invalid file → old config kept, generic reply, details in the log.
	h.write(t, baseCfg+"[log]\nlevel = \"loud\"\n[api]\nbogus_key_xyz = 1\n")
	r = h.do("POST", h.admin, "/v1/reload", "", nil)
	if r.Status != 500 || r.Body != "{\"error\":\"reload failed\",\"code\":\"reload_failed\"}\n" {
		t.Fatalf("invalid reload: %d %q", r.Status, r.Body)
	}
	if h.agent.Config().Log.Level != "debug" || h.agent.rt.Load().generation != 2 {
		t.Errorf("failed reload changed the running config")
	}
	for _, leak := range []string{h.dir, "loud", "bogus_key_xyz", "toml"} {
		if strings.Contains(r.Body, leak) {
			t.Errorf("error reply leaks %q", leak)
		}
	}
	if logs := h.logs.String(); !strings.Contains(logs, "reload failed") || !strings.Contains(logs, "agent.toml") {
		t.Errorf("log lacks the failure details:\n%s", logs)
	}

	// Static field changed → applied dynamic part, static listed.
	h.write(t, strings.Replace(baseCfg, "%[1]s/api.sock", "%[1]s/api2.sock", 1)+"[log]\nlevel = \"warn\"\n")
	r = h.do("POST", h.admin, "/v1/reload", "", nil)
	if r.Status != 200 || !strings.Contains(r.Body, `"api.socket_path"`) || !strings.Contains(r.Body, `"generation": 3`) {
		t.Fatalf("static change reload: %+v", r)
	}
	if got := h.agent.Config(); got.Log.Level != "warn" || got.API.Path != h.api {
		t.Errorf("after static change: level %q path %q", got.Log.Level, got.API.Path)
	}
	if _, err := os.Stat(h.api); err != nil {
		t.Errorf("running socket disturbed: %v", err)
	}
}

// S-flags: a flag override applies on reload exactly as at startup, so it
// neither reverts to the file's value nor shows up as a restart.
func TestReload_OverridesApplied(t *testing.T) {
	dir, _ := os.MkdirTemp("", "wo")
	defer os.RemoveAll(dir)
	apiPath := filepath.Join(dir, "flag-api.sock")
	cfg := `
[api]
socket_path = "/nonexistent-wicket-test/api.sock"
[admin]
socket_path = "%[1]s/admin.sock"
[log]
level = "info"
`
	h := startAgent(t, cfg,
		func(c *config.Agent) { c.API.Path = apiPath },
		func(c *config.Agent) { c.Log.Level = "error" })
	if r := h.do("GET", apiPath, "/v1/health", "", nil); r.Status != 200 {
		t.Fatalf("override socket not used: %+v", r)
	}
	r := h.do("POST", h.admin, "/v1/reload", "", nil)
	if r.Status != 200 || !strings.Contains(r.Body, `"restart_required": []`) {
		t.Fatalf("reload with overrides: %+v", r)
	}
	if got := h.agent.Config(); got.API.Path != apiPath || got.Log.Level != "error" {
		t.Errorf("override lost on reload: path %q level %q", got.API.Path, got.Log.Level)
	}
}

func TestErrors_NoEcho(t *testing.T) {
	h := startAgent(t, baseCfg)
	evil := "/v1/zz<script>EVIL%00marker"
	for _, sock := range []string{h.api, h.admin} {
		for _, path := range []string{evil, "/v1/../../etc/passwd", "/v1/EVILmarker"} {
			r := h.do("GET", sock, path, "", nil)
			if r.Status < 400 || r.Status >= 500 {
				t.Errorf("%s %s: status %d", filepath.Base(sock), path, r.Status)
			}
			for _, leak := range []string{"EVIL", "script", "passwd", "marker", h.dir} {
				if strings.Contains(r.Body, leak) || strings.Contains(fmt.Sprint(r.Header), leak) {
					t.Errorf("%s %s: reply echoes %q: %q %v", filepath.Base(sock), path, leak, r.Body, r.Header)
				}
			}
			if !strings.HasPrefix(r.Body, `{"error":`) {
				t.Errorf("%s %s: not a JSON error: %q", filepath.Base(sock), path, r.Body)
			}
		}
	}
	r := h.do("DELETE", h.admin, "/v1/reload", "", nil)
	if r.Status != 405 || !strings.Contains(r.Header["Allow"], "POST") {
		t.Errorf("wrong method: %+v", r)
	}
}

// S-peer: a uid outside the policy gets 403 on the API socket and is logged;
// a policy change by reload takes effect without a restart.
func TestPeerPolicy_OtherUIDDenied(t *testing.T) {
	sockettest.RequireRoot(t)
	h := startAgent(t, baseCfg)
	r := sockettest.RequestAs(t, 65534, 65534, h.api, "GET", "/v1/health", "", nil)
	if r.Status != 403 || r.Body != "{\"error\":\"forbidden\",\"code\":\"forbidden\"}\n" {
		t.Fatalf("uid 65534 on api: %+v", r)
	}
	if logs := h.logs.String(); !strings.Contains(logs, "request denied") || !strings.Contains(logs, "peer_uid=65534") || !strings.Contains(logs, "peer_pid=") {
		t.Errorf("denial not logged with peer identity:\n%s", logs)
	}
	// Root still gets in under the default policy.
	if r := h.do("GET", h.api, "/v1/health", "", nil); r.Status != 200 {
		t.Errorf("root: %+v", r)
	}

	h.write(t, baseCfg+"[[policy]]\nname=\"nobody\"\nuids=[65534]\nallow=[\"GET /v1/health\"]\n")
	if r := h.do("POST", h.admin, "/v1/reload", "", nil); r.Status != 200 {
		t.Fatalf("reload: %+v", r)
	}
	if r := sockettest.RequestAs(t, 65534, 65534, h.api, "GET", "/v1/health", "", nil); r.Status != 200 {
		t.Errorf("after policy reload uid 65534: %+v", r)
	}
	// Now only the rules apply: root is not special.
	if r := h.do("GET", h.api, "/v1/health", "", nil); r.Status != 403 {
		t.Errorf("root without a rule: %+v", r)
	}
}

func TestAdmin_OtherUIDDeniedThenAllowed(t *testing.T) {
	sockettest.RequireRoot(t)
	cfg := baseCfg + "socket_group = \"65534\"\nsocket_mode = \"0660\"\n"
	h := startAgent(t, cfg)
	r := sockettest.RequestAs(t, 65534, 65534, h.admin, "POST", "/v1/reload", "", nil)
	if r.Status != 403 {
		t.Fatalf("uid 65534 on admin: %+v", r)
	}
	if h.agent.rt.Load().generation != 1 {
		t.Error("denied reload was carried out")
	}
	if logs := h.logs.String(); !strings.Contains(logs, "outcome=denied_peer") || !strings.Contains(logs, "peer_uid=65534") {
		t.Errorf("denied admin call not audited:\n%s", logs)
	}
	h.write(t, cfg+"allow_uids = [65534]\n")
	if r := h.do("POST", h.admin, "/v1/reload", "", nil); r.Status != 200 {
		t.Fatalf("reload: %+v", r)
	}
	if r := sockettest.RequestAs(t, 65534, 65534, h.admin, "GET", "/v1/status", "", nil); r.Status != 200 {
		t.Errorf("allowed uid: %+v", r)
	}
}

// S-token: with an admin token configured, even root needs it.
func TestAdmin_Token(t *testing.T) {
	dir := t.TempDir()
	tokFile := filepath.Join(dir, "admin-token")
	token := "s3cret-admin-token-0123456789"
	os.WriteFile(tokFile, []byte(token+"\n"), 0o600)
	h := startAgent(t, baseCfg+"token_file = \""+tokFile+"\"\n")
	for _, tc := range []struct {
		auth string
		want int
	}{
		{"", 403},
		{"Bearer wrong", 403},
		{"Bearer " + token[:len(token)-1], 403},
		{"Basic " + token, 403},
		{"Bearer " + token, 200},
	} {
		hdr := map[string]string{}
		if tc.auth != "" {
			hdr["Authorization"] = tc.auth
		}
		if r := h.do("GET", h.admin, "/v1/status", "", hdr); r.Status != tc.want {
			t.Errorf("auth %q: status %d, want %d", tc.auth, r.Status, tc.want)
		}
	}
	if strings.Contains(h.logs.String(), token) {
		t.Error("admin token appears in the log")
	}
	// A token file others can read is refused at load.
	os.Chmod(tokFile, 0o644)
	if _, err := New(Options{ConfigPath: h.cfgPath}); err == nil {
		t.Error("world-readable token file accepted")
	}
}

func TestReloads_Serialized(t *testing.T) {
	h := startAgent(t, baseCfg)
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h.agent.Reload(context.Background())
		}()
	}
	wg.Wait()
	if g := h.agent.rt.Load().generation; g != 21 {
		t.Errorf("generation after 20 concurrent reloads = %d, want 21", g)
	}
}
