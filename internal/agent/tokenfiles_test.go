package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wicket-sh/wicket/internal/agent/agenttest"
	"github.com/wicket-sh/wicket/internal/agent/feature/tokenfiles"
	"github.com/wicket-sh/wicket/internal/sockettest"
	"github.com/wicket-sh/wicket/internal/tokenfile"
	"github.com/wicket-sh/wicket/internal/wait"
)

// tokenFileCfg is one [[token_file]] for startGuest's extra config (which
// goes through Sprintf: a literal % is written %%).
func tokenFileCfg(path, aud string, kv ...string) string {
	s := fmt.Sprintf("[[token_file]]\npath = %q\naudience = %q\n", path, aud)
	for i := 0; i+1 < len(kv); i += 2 {
		s += fmt.Sprintf("%s = %q\n", kv[i], strings.ReplaceAll(kv[i+1], "%", "%%"))
	}
	return s
}

// tokenDir is a directory for token files outside the agent's own, so a
// test can look at them after the agent stopped; traversable, so another
// uid can reach the files.
func tokenDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "wt")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(d, 0o755)
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func readToken(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("token file: %v", err)
	}
	return string(b)
}

// fileStatus is one entry of /v1/status's token_files.
type fileStatus struct {
	Path                string    `json:"path"`
	Audience            string    `json:"audience"`
	LastRefresh         time.Time `json:"last_refresh"`
	ExpiresAt           time.Time `json:"expires_at"`
	LastError           string    `json:"last_error"`
	Failures            uint64    `json:"failures"`
	ConsecutiveFailures int       `json:"consecutive_failures"`
	Refreshes           uint64    `json:"refreshes"`
	Mode                string    `json:"mode"`
	GID                 int       `json:"gid"`
	TTL                 string    `json:"ttl"`
	ImpliedBy           string    `json:"implied_by"`
}

// fileGuest is a guest agent with a kept-alive admin client: these tests
// poll the admin socket, which takes 32 connections.
type fileGuest struct {
	*guest
	adminHC *http.Client
}

func startFileGuest(t *testing.T, is *agenttest.Issuer, extra string) *fileGuest {
	t.Helper()
	g := &fileGuest{guest: startGuest(t, is, extra)}
	g.adminHC = sockettest.Client(g.admin)
	t.Cleanup(g.adminHC.CloseIdleConnections)
	return g
}

