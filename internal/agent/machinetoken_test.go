package agent

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/agent/agenttest"
	"github.com/wicket-sh/wicket/internal/sockettest"
	"github.com/wicket-sh/wicket/internal/wait"
)

func writeTokenFile(t *testing.T, tok string, mode fs.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "machine-token")
	if err := os.WriteFile(p, []byte(tok+"\n"), mode); err != nil {
		t.Fatal(err)
	}
	os.Chmod(p, mode)
	return p
}

func TestMachineTokenFromFile(t *testing.T) {
	is := agenttest.New(t)
	tok := is.MachineToken(t)

	t.Run("read and kept", func(t *testing.T) {
		p := writeTokenFile(t, tok, 0o600)
		mt, err := MachineTokenFromFile(p, false)
		if err != nil || mt.IsZero() {
			t.Fatalf("read: %v", err)
		}
		if _, err := os.Stat(p); err != nil {
			t.Errorf("file removed without token_unlink: %v", err)
		}
	})
	t.Run("read and unlinked", func(t *testing.T) {
		p := writeTokenFile(t, tok, 0o400)
		if _, err := MachineTokenFromFile(p, true); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("file not unlinked: %v", err)
		}
	})
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T) string
		want  string
	}{
		{"group readable", func(t *testing.T) string { return writeTokenFile(t, tok, 0o640) }, "group or others"},
		{"world readable", func(t *testing.T) string { return writeTokenFile(t, tok, 0o604) }, "group or others"},
		{"symlink", func(t *testing.T) string {
			real := writeTokenFile(t, tok, 0o600)
			link := filepath.Join(t.TempDir(), "link")
			os.Symlink(real, link)
			return link
		}, "symlink"},
		{"directory", func(t *testing.T) string { return t.TempDir() }, "not a regular file"},
		{"garbage", func(t *testing.T) string { return writeTokenFile(t, "fm2_NOTATOKENsecretish", 0o600) }, "malformed"},
		{"missing", func(t *testing.T) string { return filepath.Join(t.TempDir(), "none") }, "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.setup(t)
			_, err := MachineTokenFromFile(p, true)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "NOTATOKEN") || strings.Contains(err.Error(), tok[4:24]) {
				t.Errorf("error quotes the file's content: %v", err)
			}
			if tc.name == "group readable" {
				if _, err := os.Stat(p); err != nil {
					t.Errorf("refused file was unlinked")
				}
			}
		})
	}
}

