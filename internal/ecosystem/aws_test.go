package ecosystem

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/wicket-sh/wicket/internal/e2e"
)

const minioAudience = "minio.example.com"

// TestAWS_MinIO: boto3 and the AWS SDK for JavaScript v3 get MinIO
// credentials from the machine's identity, through the agent's token file
// and through `wicket aws credential-process`, and put and get an object;
// MinIO's STS refuses the negative cases the SDKs present.
func TestAWS_MinIO(t *testing.T) {
	e2e.MinIOBin(t) // skip (or, in CI, fail) before starting anything
	if testing.Short() {
		t.Skip("starts MinIO: skipped in -short")
	}
	var mio *e2e.MinIO
	var tokenPath string
	w := newWorld(t, func(w *world) string {
		mio = e2e.StartMinIO(t, w.issuer+"/.well-known/openid-configuration", minioAudience)
		tokenPath = filepath.Join(e2e.ShortDir(t), "tokens", "minio")
		return fmt.Sprintf("[[token_file]]\npath = %q\naudience = %q\n[aws]\nrole_arn = %q\ntoken_file = %q\n", tokenPath, minioAudience, mio.RoleARN, tokenPath)
	})
	if out, err := exec.Command("go", "version", "-m", e2e.MinIOBin(t)).Output(); err == nil {
		for _, l := range strings.Split(string(out), "\n") {
			if f := strings.Fields(l); len(f) >= 3 && f[0] == "mod" && f[1] == "github.com/minio/minio" {
				tested("MinIO (the relying party)", f[2], "`AssumeRoleWithWebIdentity` with the org's discovery URL and the audience as client ID; S3 with the credentials")
			}
		}
	}
	env := w.ag.WorkloadEnv()
	profile := filepath.Join(t.TempDir(), "config")
	cp := strings.Join([]string{wicketBin(t), "aws", "credential-process", "--socket", w.ag.APISocket, "--sts-endpoint", mio.URL,
		"--role-arn", mio.RoleARN, "--aud", minioAudience, "--session-name", "web-1"}, " ")
	if err := os.WriteFile(profile, []byte("[default]\nregion = us-east-1\ncredential_process = "+cp+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	bad := w.bad(t, minioAudience)
	negatives := func(t *testing.T, got map[string]verdict) {
		t.Helper()
		for name := range bad {
			if v := got[name]; v.OK || v.Error == "" {
				t.Errorf("%s: MinIO's STS accepted it or no error (%+v)", name, v)
			} else {
				t.Logf("%s refused: %s", name, v.Error)
			}
		}
	}

	t.Run("boto3", func(t *testing.T) {
		needPython(t, "boto3")
		done(t, "boto3")
		bv, cv := pythonVersion(t, "boto3"), pythonVersion(t, "botocore")
		version := "boto3 " + bv + ", botocore " + cv + " (Debian python3-boto3)"
		var r struct{ Body, Method, Flow string }
		runJSON(t, py("aws.py"), []string{"AWS_CONFIG_FILE=" + profile}, map[string]any{"mode": "process", "endpoint": mio.URL, "bucket": "boto3-process"}, &r)
		if r.Body != "hello from boto3" || r.Method != "custom-process" {
			t.Errorf("credential_process: %+v", r)
		}
		tested("boto3", version, "`credential_process = wicket aws credential-process`, default chain; S3 put/get")

		webEnv := append(append([]string{}, env...), "AWS_ENDPOINT_URL_STS="+mio.URL, "AWS_ENDPOINT_URL_S3="+mio.URL, "AWS_REGION=us-east-1")
		runJSON(t, py("aws.py"), webEnv, map[string]any{"mode": "webidentity", "endpoint": mio.URL, "bucket": "boto3-web", "role_arn": mio.RoleARN, "token_file": tokenPath}, &r)
		if r.Body != "hello from boto3" {
			t.Errorf("web identity: %+v", r)
		}
		// botocore reads AWS_ENDPOINT_URL_STS from 1.31 on.
		if major, minor := versionPair(cv); major > 1 || major == 1 && minor >= 31 {
			if r.Method != "assume-role-with-web-identity" || r.Flow != "default chain" {
				t.Errorf("botocore %s did not use the default chain: %+v", cv, r)
			}
			tested("boto3", version, "default chain: `AWS_WEB_IDENTITY_TOKEN_FILE` (agent's token file) + `AWS_ENDPOINT_URL_STS`; S3 put/get")
		} else {
			tested("boto3", version, "agent's token file read and sent with `assume_role_with_web_identity` to `endpoint_url` (botocore < 1.31 ignores `AWS_ENDPOINT_URL_STS`); S3 put/get")
		}
		var got map[string]verdict
		runJSON(t, py("aws.py"), nil, map[string]any{"mode": "negatives", "endpoint": mio.URL, "role_arn": mio.RoleARN, "tokens": bad}, &got)
		negatives(t, got)
	})

	t.Run("aws-sdk-js", func(t *testing.T) {
		needNode(t)
		done(t, "aws-sdk-js")
		version := "@aws-sdk/credential-providers " + npmVersion(t, "@aws-sdk/credential-providers") + ", @aws-sdk/client-s3 " + npmVersion(t, "@aws-sdk/client-s3")
		jsEnv := append(append([]string{}, env...), "AWS_ENDPOINT_URL_STS="+mio.URL, "AWS_ENDPOINT_URL_S3="+mio.URL, "AWS_REGION=us-east-1")
		for _, mode := range []string{"fromTokenFile", "fromWebToken", "chain", "fromProcess"} {
			e := jsEnv
			if mode == "fromProcess" {
				e = []string{"AWS_CONFIG_FILE=" + profile, "AWS_ENDPOINT_URL_S3=" + mio.URL, "AWS_REGION=us-east-1"}
			}
			var r struct {
				Body       string
				HasSession bool
			}
			runJSON(t, js("aws.mjs"), e, map[string]any{"mode": mode, "bucket": "js-" + strings.ToLower(mode), "role_arn": mio.RoleARN}, &r)
			if r.Body != "hello from aws-sdk-js" || !r.HasSession {
				t.Errorf("%s: %+v", mode, r)
			}
		}
		tested("AWS SDK for JavaScript v3", version, "`fromTokenFile`, `fromWebToken` (agent's token file), default chain (`fromNodeProviderChain` with `AWS_ENDPOINT_URL_STS`), `fromProcess` (`wicket aws credential-process`); S3 put/get")
		var got map[string]verdict
		runJSON(t, js("aws.mjs"), jsEnv, map[string]any{"mode": "negatives", "role_arn": mio.RoleARN, "tokens": bad}, &got)
		negatives(t, got)
	})
}

// versionPair parses "1.29.27" as (1, 29).
func versionPair(v string) (int, int) {
	parts := strings.Split(v, ".")
	if len(parts) < 2 {
		return 0, 0
	}
	a, _ := strconv.Atoi(parts[0])
	b, _ := strconv.Atoi(parts[1])
	return a, b
}
