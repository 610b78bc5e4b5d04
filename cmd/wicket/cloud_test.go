package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/wicket-sh/wicket/internal/sockettest"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	gooidc "github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2/google/externalaccount"

	"github.com/wicket-sh/wicket/client"
	awsfeature "github.com/wicket-sh/wicket/internal/agent/feature/aws"
	"github.com/wicket-sh/wicket/internal/cli"
	"github.com/wicket-sh/wicket/internal/cloud/aws"
	"github.com/wicket-sh/wicket/internal/cloud/gcp"
	"github.com/wicket-sh/wicket/internal/e2e"
)

// cloudCLIEnv makes the test binary act as `wicket` with the cloud
// commands (see init), so these tests run the real command line as a
// process — exit code, stdout, stderr — and Google's library can run it
// as its executable.
const cloudCLIEnv = "WICKET_TEST_CLOUD_CLI"

func init() {
	if os.Getenv(cloudCLIEnv) != "1" {
		return
	}
	os.Exit(cli.Run(newRoot(), os.Args[1:]))
}

// runCloud runs `wicket args...` with extra environment.
func runCloud(t *testing.T, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], args...)
	cmd.Env = append(append(os.Environ(), cloudCLIEnv+"=1"), env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("run %v: %v", args, err)
	}
	return o.String(), e.String(), code
}

// oneLineError checks a failed command printed exactly one line on stderr
// containing each of want, and exited 1.
func oneLineError(t *testing.T, stderr string, code int, want ...string) {
	t.Helper()
	if code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	if strings.Count(stderr, "\n") != 1 || !strings.HasPrefix(stderr, "wicket: ") {
		t.Errorf("stderr is not one line: %q", stderr)
	}
	for _, w := range want {
		if !strings.Contains(stderr, w) {
			t.Errorf("stderr %q lacks %q", stderr, w)
		}
	}
}

