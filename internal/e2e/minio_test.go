package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	gooidc "github.com/coreos/go-oidc/v3/oidc"

	"github.com/wicket-sh/wicket/internal/cloud/aws"
	"github.com/wicket-sh/wicket/internal/tokenfile"
)

// minioAudience is the client ID MinIO is configured with; tokens must
// carry it in aud.
const minioAudience = "minio.e2e.wicket.test"

// isolateAWSEnv clears every variable that could give the AWS SDK
// credentials or endpoints from outside the test, and points its shared
// files at empty ones.
func isolateAWSEnv(t *testing.T) {
	t.Helper()
	for _, k := range []string{
		"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
		"AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_SESSION_NAME", "AWS_ENDPOINT_URL",
		"AWS_ENDPOINT_URL_STS", "AWS_ENDPOINT_URL_S3", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
		"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_DEFAULT_REGION", "AWS_STS_REGIONAL_ENDPOINTS",
	} {
		t.Setenv(k, "") // restores the old value at the end
		os.Unsetenv(k)
	}
	empty := filepath.Join(t.TempDir(), "empty")
	os.WriteFile(empty, nil, 0o600)
	t.Setenv("AWS_CONFIG_FILE", empty)
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", empty)
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_REGION", "us-east-1")
}

// s3RoundTrip creates bucket on the MinIO at endpoint with creds, puts an
// object and reads it back.
func s3RoundTrip(t *testing.T, ctx context.Context, cfg awssdk.Config, endpoint, bucket string) {
	t.Helper()
	client := s3.NewFromConfig(cfg, func(o *s3.Options) {
		o.BaseEndpoint = awssdk.String(endpoint)
		o.UsePathStyle = true
	})
	if _, err := client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: awssdk.String(bucket)}); err != nil {
		t.Fatalf("create bucket %s: %v", bucket, err)
	}
	body := []byte("hello from " + bucket + " at " + time.Now().Format(time.RFC3339Nano))
	if _, err := client.PutObject(ctx, &s3.PutObjectInput{
		Bucket: awssdk.String(bucket), Key: awssdk.String("greeting.txt"), Body: bytes.NewReader(body),
	}); err != nil {
		t.Fatalf("put object: %v", err)
	}
	out, err := client.GetObject(ctx, &s3.GetObjectInput{Bucket: awssdk.String(bucket), Key: awssdk.String("greeting.txt")})
	if err != nil {
		t.Fatalf("get object: %v", err)
	}
	got, err := io.ReadAll(out.Body)
	out.Body.Close()
	if err != nil || !bytes.Equal(got, body) {
		t.Fatalf("get object: %q, %v; want %q", got, err, body)
	}
}