func TestMachineTokenFromFD(t *testing.T) {
	is := agenttest.New(t)
	tok := is.MachineToken(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	w.WriteString(tok + "\n")
	w.Close()
	// Hand over a duplicate and close r: r's finalizer would otherwise
	// close its descriptor number again later, whatever it then is.
	fd, err := syscall.Dup(int(r.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	mt, err := MachineTokenFromFD(fd)
	if err != nil || mt.IsZero() {
		t.Fatalf("from fd: %v", err)
	}
	// The descriptor is closed after reading.
	if _, _, errno := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_GETFD, 0); errno != syscall.EBADF {
		t.Errorf("fd %d still open after reading (%v)", fd, errno)
	}
	if _, err := MachineTokenFromFD(-1); err == nil {
		t.Error("negative fd accepted")
	}
}

// The env var is taken and unset by New, whatever else happens.
func TestMachineTokenFromEnv(t *testing.T) {
	is := agenttest.New(t)
	tok := is.MachineToken(t)
	t.Setenv(api.MachineTokenEnv, tok)
	g := &guest{is: is, token: tok}
	g.harness = startAgentWith(t, baseCfg+fmt.Sprintf("[issuer]\nurl = %q\n", is.URL), fastRetries(Options{}), nil)
	if _, set := os.LookupEnv(api.MachineTokenEnv); set {
		t.Fatal("WICKET_MACHINE_TOKEN still set after New")
	}
	for _, kv := range os.Environ() {
		if strings.Contains(kv, tok[4:]) {
			t.Fatal("token still in the environment")
		}
	}
	if g.harness.agent.tokenSource != "env" {
		t.Errorf("source = %q", g.harness.agent.tokenSource)
	}
	// The token works: metadata arrives.
	wait.Eventually(t, 5*time.Second, func() bool {
		return sockettest.Do(g.api, "GET", "/v1/metadata/region", "", nil).Body == "ams"
	})
}

func TestMachineTokenFileViaConfig_Unlinked(t *testing.T) {
	is := agenttest.New(t)
	p := writeTokenFile(t, is.MachineToken(t), 0o600)
	h := startAgentWith(t, baseCfg+fmt.Sprintf("[issuer]\nurl = %q\ntoken_file = %q\ntoken_unlink = true\n", is.URL, p), fastRetries(Options{}), nil)
	if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("token file not unlinked: %v", err)
	}
	wait.Eventually(t, 5*time.Second, func() bool {
		return sockettest.Do(h.api, "GET", "/v1/metadata/region", "", nil).Body == "ams"
	})
}

func TestMachineTokenSources_Conflicts(t *testing.T) {
	is := agenttest.New(t)
	tok := is.MachineToken(t)
	mt, _ := ParseMachineToken(tok)
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "agent.toml")
	write := func(body string) {
		os.WriteFile(cfgPath, []byte(fmt.Sprintf(baseCfg, dir)+body), 0o600)
	}
	issuer := fmt.Sprintf("[issuer]\nurl = %q\n", is.URL)
	for _, tc := range []struct {
		name, cfg string
		env       bool
		opt       bool
		want      string
	}{
		{"option and env", issuer, true, true, "more than once"},
		{"file and option", issuer + fmt.Sprintf("token_file = %q\n", writeTokenFile(t, tok, 0o600)), false, true, "more than once"},
		{"issuer without token", issuer, false, false, "no machine token"},
		{"token without issuer", "", false, true, "issuer.url is not set"},
		{"malformed env", issuer, true, false, "malformed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			write(tc.cfg)
			if tc.env {
				v := tok
				if tc.name == "malformed env" {
					v = "fm2_bogusSECRETbytes"
				}
				t.Setenv(api.MachineTokenEnv, v)
			}
			opts := Options{ConfigPath: cfgPath}
			if tc.opt {
				opts.MachineToken = mt
			}
			_, err := New(opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: %v, want %q", err, tc.want)
			}
			if strings.Contains(err.Error(), tok[4:24]) || strings.Contains(err.Error(), "SECRET") {
				t.Errorf("error quotes the token: %v", err)
			}
			if _, set := os.LookupEnv(api.MachineTokenEnv); set {
				t.Error("env var left set after a failed New")
			}
		})
	}
}

// holder has the token in an unexported field, where fmt cannot call its
// methods.
type holder struct {
	name string
	tok  MachineToken
}

func TestMachineToken_NeverPrints(t *testing.T) {
	is := agenttest.New(t)
	tok := is.MachineToken(t)
	mt, err := ParseMachineToken(tok)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d"} {
		out = append(out, fmt.Sprintf(verb, mt), fmt.Sprintf(verb, &mt), fmt.Sprintf(verb, holder{"h", mt}),
			fmt.Sprintf(verb, struct{ T MachineToken }{mt}), fmt.Sprintf(verb, []MachineToken{mt}))
	}
	j, _ := json.Marshal(struct {
		T MachineToken
		P *MachineToken
	}{mt, &mt})
	out = append(out, string(j), fmt.Sprint(mt), mt.String())
	var buf bytes.Buffer
	for _, h := range []slog.Handler{slog.NewTextHandler(&buf, nil), slog.NewJSONHandler(&buf, nil)} {
		slog.New(h).Info("m", "token", mt, "group", slog.GroupValue(slog.Any("t", mt)), "holder", holder{"h", mt})
	}
	out = append(out, buf.String())
	for _, s := range out {
		if strings.Contains(s, tok[4:20]) {
			t.Errorf("token printed: %q", s)
		}
	}
	if got := fmt.Sprintf("%v|%s|%#v", mt, mt, mt); got != "[redacted]|[redacted]|[redacted]" {
		t.Errorf("formatting = %q", got)
	}
}