// startCloudAgent runs the real `wicket agent` against issuerURL with a
// machine token, plus the extra TOML (e.g. a policy), and returns its API
// socket once it accepts connections.
func startCloudAgent(t *testing.T, issuerURL, machineToken, extra string) string {
	t.Helper()
	dir := shortDir(t)
	tokFile := filepath.Join(dir, "machine-token")
	if err := os.WriteFile(tokFile, []byte(machineToken), 0o600); err != nil {
		t.Fatal(err)
	}
	api := filepath.Join(dir, "run", "api.sock")
	cfg := fmt.Sprintf("[api]\nsocket_path = %q\n[admin]\nsocket_path = %q\n[issuer]\nurl = %q\ntoken_file = %q\n%s",
		api, filepath.Join(dir, "run", "admin.sock"), issuerURL, tokFile, extra)
	cfgPath := filepath.Join(dir, "agent.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(wicketBin, "agent", "--config", cfgPath)
	logs := &sockettest.Buffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("agent log:\n%s", logs)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := net.Dial("unix", api); err == nil {
			c.Close()
			return api
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent did not start:\n%s", logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// denyTokensPolicy lets root and the test's uid reach nothing but health.
func denyTokensPolicy() string {
	return fmt.Sprintf("[[policy]]\nname = \"health-only\"\nuids = [0, %d]\nallow = [\"GET /v1/health\"]\n", os.Getuid())
}

// TestCloudCLI_AWSCredentialProcess: `wicket aws credential-process`
// through a real agent and issuer, against MinIO's STS; the credentials it
// prints work on MinIO's S3 API, and refusals are one clear line.
func TestCloudCLI_AWSCredentialProcess(t *testing.T) {
	const aud = "minio.cli.wicket.test"
	e2e.MinIOBin(t) // skip (or, in CI, fail) before starting anything
	ti := e2e.StartIssuer(t)
	api := startCloudAgent(t, ti.URL, ti.MachineToken(t, "dev", "dev-app", "web-1"), "")
	mio := e2e.StartMinIO(t, ti.URL+"/dev/.well-known/openid-configuration", aud)
	env := []string{"AWS_ENDPOINT_URL_STS=", "AWS_ROLE_SESSION_NAME=", "AWS_REGION=us-east-1"}
	base := []string{"aws", "credential-process", "--socket", api, "--sts-endpoint", mio.URL}

	out, errOut, code := runCloud(t, env, append(base, "--role-arn", mio.RoleARN, "--aud", aud, "--duration", "30m")...)
	if code != 0 {
		t.Fatalf("credential-process: exit %d: %s", code, errOut)
	}
	var pc aws.ProcessCredentials
	if err := json.Unmarshal([]byte(out), &pc); err != nil || pc.Version != 1 || pc.AccessKeyID == "" {
		t.Fatalf("output %q: %v", out, err)
	}
	if d := time.Until(pc.Expiration); d < 25*time.Minute || d > 31*time.Minute {
		t.Errorf("expiration in %s, want ≈30m", d)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s3c := s3.New(s3.Options{
		Region: "us-east-1", BaseEndpoint: awssdk.String(mio.URL), UsePathStyle: true,
		Credentials: credentials.NewStaticCredentialsProvider(pc.AccessKeyID, pc.SecretAccessKey, pc.SessionToken),
	})
	if _, err := s3c.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: awssdk.String("cli-bucket")}); err != nil {
		t.Errorf("the printed credentials do not work on S3: %v", err)
	}

	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"role unknown to STS", []string{"--role-arn", "arn:minio:iam:::role/nope", "--aud", aud}, []string{"STS rejected", "InvalidParameterValue", "RoleARN"}},
		{"audience STS does not trust", []string{"--role-arn", mio.RoleARN}, []string{"STS rejected", "InvalidParameterValue", "azp"}},
		{"duration too long", []string{"--role-arn", mio.RoleARN, "--aud", aud, "--duration", "13h"}, []string{"duration"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := runCloud(t, env, append(base, tc.args...)...)
			oneLineError(t, errOut, code, tc.want...)
			if out != "" {
				t.Errorf("stdout %q on failure", out)
			}
		})
	}
}

// TestCloudCLI_AgentErrors: an unreachable or refusing agent is one clear
// line and exit 1, for every command that asks it for a token.
func TestCloudCLI_AgentErrors(t *testing.T) {
	ti := e2e.StartIssuer(t)
	denying := startCloudAgent(t, ti.URL, ti.MachineToken(t, "dev", "dev-app", "web-1"), denyTokensPolicy())
	missing := filepath.Join(shortDir(t), "absent.sock")
	aud := "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/x"
	for _, tc := range []struct {
		name    string
		args    []string
		want    []string
		gcpCode string // the error response's code on stdout
	}{
		{"aws, unreachable", []string{"aws", "credential-process", "--role-arn", "arn:aws:iam::1:role/r", "--socket", missing},
			[]string{"cannot reach the agent", missing, "no such file"}, ""},
		{"aws, denied", []string{"aws", "credential-process", "--role-arn", "arn:aws:iam::1:role/r", "--socket", denying},
			[]string{"denied", "403"}, ""},
		{"gcp, unreachable", []string{"gcp", "executable", "--audience", aud, "--socket", missing},
			[]string{"cannot reach the agent"}, "agent_unreachable"},
		{"gcp, denied", []string{"gcp", "executable", "--audience", aud, "--socket", denying},
			[]string{"denied", "403"}, "forbidden"},
		{"gcp, no audience", []string{"gcp", "executable", "--socket", denying}, []string{"no audience"}, "missing_audience"},
		{"aws, no role", []string{"aws", "credential-process", "--socket", denying}, []string{"role-arn"}, ""},
		// Checked before the agent is asked.
		{"aws, bad duration", []string{"aws", "credential-process", "--role-arn", "r", "--duration", "1m", "--socket", missing}, []string{"duration 1m0s outside 15m0s..12h0m0s"}, ""},
		{"aws, bad session name", []string{"aws", "credential-process", "--role-arn", "r", "--session-name", "a:b", "--socket", missing}, []string{"session name"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := runCloud(t, []string{"GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE="}, tc.args...)
			oneLineError(t, errOut, code, tc.want...)
			if tc.gcpCode == "" {
				if out != "" {
					t.Errorf("stdout %q on failure", out)
				}
				return
			}
			var r gcp.ExecutableResponse
			if err := json.Unmarshal([]byte(out), &r); err != nil || r.Success || r.Code != tc.gcpCode || r.Message == "" {
				t.Errorf("error response %q (%v), want code %q", out, err, tc.gcpCode)
			}
		})
	}
}