// TestMinIO_WebIdentity: MinIO trusts a wicket org's issuer; a machine's
// OIDC token, kept fresh in a file by tokenfile, gets S3 credentials from
// MinIO's STS through the AWS SDK's default chain and through
// `wicket aws credential-process`'s code, and those credentials work on
// MinIO's S3 API. Tokens MinIO must refuse are refused.
func TestMinIO_WebIdentity(t *testing.T) {
	MinIOBin(t) // skip (or, in CI, fail) before starting anything
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()

	ti := StartIssuer(t)
	devMT := ti.MachineToken(t, "dev", "dev-app", "web-1")
	acmeMT := ti.MachineToken(t, "acme", "acme-app", "web-1")
	orgIssuer := ti.URL + "/dev"
	mio := StartMinIO(t, orgIssuer+"/.well-known/openid-configuration", minioAudience)
	t.Logf("issuer and minio ready in %s; role %s", time.Since(start).Round(time.Millisecond), mio.RoleARN)

	// The token file, as the agent keeps it for AWS_WEB_IDENTITY_TOKEN_FILE.
	tokenPath := filepath.Join(t.TempDir(), "aws-token")
	ref, err := tokenfile.NewRefresher(tokenfile.Config{
		Path: tokenPath, Source: tokenfile.Source(ti.OIDCSource(devMT, minioAudience)), GID: -1, Audience: minioAudience,
	})
	if err != nil {
		t.Fatal(err)
	}
	refCtx, stopRef := context.WithCancel(ctx)
	refDone := make(chan error, 1)
	go func() { refDone <- ref.Run(refCtx) }()
	t.Cleanup(func() { stopRef(); <-refDone })
	select {
	case <-ref.Written():
	case <-ctx.Done():
		t.Fatalf("token file never written: %+v", ref.Status())
	}
	fileTok, err := os.ReadFile(tokenPath)
	if err != nil {
		t.Fatal(err)
	}

	// MinIO does not check iss; a strict relying party (go-oidc, doing
	// discovery on the org's issuer) accepts the same token.
	provider, err := gooidc.NewProvider(ctx, orgIssuer)
	if err != nil {
		t.Fatalf("discovery: %v", err)
	}
	strict := provider.Verifier(&gooidc.Config{ClientID: minioAudience})
	idt, err := strict.Verify(ctx, string(fileTok))
	if err != nil {
		t.Fatalf("go-oidc rejects the token MinIO is given: %v", err)
	}
	if idt.Subject != "dev:dev-app:web-1" || idt.Issuer != orgIssuer {
		t.Errorf("token sub %q iss %q", idt.Subject, idt.Issuer)
	}

	t.Run("sdk default chain", func(t *testing.T) {
		isolateAWSEnv(t)
		t.Setenv("AWS_WEB_IDENTITY_TOKEN_FILE", tokenPath)
		t.Setenv("AWS_ROLE_ARN", mio.RoleARN)
		t.Setenv("AWS_ROLE_SESSION_NAME", "web-1")
		t.Setenv("AWS_ENDPOINT_URL_STS", mio.URL)
		cfg, err := awsconfig.LoadDefaultConfig(ctx)
		if err != nil {
			t.Fatal(err)
		}
		creds, err := cfg.Credentials.Retrieve(ctx)
		if err != nil {
			t.Fatalf("default chain: %v", err)
		}
		if !strings.Contains(creds.Source, "WebIdentity") || creds.AccessKeyID == "" || creds.SessionToken == "" || !creds.CanExpire {
			t.Errorf("credentials from %q: %+v", creds.Source, creds)
		}
		s3RoundTrip(t, ctx, cfg, mio.URL, "wicket-e2e-chain")
	})

	t.Run("credential process", func(t *testing.T) {
		isolateAWSEnv(t)
		pc, err := aws.CredentialProcess(ctx, string(fileTok), mio.RoleARN, "web-1", time.Hour, mio.URL)
		if err != nil {
			t.Fatalf("credential process: %v", err)
		}
		if d := time.Until(pc.Expiration); d < 55*time.Minute || d > 61*time.Minute {
			t.Errorf("expiration in %s, want ≈1h", d)
		}
		// What the SDKs read from the command's stdout.
		out, _ := json.Marshal(pc)
		var doc struct {
			Version                                                int
			AccessKeyId, SecretAccessKey, SessionToken, Expiration string
		}
		if err := json.Unmarshal(out, &doc); err != nil || doc.Version != 1 || doc.AccessKeyId == "" || doc.SessionToken == "" {
			t.Fatalf("credential_process JSON %s: %v", out, err)
		}
		if _, err := time.Parse(time.RFC3339, doc.Expiration); err != nil {
			t.Errorf("Expiration %q: %v", doc.Expiration, err)
		}
		cfg := awssdk.Config{
			Region:      "us-east-1",
			Credentials: credentials.NewStaticCredentialsProvider(doc.AccessKeyId, doc.SecretAccessKey, doc.SessionToken),
		}
		s3RoundTrip(t, ctx, cfg, mio.URL, "wicket-e2e-process")
	})

	t.Run("refused", func(t *testing.T) {
		isolateAWSEnv(t)
		for _, tc := range []struct {
			name  string
			token string
		}{
			{"another audience", ti.OIDCSource(devMT, "sts.amazonaws.com").Must(t)},
			{"another org's issuer", ti.OIDCSource(acmeMT, minioAudience).Must(t)},
			{"not a jwt", "not-a-jwt"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				_, err := aws.CredentialProcess(ctx, tc.token, mio.RoleARN, "web-1", 0, mio.URL)
				var se *aws.STSError
				if !errors.As(err, &se) || se.Code == "" {
					t.Fatalf("MinIO accepted or failed oddly: %v", err)
				}
				t.Logf("MinIO refused: %v", se)
				if _, err := strict.Verify(ctx, tc.token); err == nil {
					t.Error("go-oidc accepted it")
				}
			})
		}
	})

	if st := ref.Status(); st.Refreshes != 1 || st.Failures != 0 {
		t.Errorf("token file status %+v", st)
	}
	t.Logf("total %s", time.Since(start).Round(time.Millisecond))
}
