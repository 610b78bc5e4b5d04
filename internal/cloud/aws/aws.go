// Package aws exchanges a wicket OIDC token for AWS credentials
// (AssumeRoleWithWebIdentity) in the shape the AWS SDKs' credential_process
// expects, and names the environment the SDKs' web identity provider reads.
// Any STS that speaks the AWS API works, MinIO's included.
package aws

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/aws/smithy-go"

	"github.com/wicket-sh/wicket/internal/cloud/awsname"
)

// DefaultRegion is used when neither AWS_REGION nor AWS_DEFAULT_REGION is set.
const DefaultRegion = "us-east-1"

// Audience is the audience AWS STS expects in web identity tokens by default.
const Audience = awsname.Audience

// STS limits on a role session.
const (
	MinDuration = 15 * time.Minute
	MaxDuration = 12 * time.Hour
)

// ProcessCredentials is the credential_process output: AWS SDKs and the CLI
// run the command and read this JSON from its stdout.
type ProcessCredentials struct {
	Version         int
	AccessKeyID     string
	SecretAccessKey string
	SessionToken    string
	Expiration      time.Time
}

type processJSON struct {
	Version         int    `json:"Version"`
	AccessKeyID     string `json:"AccessKeyId"`
	SecretAccessKey string `json:"SecretAccessKey"`
	SessionToken    string `json:"SessionToken"`
	Expiration      string `json:"Expiration"`
}

// MarshalJSON writes the credential_process document, Expiration in RFC 3339.
func (c ProcessCredentials) MarshalJSON() ([]byte, error) {
	return json.Marshal(processJSON{
		Version: c.Version, AccessKeyID: c.AccessKeyID, SecretAccessKey: c.SecretAccessKey,
		SessionToken: c.SessionToken, Expiration: c.Expiration.UTC().Format(time.RFC3339),
	})
}

// UnmarshalJSON reads the credential_process document.
func (c *ProcessCredentials) UnmarshalJSON(b []byte) error {
	var p processJSON
	if err := json.Unmarshal(b, &p); err != nil {
		return err
	}
	exp, err := time.Parse(time.RFC3339, p.Expiration)
	if err != nil {
		return fmt.Errorf("expiration: %w", err)
	}
	*c = ProcessCredentials{Version: p.Version, AccessKeyID: p.AccessKeyID, SecretAccessKey: p.SecretAccessKey,
		SessionToken: p.SessionToken, Expiration: exp}
	return nil
}

// STSError is STS refusing the exchange (bad token, untrusted issuer, wrong
// audience, role policy...). Code is STS's error code, e.g.
// InvalidIdentityToken or AccessDenied.
type STSError struct {
	Code    string
	Message string
}

func (e *STSError) Error() string {
	if e.Message == "" {
		return "STS rejected AssumeRoleWithWebIdentity: " + e.Code
	}
	return "STS rejected AssumeRoleWithWebIdentity: " + e.Code + ": " + e.Message
}

// Region is the region from the environment, or DefaultRegion.
func Region() string {
	for _, k := range []string{"AWS_REGION", "AWS_DEFAULT_REGION"} {
		if v := os.Getenv(k); v != "" {
			return v
		}
	}
	return DefaultRegion
}

// CredentialProcess calls AssumeRoleWithWebIdentity with token and returns
// the temporary credentials. duration 0 lets STS choose (the role's
// default, usually 1h); stsEndpoint overrides the endpoint (a regional STS,
// MinIO). The call is unsigned: the token is the only credential.
func CredentialProcess(ctx context.Context, token, roleARN, sessionName string, duration time.Duration, stsEndpoint string) (*ProcessCredentials, error) {
	if token == "" {
		return nil, errors.New("aws: empty web identity token")
	}
	if err := CheckParams(roleARN, sessionName, duration); err != nil {
		return nil, err
	}
	opts := sts.Options{Region: Region(), Credentials: awssdk.AnonymousCredentials{}}
	if stsEndpoint != "" {
		opts.BaseEndpoint = awssdk.String(stsEndpoint)
	}
	in := &sts.AssumeRoleWithWebIdentityInput{
		RoleArn:          awssdk.String(roleARN),
		RoleSessionName:  awssdk.String(sessionName),
		WebIdentityToken: awssdk.String(token),
	}
	if duration != 0 {
		in.DurationSeconds = awssdk.Int32(int32(duration / time.Second))
	}
	out, err := sts.New(opts).AssumeRoleWithWebIdentity(ctx, in)
	if err != nil {
		var api smithy.APIError
		if errors.As(err, &api) {
			return nil, &STSError{Code: api.ErrorCode(), Message: oneLine(api.ErrorMessage())}
		}
		return nil, fmt.Errorf("aws: AssumeRoleWithWebIdentity: %w", err)
	}
	c := out.Credentials
	if c == nil || c.AccessKeyId == nil || c.SecretAccessKey == nil || c.Expiration == nil {
		return nil, errors.New("aws: STS returned no credentials")
	}
	return &ProcessCredentials{
		Version:         1,
		AccessKeyID:     *c.AccessKeyId,
		SecretAccessKey: *c.SecretAccessKey,
		SessionToken:    awssdk.ToString(c.SessionToken),
		Expiration:      *c.Expiration,
	}, nil
}

// CheckParams validates CredentialProcess's parameters before any call is
// made.
func CheckParams(roleARN, sessionName string, duration time.Duration) error {
	if roleARN == "" {
		return errors.New("aws: role ARN is required")
	}
	if !awsname.Valid(sessionName) {
		return fmt.Errorf("aws: session name %q: want 2..64 of letters, digits and +=,.@_-", sessionName)
	}
	if duration != 0 && (duration < MinDuration || duration > MaxDuration) {
		return fmt.Errorf("aws: duration %s outside %s..%s", duration, MinDuration, MaxDuration)
	}
	return nil
}

// oneLine keeps an upstream message on one line and short.
func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}

// EnvAWS returns the variables ("K=V") that make the AWS SDKs' default
// chain assume roleARN with the token in tokenFile, refreshing it as the
// file changes. sessionName is left out when empty (the SDKs then make one up).
func EnvAWS(roleARN, tokenFile, sessionName string) []string {
	env := []string{"AWS_ROLE_ARN=" + roleARN, "AWS_WEB_IDENTITY_TOKEN_FILE=" + tokenFile}
	if sessionName != "" {
		env = append(env, "AWS_ROLE_SESSION_NAME="+sessionName)
	}
	return env
}

// ValidSessionName reports whether STS accepts s as a role session name.
func ValidSessionName(s string) bool { return awsname.Valid(s) }

// SessionName turns s (a hostname, a machine name) into a valid session
// name (awsname.SessionName).
func SessionName(s string) string { return awsname.SessionName(s) }