// fakeGoogleSTS stands in for sts.googleapis.com on loopback and records
// the subject tokens it is given.
type fakeGoogleSTS struct {
	*httptest.Server
	mu    sync.Mutex
	forms []url.Values
}

func newFakeGoogleSTS(t *testing.T) *fakeGoogleSTS {
	f := &fakeGoogleSTS{}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.ParseForm()
		f.mu.Lock()
		f.forms = append(f.forms, r.PostForm)
		f.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"access_token":"gcp-access-token","issued_token_type":"urn:ietf:params:oauth:token-type:access_token","token_type":"Bearer","expires_in":3600}`))
	}))
	t.Cleanup(f.Close)
	return f
}

// TestCloudCLI_GCP: `wicket gcp config --executable` writes a credentials
// file with which Google's own library runs `wicket gcp executable`, which
// gets the token from the real agent; the token reaching "Google's STS" is
// the machine's, for the provider's audience, verified strictly.
func TestCloudCLI_GCP(t *testing.T) {
	const aud = "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/wicket/providers/dev"
	ti := e2e.StartIssuer(t)
	api := startCloudAgent(t, ti.URL, ti.MachineToken(t, "dev", "dev-app", "web-1"), "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	provider, err := gooidc.NewProvider(ctx, ti.URL+"/dev")
	if err != nil {
		t.Fatal(err)
	}
	strict := provider.Verifier(&gooidc.Config{ClientID: aud})

	// The executable on its own, with the audience and output file from
	// the environment as Google's libraries set them.
	cache := filepath.Join(t.TempDir(), "gcp-cache.json")
	out, errOut, code := runCloud(t, []string{"GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE=" + aud, "GOOGLE_EXTERNAL_ACCOUNT_OUTPUT_FILE=" + cache},
		"gcp", "executable", "--socket", api)
	if code != 0 {
		t.Fatalf("gcp executable: exit %d: %s", code, errOut)
	}
	var r gcp.ExecutableResponse
	if err := json.Unmarshal([]byte(out), &r); err != nil || !r.Success || r.Version != 1 || r.TokenType != gcp.SubjectTokenTypeJWT {
		t.Fatalf("response %q: %v", out, err)
	}
	if d := time.Until(time.Unix(r.ExpirationTime, 0)); d < 5*time.Minute || d > 11*time.Minute {
		t.Errorf("expiration_time in %s", d)
	}
	if idt, err := strict.Verify(ctx, r.IDToken); err != nil || idt.Subject != "dev:dev-app:web-1" {
		t.Errorf("token: %v", err)
	}
	if b, err := os.ReadFile(cache); err != nil || string(b) != out {
		t.Errorf("output file: %q, %v", b, err)
	} else if fi, _ := os.Stat(cache); fi.Mode().Perm() != 0o600 {
		t.Errorf("output file mode %v", fi.Mode())
	}

	// The credentials file, then Google's library using it.
	credFile := filepath.Join(t.TempDir(), "gcp.json")
	out, errOut, code = runCloud(t, nil, "gcp", "config", "--audience", aud, "--executable", "--socket", api, "--output", credFile, "--project", "my-project")
	if code != 0 {
		t.Fatalf("gcp config: exit %d: %s", code, errOut)
	}
	// The environment Google's libraries need, the project included (else
	// they ask Cloud Resource Manager for it when a client is created).
	if want := "export GOOGLE_APPLICATION_CREDENTIALS='" + credFile + "'\nexport GOOGLE_CLOUD_PROJECT='my-project'\nexport GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES='1'\n"; out != want {
		t.Errorf("gcp config --output printed:\n%s\nwant:\n%s", out, want)
	}
	raw, err := os.ReadFile(credFile)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Audience         string                           `json:"audience"`
		SubjectTokenType string                           `json:"subject_token_type"`
		TokenURL         string                           `json:"token_url"`
		CredentialSource externalaccount.CredentialSource `json:"credential_source"`
	}
	if err := json.Unmarshal(raw, &f); err != nil || f.CredentialSource.Executable == nil || f.TokenURL != gcp.TokenURL {
		t.Fatalf("credentials file %s: %v", raw, err)
	}
	self, _ := os.Executable()
	self, _ = filepath.EvalSymlinks(self)
	if got, want := f.CredentialSource.Executable.Command, self+" gcp executable --socket "+api; got != want {
		t.Errorf("command %q, want %q", got, want)
	}
	sts := newFakeGoogleSTS(t)
	t.Setenv("GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES", "1")
	t.Setenv(cloudCLIEnv, "1") // the library runs the test binary as wicket
	ts, err := externalaccount.NewTokenSource(ctx, externalaccount.Config{
		Audience: f.Audience, SubjectTokenType: f.SubjectTokenType, TokenURL: sts.URL,
		CredentialSource: &f.CredentialSource, Scopes: []string{"https://www.googleapis.com/auth/cloud-platform"},
	})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := ts.Token()
	if err != nil {
		t.Fatalf("Google's library: %v", err)
	}
	if tok.AccessToken != "gcp-access-token" || len(sts.forms) != 1 {
		t.Fatalf("access token %q after %d STS calls", tok.AccessToken, len(sts.forms))
	}
	form := sts.forms[0]
	if form.Get("audience") != aud || form.Get("subject_token_type") != gcp.SubjectTokenTypeJWT {
		t.Errorf("STS form %v", form)
	}
	if idt, err := strict.Verify(ctx, form.Get("subject_token")); err != nil || idt.Subject != "dev:dev-app:web-1" {
		t.Errorf("subject token reaching STS: %v", err)
	}
}

func TestCloudCLI_GCPConfig(t *testing.T) {
	const aud = "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/x"
	for _, tc := range []struct {
		name string
		args []string
		want string // in stdout, or in stderr when code is 1
		code int
	}{
		{"token file", []string{"--token-file", "/run/wicket/gcp-token"}, `"file": "/run/wicket/gcp-token"`, 0},
		{"impersonation", []string{"--token-file", "/f", "--service-account", "sa@p.iam.gserviceaccount.com"}, `serviceAccounts/sa@p.iam.gserviceaccount.com:generateAccessToken`, 0},
		{"executable", []string{"--executable", "--executable-timeout", "10s"}, `"timeout_millis": 10000`, 0},
		{"both", []string{"--executable", "--token-file", "/f"}, "exactly one", 1},
		{"neither", nil, "exactly one", 1},
		{"bad audience", []string{"--token-file", "/f", "--audience", "sts.amazonaws.com"}, "resource name", 1},
		{"bad project", []string{"--token-file", "/f", "--project", "My Project"}, "--project", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"gcp", "config", "--audience", aud}, tc.args...)
			out, errOut, code := runCloud(t, nil, args...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d: %s", code, tc.code, errOut)
			}
			if tc.code != 0 {
				oneLineError(t, errOut, code, tc.want)
				return
			}
			if !strings.Contains(out, tc.want) || !json.Valid([]byte(out)) {
				t.Errorf("output lacks %q:\n%s", tc.want, out)
			}
		})
	}
}

// TestCloudCLI_Env: the export lines, and that a shell reading them gets
// the values back exactly, quotes included.
func TestCloudCLI_Env(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"aws", []string{"env", "aws", "--role-arn", "arn:aws:iam::123456789012:role/app", "--token-file", "/run/wicket/aws-token", "--session-name", "web-1"},
			"export AWS_ROLE_ARN='arn:aws:iam::123456789012:role/app'\nexport AWS_WEB_IDENTITY_TOKEN_FILE='/run/wicket/aws-token'\nexport AWS_ROLE_SESSION_NAME='web-1'\n"},
		{"aws, no session", []string{"env", "aws", "--role-arn", "r", "--token-file", "/t"},
			"export AWS_ROLE_ARN='r'\nexport AWS_WEB_IDENTITY_TOKEN_FILE='/t'\n"},
		{"azure", []string{"env", "azure", "--client-id", "c1", "--tenant-id", "t1", "--token-file", "/run/wicket/azure-token"},
			"export AZURE_CLIENT_ID='c1'\nexport AZURE_TENANT_ID='t1'\nexport AZURE_FEDERATED_TOKEN_FILE='/run/wicket/azure-token'\nexport AZURE_AUTHORITY_HOST='https://login.microsoftonline.com/'\n"},
		{"quoting", []string{"env", "aws", "--role-arn", `it's $HOME and "x"`, "--token-file", "/a b/t`id`"},
			`export AWS_ROLE_ARN='it'\''s $HOME and "x"'` + "\n" + "export AWS_WEB_IDENTITY_TOKEN_FILE='/a b/t`id`'\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := runCloud(t, nil, tc.args...)
			if code != 0 || out != tc.want {
				t.Fatalf("exit %d, stderr %q, stdout:\n%s\nwant:\n%s", code, errOut, out, tc.want)
			}
			// A shell evaluating the lines gets each value back.
			sh := exec.Command("sh", "-c", `eval "$(cat)"; env`)
			sh.Stdin = strings.NewReader(out)
			sh.Env = []string{"PATH=" + os.Getenv("PATH")}
			got, err := sh.Output()
			if err != nil {
				t.Fatal(err)
			}
			for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
				k, v, _ := strings.Cut(strings.TrimPrefix(line, "export "), "=")
				v = strings.ReplaceAll(strings.Trim(v, "'"), `'\''`, "'")
				if !strings.Contains(string(got), k+"="+v+"\n") {
					t.Errorf("shell did not get %s=%s:\n%s", k, v, got)
				}
			}
		})
	}
	for _, args := range [][]string{
		{"env", "aws", "--token-file", "/t"},
		{"env", "azure", "--client-id", "c", "--token-file", "/t"},
		{"env", "aws", "--role-arn", "r", "--token-file", "/t", "--session-name", "a:b"},
	} {
		_, errOut, code := runCloud(t, nil, args...)
		oneLineError(t, errOut, code)
	}
}