// LEAK test: the machine token (whole, its base64 body without prefix, or
// any 16 characters of its signature) and the issuer's root key appear in no
// response, header, log line, status or metrics, no file the agent made,
// and not in the environment after intake by env var.
func TestLeak_MachineTokenNowhere(t *testing.T) {
	is := agenttest.New(t)
	is.SetGateway(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(`{"gateway":"ok"}`))
	}))
	up := newUpstream(t)
	tok := is.MachineToken(t)
	t.Setenv(api.MachineTokenEnv, tok)
	cfg := baseCfg + fmt.Sprintf("[issuer]\nurl = %q\n", is.URL) + proxyCfg(up.srv.URL)
	h := startAgentWith(t, cfg, fastRetries(Options{}), nil)
	g := &guest{harness: h, is: is, token: tok}
	g.hc = sockettest.Client(h.api)

	var collected []string
	env := os.Environ()
	collected = append(collected, env...)
	record := func(r sockettest.Result) {
		collected = append(collected, r.Body, r.Err)
		for k, v := range r.Header {
			collected = append(collected, k+": "+v)
		}
	}
	etag := g.waitMetadata(t).Header["Etag"]
	self := "/v1/apps/web/machines/m-0123abcd"
	for _, rq := range []struct{ method, path, body string }{
		{"GET", "/v1/health", ""},
		{"GET", "/v1/metadata", ""},
		{"GET", "/v1/metadata/machine_id", ""},
		{"GET", "/v1/metadata/tags", ""},
		{"GET", "/v1/metadata/tags/role", ""},
		{"GET", "/v1/metadata/nope", ""},
		{"GET", "/v1/metadata?wait=true&timeout=1s&etag=" + etag, ""},
		{"GET", "/v1/metadata?wait=bad", ""},
		{"POST", "/v1/tokens/oidc", ""},
		{"POST", "/v1/tokens/oidc", `{"aud":"sts.amazonaws.com"}`},
		{"POST", "/v1/tokens/oidc", `{"aud":"bad aud"}`},
		{"GET", "/v1/tokens/oidc", ""},
		{"GET", self, ""},
		{"POST", self + "/stop", "{}"},
		{"GET", "/v1/apps/web/machines/other", ""},
		{"GET", "/direct/plain", ""},
		{"GET", "/direct/echo-auth-header", ""},
		{"GET", "/direct/echo-auth-body", ""},
		{"GET", "/direct/500", ""},
		{"GET", "/direct/404", ""},
		{"GET", "/hang", ""},
		{"GET", "/dead", ""},
		{"GET", "/direct/%2e%2e/x", ""},
		{"GET", "/nowhere", ""},
	} {
		hdr := map[string]string{}
		if strings.HasPrefix(rq.path, "/v1/tokens") {
			hdr["Accept"] = "application/json"
		}
		record(g.req(t, rq.method, rq.path, rq.body, hdr))
		record(g.req(t, rq.method, rq.path, rq.body, nil))
	}
	// Issuer down, then back, so the failure paths log too.
	is.Stop()
	record(g.req(t, "POST", "/v1/tokens/oidc", `{"aud":"uncached"}`, nil))
	record(g.req(t, "GET", self, "", nil))
	is.Start(t)
	if os.Geteuid() == 0 {
		record(sockettest.RequestAs(t, 65534, 65534, h.api, "POST", "/v1/tokens/oidc", "", nil))
	}
	for _, p := range []string{"/v1/status", "/metrics", "/v1/health", "/v1/nope"} {
		record(h.do("GET", h.admin, p, "", nil))
	}
	record(h.do("POST", h.admin, "/v1/reload", "", nil))
	collected = append(collected, h.logs.String())
	filepath.WalkDir(h.dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			b, _ := os.ReadFile(p)
			collected = append(collected, string(b))
		}
		return nil
	})

	body := strings.TrimPrefix(tok, "fm2_")
	secret := []byte(is.Key.Secret)
	needles := []string{tok, body, "fm2_", hex.EncodeToString(secret),
		base64.StdEncoding.EncodeToString(secret), base64.RawURLEncoding.EncodeToString(secret), string(secret)}
	// Any 16 characters of the token's last 48: the macaroon's signature
	// (its secret part) is encoded last. Earlier parts hold public data
	// (the issuer's URL) that other replies legitimately encode too.
	const window = 16
	tail := body[len(body)-48:]
	for i := 0; i+window <= len(tail); i += 4 {
		needles = append(needles, tail[i:i+window])
	}
	all := strings.Join(collected, "\n")
	for _, n := range needles {
		if strings.Contains(all, n) {
			i := strings.Index(all, n)
			t.Fatalf("secret material %.12q… found: …%q…", n, all[max(0, i-80):i])
		}
	}
	if !strings.Contains(h.logs.String(), "oidc token") || !strings.Contains(h.logs.String(), "proxy request") {
		t.Error("expected log lines missing: the test exercised less than it claims")
	}
	if len(all) < 5000 {
		t.Errorf("collected only %d bytes", len(all))
	}
}