// adminGet makes one GET request on the admin socket.
func (g *fileGuest) adminGet(t *testing.T, path string) string {
	t.Helper()
	resp, err := g.adminHC.Get("http://wicket" + path)
	if err != nil {
		t.Fatalf("admin %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("admin %s: %d %s", path, resp.StatusCode, b)
	}
	return string(b)
}

// fileStatuses reads /v1/status from the admin socket; raw is the body.
func (g *fileGuest) fileStatuses(t *testing.T) (byPath map[string]fileStatus, raw string) {
	t.Helper()
	r := struct{ Body string }{g.adminGet(t, "/v1/status")}
	var st struct {
		TokenFiles []fileStatus `json:"token_files"`
	}
	if err := json.Unmarshal([]byte(r.Body), &st); err != nil {
		t.Fatalf("status: %v", err)
	}
	byPath = map[string]fileStatus{}
	for _, f := range st.TokenFiles {
		byPath[f.Path] = f
	}
	return byPath, r.Body
}

// metric returns one sample's value from /metrics, -1 when absent.
func (g *fileGuest) metric(t *testing.T, name, path string) float64 {
	t.Helper()
	r := struct{ Body string }{g.adminGet(t, "/metrics")}
	re := regexp.MustCompile(`(?m)^` + name + `\{path="` + regexp.QuoteMeta(path) + `"\} (\S+)$`)
	m := re.FindStringSubmatch(r.Body)
	if m == nil {
		return -1
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}

// TestTokenFiles_Written: a [[token_file]] appears with its mode and
// group, holds a JWT for its audience that the guest API would also hand
// out (one cache), and stays in place when the agent stops. Its refresh
// timing is TestTokenFiles_RefreshTakesRenewedToken's (clock_test.go).
func TestTokenFiles_Written(t *testing.T) {
	is := agenttest.New(t)
	dir := tokenDir(t)
	path := filepath.Join(dir, "tokens", "app") // tokens/ does not exist yet
	t.Cleanup(func() {
		// Runs after the agent stopped (cleanups run last-in first-out).
		if _, err := os.Stat(path); err != nil {
			t.Errorf("token file not left in place at shutdown: %v", err)
		}
	})
	g := startFileGuest(t, is, tokenFileCfg(path, "app.example", "mode", "0440", "group", "65534", "refresh", "50%"))

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := g.agent.WaitStarted(ctx); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o440 || fi.Sys().(*syscall.Stat_t).Gid != 65534 {
		t.Errorf("file mode %v gid %d, want 0440 and 65534", fi.Mode(), fi.Sys().(*syscall.Stat_t).Gid)
	}
	if di, _ := os.Stat(filepath.Dir(path)); di.Mode().Perm() != 0o755 {
		t.Errorf("created directory mode %v, want 0755", di.Mode())
	}
	first := readToken(t, path)
	c := verifyJWT(t, is, first)
	if !c.Audience.Contains("app.example") || c.Subject != "acme:web:web-1" || c.Issuer != is.OIDCIssuer() {
		t.Errorf("claims %+v", c)
	}
	// The guest API serves the same cached token: one issuer call for both.
	if r := g.req(t, "POST", "/v1/tokens/oidc", `{"aud":"app.example"}`, nil); r.Status != 200 || r.Body != first {
		t.Errorf("guest API token differs from the file's (%d)", r.Status)
	}
	if os.Geteuid() == 0 {
		if err := readAs(path, 65534, 65534); err != nil {
			t.Errorf("the file's group cannot read it: %v", err)
		}
		if readAs(path, 65534, 65533) == nil {
			t.Error("a uid outside the file's group can read it")
		}
	} else {
		t.Log("not root: reads by other uids not checked")
	}

	if !strings.Contains(g.logs.String(), `msg="oidc token" token_file=`+path) {
		t.Error("file token issuance not logged")
	}
}

// TestTokenFiles_TTL: a [[token_file]] with ttl gets tokens of that life
// (its copy of the machine token lives as long, or the issuer would cap
// them), and the guest API's callers of the same audience keep theirs
// ([tokens] ttl); the file [azure] implies gets 1 h tokens, which outlive
// the Azure SDKs' caches of the file (up to 10 minutes) after the 80 %
// refresh. On the old code the ttl key was refused and the Azure file
// held 10-minute tokens.
func TestTokenFiles_TTL(t *testing.T) {
	is := agenttest.New(t)
	dir := tokenDir(t)
	long, az := filepath.Join(dir, "long"), filepath.Join(dir, "azure")
	g := startFileGuest(t, is, tokenFileCfg(long, "app.example", "ttl", "45m")+fmt.Sprintf(`
[azure]
client_id = "c"
tenant_id = "t"
token_file = %q
`, az))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := g.agent.WaitStarted(ctx); err != nil {
		t.Fatal(err)
	}
	life := func(tok string) time.Duration {
		c := verifyJWT(t, is, tok)
		return c.Expiry.Time().Sub(c.IssuedAt.Time())
	}
	// A copy reused for up to 10 s (machinetoken.go) may end that much
	// sooner than asked, and the JWT with it.
	near := func(got, want time.Duration) bool { return got <= want && got >= want-15*time.Second }
	fileTok := readToken(t, long)
	if l := life(fileTok); !near(l, 45*time.Minute) {
		t.Errorf("file with ttl 45m holds a token living %v", l)
	}
	if l := life(readToken(t, az)); !near(l, time.Hour) {
		t.Errorf("[azure] file holds a token living %v, want 1h", l)
	}
	r := g.req(t, "POST", "/v1/tokens/oidc", `{"aud":"app.example"}`, nil)
	if r.Status != 200 || r.Body == fileTok {
		t.Fatalf("guest API: %d, same token as the file: %v", r.Status, r.Body == fileTok)
	}
	if l := life(r.Body); !near(l, 10*time.Minute) {
		t.Errorf("guest API token for the file's audience lives %v, want [tokens] ttl 10m", l)
	}
	st, _ := g.fileStatuses(t)
	if st[long].TTL != "45m0s" || st[az].TTL != "1h0m0s" {
		t.Errorf("status ttl: %q, %q", st[long].TTL, st[az].TTL)
	}
}

// readAs reads path as uid/gid (no supplementary groups) in a child
// process; it needs root.
func readAs(path string, uid, gid uint32) error {
	cmd := exec.Command("cat", path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{}}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%v: %s", err, out)
	}
	return nil
}

// TestTokenFiles_Reload: a reload starts added files, stops removed ones
// (leaving the file), restarts changed ones and leaves the rest running.
func TestTokenFiles_Reload(t *testing.T) {
	is := agenttest.New(t)
	dir := tokenDir(t)
	a, b, c := filepath.Join(dir, "a"), filepath.Join(dir, "b"), filepath.Join(dir, "c")
	g := startFileGuest(t, is, tokenFileCfg(a, "aud-a")+tokenFileCfg(b, "aud-b"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := g.agent.WaitStarted(ctx); err != nil {
		t.Fatal(err)
	}
	runner := func(p string) *tokenfile.Refresher { return g.agent.tokenFiles().Refresher(p) }
	ra := runner(a)
	reload := func(extra string) {
		t.Helper()
		g.write(t, baseCfg+fmt.Sprintf("[issuer]\nurl = %q\n", is.URL)+extra)
		if _, err := g.agent.Reload(ctx); err != nil {
			t.Fatalf("reload: %v", err)
		}
	}

	reload(tokenFileCfg(a, "aud-a") + tokenFileCfg(c, "aud-c"))
	if err := g.agent.WaitStarted(ctx); err != nil {
		t.Fatal(err)
	}
	st, _ := g.fileStatuses(t)
	if _, ok := st[b]; ok || len(st) != 2 || st[c].Refreshes != 1 {
		t.Errorf("after reload: %+v", st)
	}
	if runner(a) != ra {
		t.Error("unchanged file's refresher was restarted")
	}
	if _, err := os.Stat(b); err != nil {
		t.Errorf("removed file's token not left in place: %v", err)
	}
	if n := strings.Count(g.logs.String(), `msg="token file started" token_file=`+a+" "); n != 1 {
		t.Errorf("file a started %d times", n)
	}

	// A changed mode restarts that file's refresher, which rewrites it.
	reload(tokenFileCfg(a, "aud-a", "mode", "0400") + tokenFileCfg(c, "aud-c"))
	if runner(a) == ra {
		t.Error("changed file kept its refresher")
	}
	wait.Eventually(t, 5*time.Second, func() bool {
		fi, err := os.Stat(a)
		return err == nil && fi.Mode().Perm() == 0o400
	})

	// An invalid reload changes nothing.
	ra = runner(a)
	g.write(t, baseCfg+fmt.Sprintf("[issuer]\nurl = %q\n", is.URL)+tokenFileCfg(a, "aud-a", "mode", "0444"))
	if _, err := g.agent.Reload(ctx); err == nil || !strings.Contains(err.Error(), "token_file[0].mode") {
		t.Errorf("reload with a mode for others: %v", err)
	}
	if runner(a) != ra || runner(c) == nil {
		t.Error("a failed reload touched the refreshers")
	}
}

// TestTokenFiles_StatusAndMetrics: /v1/status and /metrics describe each
// file and never hold its token.
func TestTokenFiles_StatusAndMetrics(t *testing.T) {
	is := agenttest.New(t)
	dir := tokenDir(t)
	path := filepath.Join(dir, "app")
	g := startFileGuest(t, is, tokenFileCfg(path, "app.example", "group", "65534")+
		"[aws]\nrole_arn = \"arn:aws:iam::123456789012:role/app\"\n"+fmt.Sprintf("token_file = %q\n", filepath.Join(dir, "aws")))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := g.agent.WaitStarted(ctx); err != nil {
		t.Fatal(err)
	}
	st, raw := g.fileStatuses(t)
	f := st[path]
	if f.Audience != "app.example" || f.LastRefresh.IsZero() || time.Until(f.ExpiresAt) < 5*time.Minute ||
		f.Failures != 0 || f.Refreshes != 1 || f.Mode != "0440" || f.GID != 65534 || f.ImpliedBy != "" {
		t.Errorf("status %+v", f)
	}
	if aw := st[filepath.Join(dir, "aws")]; aw.Audience != "sts.amazonaws.com" || aw.ImpliedBy != "aws" {
		t.Errorf("implied aws file: %+v", aw)
	}
	m := g.adminGet(t, "/metrics")
	for _, tok := range []string{readToken(t, path), readToken(t, filepath.Join(dir, "aws"))} {
		if strings.Contains(raw, tok) || strings.Contains(m, tok) || strings.Contains(raw, strings.Split(tok, ".")[1]) {
			t.Error("status or metrics hold a token")
		}
	}
	if strings.Contains(raw, "eyJ") {
		t.Error("status holds something that looks like a JWT")
	}
	if v := g.metric(t, "wicket_token_file_refreshes_total", path); v != 1 {
		t.Errorf("refreshes metric %v", v)
	}
	if v := g.metric(t, "wicket_token_file_failures_total", path); v != 0 {
		t.Errorf("failures metric %v", v)
	}
}

// TestTokenFiles_FailureKeepsOldFile: a write that fails (full file system
// as root, read-only directory otherwise) keeps the old file, is counted
// in /metrics and /v1/status, and the next refresh after the fault heals.
func TestTokenFiles_FailureKeepsOldFile(t *testing.T) {
	if testing.Short() {
		// The retry timing is TestRefresher_BacksOffOnErrors's; this one
		// needs a real refresh and a real retry on a full file system.
		t.Skip("waits for real refreshes: skipped in -short mode")
	}
	is := agenttest.New(t)
	is.SetTokenTTL(3 * time.Second)
	dir := tokenDir(t)
	var fill, heal func()
	if os.Geteuid() == 0 {
		// Root writes into a read-only directory anyway: fill a small
		// tmpfs instead. Registered before the agent starts, the unmount
		// runs after it stopped.
		if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", dir).CombinedOutput(); err != nil {
			sockettest.Unavailable(t, "cannot mount a tmpfs to fill (%v: %s)", err, strings.TrimSpace(string(out)))
		}
		t.Cleanup(func() { exec.Command("umount", dir).Run() })
		filler := filepath.Join(dir, "filler")
		fill = func() {
			f, err := os.Create(filler)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			chunk := make([]byte, 4096)
			for {
				if _, err := f.Write(chunk); err != nil {
					if !errors.Is(err, syscall.ENOSPC) {
						t.Fatalf("fill tmpfs: %v", err)
					}
					return
				}
			}
		}
		heal = func() { os.Remove(filler) }
	} else {
		fill = func() { os.Chmod(dir, 0o555) }
		heal = func() { os.Chmod(dir, 0o755) }
		t.Cleanup(heal)
	}
	path := filepath.Join(dir, "app")
	g := startFileGuest(t, is, tokenFileCfg(path, "app.example", "refresh", "50%"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := g.agent.WaitStarted(ctx); err != nil {
		t.Fatal(err)
	}
	old := readToken(t, path)
	fill()
	wait.Eventually(t, 10*time.Second, func() bool { return g.metric(t, "wicket_token_file_failures_total", path) >= 1 })
	if got := readToken(t, path); got != old {
		t.Error("the old file was not kept after a failed write")
	}
	st, _ := g.fileStatuses(t)
	if f := st[path]; f.Failures < 1 || f.ConsecutiveFailures < 1 || !strings.HasPrefix(f.LastError, "write failed") {
		t.Errorf("status after a failed write: %+v", f)
	}
	if v := g.metric(t, "wicket_token_file_consecutive_failures", path); v < 1 {
		t.Errorf("consecutive failures metric %v", v)
	}
	// No temporary file is left behind to fill the disk further.
	if ents, _ := os.ReadDir(dir); len(ents) > 2 {
		t.Errorf("directory holds %d entries", len(ents))
	}

	heal()
	wait.Eventually(t, 10*time.Second, func() bool {
		st, _ := g.fileStatuses(t)
		return st[path].ConsecutiveFailures == 0 && readToken(t, path) != old
	})
	verifyJWT(t, is, readToken(t, path))
}

func TestWorkloadEnv(t *testing.T) {
	is := agenttest.New(t)
	const role = "arn:aws:iam::123456789012:role/app"
	azure := "[azure]\nclient_id = \"cid\"\ntenant_id = \"tid\"\n"
	for _, tc := range []struct {
		name, extra string
		run         bool // wait for metadata; else the agent is only New
		want        []string
	}{
		{"nothing configured", "", true, []string{"WICKET_SOCKET=%s"}},
		{"spiffe workload api", "[spiffe]\nenabled = true\nsocket_path = \"%[1]s/spiffe.sock\"\n", false,
			[]string{"WICKET_SOCKET=%s", "SPIFFE_ENDPOINT_SOCKET=unix://%s/spiffe.sock"}},
		{"aws before metadata", "[aws]\nrole_arn = \"" + role + "\"\n", false,
			[]string{"WICKET_SOCKET=%s", "AWS_ROLE_ARN=" + role, "AWS_WEB_IDENTITY_TOKEN_FILE=/run/wicket/tokens/aws", "AWS_ROLE_SESSION_NAME=wicket"}},
		{"aws with metadata: the machine id", "[aws]\nrole_arn = \"" + role + "\"\ntoken_file = \"%[1]s/aws\"\n", true,
			[]string{"WICKET_SOCKET=%s", "AWS_ROLE_ARN=" + role, "AWS_WEB_IDENTITY_TOKEN_FILE=%s/aws", "AWS_ROLE_SESSION_NAME=m-0123abcd"}},
		{"aws session name", "[aws]\nrole_arn = \"" + role + "\"\nsession_name = \"web-1\"\n" + tokenFileCfg("%[1]s/sts", "sts.amazonaws.com"), false,
			[]string{"WICKET_SOCKET=%s", "AWS_ROLE_ARN=" + role, "AWS_WEB_IDENTITY_TOKEN_FILE=%s/sts", "AWS_ROLE_SESSION_NAME=web-1"}},
		{"azure", azure, false,
			[]string{"WICKET_SOCKET=%s", "AZURE_CLIENT_ID=cid", "AZURE_TENANT_ID=tid", "AZURE_FEDERATED_TOKEN_FILE=/run/wicket/tokens/azure", "AZURE_AUTHORITY_HOST=https://login.microsoftonline.com/"}},
		{"both", "[aws]\nrole_arn = \"" + role + "\"\nsession_name = \"s1\"\ntoken_file = \"%[1]s/aws\"\n" + azure + "token_file = \"%[1]s/az\"\nauthority_host = \"https://login.example/\"\n", false,
			[]string{"WICKET_SOCKET=%s", "AWS_ROLE_ARN=" + role, "AWS_WEB_IDENTITY_TOKEN_FILE=%s/aws", "AWS_ROLE_SESSION_NAME=s1",
				"AZURE_CLIENT_ID=cid", "AZURE_TENANT_ID=tid", "AZURE_FEDERATED_TOKEN_FILE=%s/az", "AZURE_AUTHORITY_HOST=https://login.example/"}},
		// Google's libraries look the project up in Cloud Resource Manager
		// when a client is created unless GOOGLE_CLOUD_PROJECT is set.
		{"gcp", "[gcp]\nproject = \"my-project\"\ncredentials_file = \"/etc/wicket/gcp.json\"\n", false,
			[]string{"WICKET_SOCKET=%s", "GOOGLE_CLOUD_PROJECT=my-project", "GOOGLE_APPLICATION_CREDENTIALS=/etc/wicket/gcp.json"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var a *Agent
			var run string
			if tc.run {
				g := startGuest(t, is, tc.extra)
				g.waitMetadata(t)
				a, run = g.agent, filepath.Join(g.dir, "run")
			} else {
				h := &harness{}
				dir := t.TempDir()
				h.cfgPath, run = filepath.Join(dir, "agent.toml"), filepath.Join(dir, "run")
				h.dir = dir
				h.write(t, baseCfg+fmt.Sprintf("[issuer]\nurl = %q\n", is.URL)+tc.extra)
				mt, err := ParseMachineToken(is.MachineToken(t))
				if err != nil {
					t.Fatal(err)
				}
				if a, err = New(Options{ConfigPath: h.cfgPath, MachineToken: mt}); err != nil {
					t.Fatal(err)
				}
			}
			got := a.WorkloadEnv()
			want := make([]string, len(tc.want))
			for i, w := range tc.want {
				want[i] = strings.ReplaceAll(w, "%s", run)
			}
			want[0] = "WICKET_SOCKET=" + filepath.Join(run, "api.sock")
			if strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Errorf("WorkloadEnv:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			for _, kv := range got {
				if strings.Contains(kv, "eyJ") || strings.Contains(kv, "FlyV1") {
					t.Errorf("a token in the environment: %s", kv)
				}
			}
		})
	}
}

// tokenFiles is the token files feature's instance (its refreshers).
func (a *Agent) tokenFiles() *tokenfiles.Refreshers {
	for _, b := range a.built {
		if r, ok := b.inst.(*tokenfiles.Refreshers); ok {
			return r
		}
	}
	return nil
}