// TestFederationDoc_Commands: every `wicket …` command line in
// docs/federation.md names a real command with flags it accepts and the
// flags it requires, so the guide cannot drift from the CLI.
func TestFederationDoc_Commands(t *testing.T) {
	doc, err := os.ReadFile("../../docs/federation.md")
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	inBlock := false
	for _, l := range strings.Split(strings.ReplaceAll(string(doc), "\\\n", " "), "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "```") {
			inBlock = !inBlock
			continue
		}
		if !inBlock {
			continue
		}
		// A command starts a line, a $(…), or follows a path to the binary.
		l = strings.TrimSpace(l)
		i := strings.Index(l, "wicket ")
		if i < 0 || !(i == 0 || strings.HasSuffix(l[:i], "$(") || strings.HasSuffix(l[:i], "/bin/")) {
			continue
		}
		cmdline, _, _ := strings.Cut(l[i:], `)"`)
		lines = append(lines, cmdline)
	}
	if len(lines) < 8 {
		t.Fatalf("found only %d wicket commands in the guide: %q", len(lines), lines)
	}
	for _, line := range lines {
		t.Run(line, func(t *testing.T) {
			args, err := shellWords(line)
			if err != nil {
				t.Fatal(err)
			}
			root := newRoot()
			cmd, rest, err := root.Find(args[1:])
			if err != nil || cmd == root || !cmd.Runnable() {
				t.Fatalf("no such command: %v", err)
			}
			if err := cmd.ParseFlags(rest); err != nil {
				t.Fatalf("flags: %v", err)
			}
			if err := cmd.ValidateRequiredFlags(); err != nil {
				t.Fatal(err)
			}
			if err := cmd.ValidateArgs(cmd.Flags().Args()); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// shellWords splits a command line the way sh would for plain words and
// single- or double-quoted strings (no expansions).
func shellWords(s string) ([]string, error) {
	var words []string
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == ' ' || c == '\t':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		case c == '\'' || c == '"':
			j := strings.IndexByte(s[i+1:], c)
			if j < 0 {
				return nil, fmt.Errorf("unterminated quote in %q", s)
			}
			cur.WriteString(s[i+1 : i+1+j])
			i += j + 1
			inWord = true
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, nil
}

// TestCloudCLI_EnvConfig: `wicket env aws|azure --config AGENT_TOML` take
// the values from the agent's config, as the agent's WorkloadEnv does, and
// flags override them.
func TestCloudCLI_EnvConfig(t *testing.T) {
	dir := t.TempDir()
	cfgFile := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// No agent listens there: the session name falls back to "wicket".
	base := fmt.Sprintf("[api]\nsocket_path = %q\n[issuer]\nurl = \"https://issuer.example\"\n", filepath.Join(dir, "run", "api.sock"))
	const role = "arn:aws:iam::123456789012:role/app"
	full := cfgFile("full.toml", base+"[aws]\nrole_arn = \""+role+"\"\n[azure]\nclient_id = \"c1\"\ntenant_id = \"t1\"\ntoken_file = \"/run/t/az\"\n")
	named := cfgFile("named.toml", base+"[[token_file]]\npath = \"/run/t/sts\"\naudience = \"sts.amazonaws.com\"\n[aws]\nrole_arn = \"arn:aws:iam::1:role/r1\"\nsession_name = \"web-1\"\n")
	noCloud := cfgFile("none.toml", base)
	invalid := cfgFile("invalid.toml", base+"[aws]\nrole = \"x\"\n")
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"aws", []string{"env", "aws", "--config", full},
			"export AWS_ROLE_ARN='" + role + "'\nexport AWS_WEB_IDENTITY_TOKEN_FILE='/run/wicket/tokens/aws'\nexport AWS_ROLE_SESSION_NAME='wicket'\n"},
		{"aws, [[token_file]] and session name", []string{"env", "aws", "--config", named},
			"export AWS_ROLE_ARN='arn:aws:iam::1:role/r1'\nexport AWS_WEB_IDENTITY_TOKEN_FILE='/run/t/sts'\nexport AWS_ROLE_SESSION_NAME='web-1'\n"},
		{"aws, flags override", []string{"env", "aws", "--config", full, "--role-arn", "r2", "--token-file", "/t", "--session-name", "s2"},
			"export AWS_ROLE_ARN='r2'\nexport AWS_WEB_IDENTITY_TOKEN_FILE='/t'\nexport AWS_ROLE_SESSION_NAME='s2'\n"},
		{"aws, role from a flag, file from the config", []string{"env", "aws", "--config", named, "--role-arn", "r3"},
			"export AWS_ROLE_ARN='r3'\nexport AWS_WEB_IDENTITY_TOKEN_FILE='/run/t/sts'\nexport AWS_ROLE_SESSION_NAME='web-1'\n"},
		{"azure", []string{"env", "azure", "--config", full},
			"export AZURE_CLIENT_ID='c1'\nexport AZURE_TENANT_ID='t1'\nexport AZURE_FEDERATED_TOKEN_FILE='/run/t/az'\nexport AZURE_AUTHORITY_HOST='https://login.microsoftonline.com/'\n"},
		{"azure, flags override", []string{"env", "azure", "--config", full, "--tenant-id", "t2", "--authority-host", "https://login.example/"},
			"export AZURE_CLIENT_ID='c1'\nexport AZURE_TENANT_ID='t2'\nexport AZURE_FEDERATED_TOKEN_FILE='/run/t/az'\nexport AZURE_AUTHORITY_HOST='https://login.example/'\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := runCloud(t, nil, tc.args...)
			if code != 0 || out != tc.want {
				t.Fatalf("exit %d, stderr %q, stdout:\n%s\nwant:\n%s", code, errOut, out, tc.want)
			}
		})
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"aws, no [aws]", []string{"env", "aws", "--config", noCloud}, "has no [aws] role_arn"},
		{"azure, no [azure]", []string{"env", "azure", "--config", noCloud}, "has no [azure] client_id"},
		{"invalid config", []string{"env", "aws", "--config", invalid}, "unknown keys: aws.role"},
		{"missing config", []string{"env", "azure", "--config", filepath.Join(dir, "absent.toml")}, "absent.toml"},
		{"aws, neither", []string{"env", "aws"}, "--role-arn"},
		{"azure, no tenant", []string{"env", "azure", "--client-id", "c", "--token-file", "/t"}, "--tenant-id"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := runCloud(t, nil, tc.args...)
			oneLineError(t, errOut, code, tc.want)
			if out != "" {
				t.Errorf("stdout %q on failure", out)
			}
		})
	}
}

