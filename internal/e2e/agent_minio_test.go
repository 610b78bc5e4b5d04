package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	gooidc "github.com/coreos/go-oidc/v3/oidc"

	"github.com/wicket-sh/wicket/client"
)

// TestMinIO_AgentInTheMiddle: a real issuer, a real agent configured with
// [aws] role_arn = MinIO's role and a [[token_file]] for MinIO's audience,
// and MinIO trusting the org. A workload given the agent's WorkloadEnv
// gets MinIO credentials through the AWS SDK's default chain, from the
// token file the agent keeps; and `wicket aws credential-process` against
// the agent's API socket gets them too, as the SDK's credential_process.
// Both do put/get on MinIO's S3 API.
func TestMinIO_AgentInTheMiddle(t *testing.T) {
	MinIOBin(t) // skip (or, in CI, fail) before starting anything
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	ti := StartIssuer(t)
	mt := ti.MachineToken(t, "dev", "dev-app", "web-1") // the org exists from here on
	mio := StartMinIO(t, ti.URL+"/dev/.well-known/openid-configuration", minioAudience)
	tokenPath := filepath.Join(ShortDir(t), "tokens", "minio") // the agent creates tokens/
	ag := StartAgent(t, ti.URL, mt, fmt.Sprintf(`
[[token_file]]
path = %q
audience = %q
[aws]
role_arn = %q
token_file = %q
`, tokenPath, minioAudience, mio.RoleARN, tokenPath))
	if err := ag.WaitStarted(ctx); err != nil {
		t.Fatal(err)
	}
	// The machine id names the role session once the agent has it.
	var machineID string
	for machineID == "" {
		machineID, _ = client.New(ag.APISocket).Get(ctx, "machine_id")
		if ctx.Err() != nil {
			t.Fatal("no metadata from the agent")
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("issuer, minio and agent ready in %s; role %s", time.Since(start).Round(time.Millisecond), mio.RoleARN)

	// The file holds the machine's token for MinIO's audience, which a
	// strict relying party accepts too.
	provider, err := gooidc.NewProvider(ctx, ti.URL+"/dev")
	if err != nil {
		t.Fatal(err)
	}
	fileTok, err := os.ReadFile(tokenPath)
	if err != nil {
		t.Fatal(err)
	}
	if idt, err := provider.Verifier(&gooidc.Config{ClientID: minioAudience}).Verify(ctx, string(fileTok)); err != nil || idt.Subject != "dev:dev-app:web-1" {
		t.Fatalf("token file: %v", err)
	}

	t.Run("sdk default chain with WorkloadEnv", func(t *testing.T) {
		isolateAWSEnv(t)
		env := ag.WorkloadEnv()
		want := []string{
			"AWS_ROLE_ARN=" + mio.RoleARN,
			"AWS_WEB_IDENTITY_TOKEN_FILE=" + tokenPath,
			"AWS_ROLE_SESSION_NAME=" + machineID,
		}
		for _, w := range want {
			if !contains(env, w) {
				t.Errorf("WorkloadEnv lacks %s: %q", w, env)
			}
		}
		for _, kv := range env {
			k, v, _ := strings.Cut(kv, "=")
			t.Setenv(k, v)
		}
		t.Setenv("AWS_ENDPOINT_URL_STS", mio.URL)
		cfg, err := awsconfig.LoadDefaultConfig(ctx)
		if err != nil {
			t.Fatal(err)
		}
		creds, err := cfg.Credentials.Retrieve(ctx)
		if err != nil {
			t.Fatalf("default chain: %v", err)
		}
		if !strings.Contains(creds.Source, "WebIdentity") || creds.AccessKeyID == "" || creds.SessionToken == "" {
			t.Errorf("credentials from %q: %+v", creds.Source, creds)
		}
		s3RoundTrip(t, ctx, cfg, mio.URL, "wicket-e2e-agent-chain")
	})

	t.Run("credential process through the agent", func(t *testing.T) {
		bin := WicketBin(t)
		isolateAWSEnv(t)
		cmdline := strings.Join([]string{bin, "aws", "credential-process", "--socket", ag.APISocket,
			"--sts-endpoint", mio.URL, "--role-arn", mio.RoleARN, "--aud", minioAudience, "--session-name", "web-1"}, " ")

		// As an operator would check it by hand.
		out, err := exec.CommandContext(ctx, "sh", "-c", cmdline).Output()
		if err != nil {
			t.Fatalf("%s: %v", cmdline, err)
		}
		if !strings.Contains(string(out), `"AccessKeyId"`) || !strings.Contains(string(out), `"Version":1`) {
			t.Fatalf("credential_process output %s", out)
		}

		// As the SDK runs it, from ~/.aws/config.
		profile := filepath.Join(t.TempDir(), "config")
		if err := os.WriteFile(profile, []byte("[default]\ncredential_process = "+cmdline+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		t.Setenv("AWS_CONFIG_FILE", profile)
		cfg, err := awsconfig.LoadDefaultConfig(ctx)
		if err != nil {
			t.Fatal(err)
		}
		creds, err := cfg.Credentials.Retrieve(ctx)
		if err != nil {
			t.Fatalf("credential_process: %v", err)
		}
		if !strings.Contains(creds.Source, "Process") || creds.SessionToken == "" || !creds.CanExpire {
			t.Errorf("credentials from %q: %+v", creds.Source, creds)
		}
		s3RoundTrip(t, ctx, cfg, mio.URL, "wicket-e2e-agent-process")
	})

	// Token issuance to the file is logged like any other.
	if !strings.Contains(ag.logs.String(), `msg="oidc token" token_file=`+tokenPath) {
		t.Error("the agent did not log the file's token")
	}
	t.Logf("total %s", time.Since(start).Round(time.Millisecond))
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
