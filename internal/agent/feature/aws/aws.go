// Package aws is the agent's [aws] feature: with a role, the agent keeps a
// token file for STS and workloads it starts get the AWS SDKs' web
// identity environment (AWS_ROLE_ARN, AWS_WEB_IDENTITY_TOKEN_FILE,
// AWS_ROLE_SESSION_NAME).
package aws

import (
	"errors"
	"fmt"
	"strings"

	"github.com/wicket-sh/wicket/internal/agent/feature"
	"github.com/wicket-sh/wicket/internal/cloud/awsname"
	"github.com/wicket-sh/wicket/internal/config"
)

// Key is the section's TOML key.
const Key = "aws"

// Defaults.
const (
	// Audience is the audience AWS STS expects by default.
	Audience = awsname.Audience
	// DefaultTokenFile is the file implied when nothing else names one.
	DefaultTokenFile = "/run/wicket/tokens/aws"
	// defaultSessionName is AWS_ROLE_SESSION_NAME before the machine's
	// metadata (its id) is known.
	defaultSessionName = "wicket"
)

// Config is [aws].
type Config struct {
	RoleARN string `toml:"role_arn"`
	// SessionName is AWS_ROLE_SESSION_NAME; "" means the machine id.
	SessionName string `toml:"session_name"`
	// TokenFile is AWS_WEB_IDENTITY_TOKEN_FILE; see TokenFilePath.
	TokenFile string `toml:"token_file"`

	file string // settled by Validate
}

// TokenFilePath is the file AWS_WEB_IDENTITY_TOKEN_FILE names, "" without
// role_arn: token_file; else the one [[token_file]] with audience
// sts.amazonaws.com; else the implied DefaultTokenFile. Set by Validate.
func (c *Config) TokenFilePath() string { return c.file }

// From returns the [aws] section of a config loaded with this feature.
func From(c *config.Agent) *Config {
	if v, ok := c.Section(Key).(*Config); ok {
		return v
	}
	return &Config{}
}

// Module is the feature.
type Module struct{}

var _ feature.Env = Module{}

// Key implements config.Section.
func (Module) Key() string { return Key }

// New implements config.Section.
func (Module) New() any { return &Config{} }

// Validate implements config.Section; with a role, it claims the token
// file the SDKs are pointed at.
func (Module) Validate(v any, c *config.Agent) []error {
	a := v.(*Config)
	a.file = ""
	if a.RoleARN == "" {
		if a.SessionName != "" || a.TokenFile != "" {
			return []error{errors.New("aws: session_name and token_file mean nothing without role_arn")}
		}
		return nil
	}
	var errs []error
	if err := checkRoleARN(a.RoleARN); err != nil {
		errs = append(errs, fmt.Errorf("aws.role_arn: %w", err))
	}
	if a.SessionName != "" && !awsname.Valid(a.SessionName) {
		errs = append(errs, fmt.Errorf("aws.session_name %q: want 2..64 of letters, digits and +=,.@_-", a.SessionName))
	}
	path, err := c.ImplyTokenFile(Key, a.TokenFile, DefaultTokenFile, Audience)
	if err != nil {
		errs = append(errs, err)
	}
	a.file = path
	return errs
}

func checkRoleARN(arn string) error {
	if !strings.HasPrefix(arn, "arn:") {
		return fmt.Errorf("%q is not an ARN (arn:...)", arn)
	}
	return config.CheckPrintable(arn, 2048)
}

// Env implements feature.Env: the web identity variables, with a role.
func (Module) Env(v any, _ *config.Agent, h feature.Host) []string {
	a := v.(*Config)
	if a.RoleARN == "" {
		return nil
	}
	return []string{
		"AWS_ROLE_ARN=" + a.RoleARN,
		"AWS_WEB_IDENTITY_TOKEN_FILE=" + a.file,
		"AWS_ROLE_SESSION_NAME=" + SessionName(a.SessionName, h.MachineID()),
	}
}

// SessionName is the configured session name, else machineID made valid
// (so the role session names the machine in CloudTrail), else "wicket".
func SessionName(configured, machineID string) string {
	switch {
	case configured != "":
		return configured
	case machineID != "":
		return awsname.SessionName(machineID)
	}
	return defaultSessionName
}