// TestCloudCLI_EnvConfig_RunningAgent: against a running agent, the session
// name is the machine id, and the token file the exports name is the one
// the agent writes.
func TestCloudCLI_EnvConfig_RunningAgent(t *testing.T) {
	ti := e2e.StartIssuer(t)
	tokFile := filepath.Join(shortDir(t), "tokens", "aws")
	api := startCloudAgent(t, ti.URL, ti.MachineToken(t, "dev", "dev-app", "web-1"),
		fmt.Sprintf("[aws]\nrole_arn = \"arn:aws:iam::1:role/app\"\ntoken_file = %q\n", tokFile))
	cfgPath := filepath.Join(filepath.Dir(filepath.Dir(api)), "agent.toml")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var id string
	for id == "" && ctx.Err() == nil {
		id, _ = client.New(api).Get(ctx, "machine_id")
		time.Sleep(10 * time.Millisecond)
	}
	out, errOut, code := runCloud(t, nil, "env", "aws", "--config", cfgPath)
	want := "export AWS_ROLE_ARN='arn:aws:iam::1:role/app'\nexport AWS_WEB_IDENTITY_TOKEN_FILE='" + tokFile + "'\nexport AWS_ROLE_SESSION_NAME='" + id + "'\n"
	if code != 0 || out != want || id == "" {
		t.Fatalf("exit %d, stderr %q, stdout:\n%s\nwant:\n%s", code, errOut, out, want)
	}
	for {
		b, err := os.ReadFile(tokFile)
		if err == nil && strings.Count(string(b), ".") == 2 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("the agent did not write %s: %v", tokFile, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The agent's [aws] feature (awsfeature.SessionName) and the CLI
// (aws.SessionName) make the same session name from a machine id.
func TestAWSSessionNameRulesAgree(t *testing.T) {
	for _, s := range []string{"", "x", "0123abcdef012345", "m-01:ab/c d", "web.1@fra+=,_", strings.Repeat("é", 40), strings.Repeat("a", 80)} {
		if a, c := aws.SessionName(s), awsfeature.SessionName("", s); a != c || !aws.ValidSessionName(c) {
			t.Errorf("%q: aws %q, agent %q", s, a, c)
		}
	}
}
