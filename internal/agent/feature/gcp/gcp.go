// Package gcp is the agent's [gcp] feature: what `wicket agent run` tells
// Google's libraries in the workloads it starts (GOOGLE_CLOUD_PROJECT,
// GOOGLE_APPLICATION_CREDENTIALS). The credentials file itself is written
// by `wicket gcp config`; its token file is a [[token_file]].
package gcp

import (
	"fmt"

	"github.com/wicket-sh/wicket/internal/agent/feature"
	"github.com/wicket-sh/wicket/internal/config"
)

// Key is the section's TOML key.
const Key = "gcp"

// maxProject bounds project (Google's project ids are 6..30 characters;
// the bound leaves room for other forms without letting a value run on).
const maxProject = 64

// Config is [gcp].
type Config struct {
	// Project is GOOGLE_CLOUD_PROJECT. Without it, Google's libraries
	// given external_account credentials look the project up in Cloud
	// Resource Manager (a call the federated identity may not be allowed
	// to make) as soon as a client is created.
	Project string `toml:"project"`
	// CredentialsFile is GOOGLE_APPLICATION_CREDENTIALS, the file
	// `wicket gcp config --output` wrote.
	CredentialsFile string `toml:"credentials_file"`
}

// From returns the [gcp] section of a config loaded with this feature.
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

// New implements config.Section: nothing set.
func (Module) New() any { return &Config{} }

// Validate implements config.Section.
func (Module) Validate(v any, _ *config.Agent) []error {
	g := v.(*Config)
	var errs []error
	if g.Project != "" && config.CheckPrintable(g.Project, maxProject) != nil {
		errs = append(errs, fmt.Errorf("gcp.project: want 1..%d printable characters without spaces", maxProject))
	}
	if g.CredentialsFile != "" {
		if err := config.CheckFilePath(g.CredentialsFile); err != nil {
			errs = append(errs, fmt.Errorf("gcp.credentials_file: %w", err))
		}
	}
	return errs
}

// Env implements feature.Env: each variable whose setting is set.
func (Module) Env(v any, _ *config.Agent, _ feature.Host) []string {
	g := v.(*Config)
	var env []string
	if g.Project != "" {
		env = append(env, "GOOGLE_CLOUD_PROJECT="+g.Project)
	}
	if g.CredentialsFile != "" {
		env = append(env, "GOOGLE_APPLICATION_CREDENTIALS="+g.CredentialsFile)
	}
	return env
}
