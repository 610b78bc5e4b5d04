// Package azure is the agent's [azure] feature: with a client ID, the
// agent keeps a token file for Microsoft Entra workload identity
// federation and workloads it starts get the Azure SDKs' environment
// (AZURE_CLIENT_ID, AZURE_TENANT_ID, AZURE_FEDERATED_TOKEN_FILE,
// AZURE_AUTHORITY_HOST).
package azure

import (
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/wicket-sh/wicket/internal/agent/feature"
	"github.com/wicket-sh/wicket/internal/config"
)

// Key is the section's TOML key.
const Key = "azure"

// Defaults.
const (
	// Audience is the audience Microsoft Entra expects in federated
	// credentials.
	Audience = "api://AzureADTokenExchange"
	// DefaultTokenFile is the file implied when nothing else names one.
	DefaultTokenFile = "/run/wicket/tokens/azure"
	// DefaultAuthorityHost is Entra's public cloud.
	DefaultAuthorityHost = "https://login.microsoftonline.com/"
	// DefaultTokenTTL is the life of the tokens in the file [azure]
	// names, unless its [[token_file]] sets ttl. The Azure SDKs cache the
	// file's content (@azure/identity 5 minutes, Go azidentity 10, Python
	// azure-identity 5 to 10) and present it without looking at its exp:
	// Kubernetes' 1 h tokens replaced at 80 % leave 12 minutes, which is
	// what they are built for. A 10-minute token replaced at 80 % leaves 2,
	// and a cached copy reaches Entra expired (AADSTS700024).
	DefaultTokenTTL = time.Hour
)

// Config is [azure].
type Config struct {
	ClientID      string `toml:"client_id"`
	TenantID      string `toml:"tenant_id"`
	TokenFile     string `toml:"token_file"` // see TokenFilePath
	AuthorityHost string `toml:"authority_host"`

	file string // settled by Validate
}

// TokenFilePath is the file AZURE_FEDERATED_TOKEN_FILE names, "" without
// client_id, chosen as for [aws] with the audience
// api://AzureADTokenExchange. Set by Validate.
func (c *Config) TokenFilePath() string { return c.file }

// From returns the [azure] section of a config loaded with this feature.
func From(c *config.Agent) *Config {
	if v, ok := c.Section(Key).(*Config); ok {
		return v
	}
	return &Config{AuthorityHost: DefaultAuthorityHost}
}

// Module is the feature.
type Module struct{}

var _ feature.Env = Module{}

// Key implements config.Section.
func (Module) Key() string { return Key }

// New implements config.Section.
func (Module) New() any { return &Config{AuthorityHost: DefaultAuthorityHost} }

// Validate implements config.Section; with a client ID, it claims the
// token file the SDKs are pointed at.
func (Module) Validate(v any, c *config.Agent) []error {
	z := v.(*Config)
	z.file = ""
	var errs []error
	if err := checkAuthorityHost(z.AuthorityHost); err != nil {
		errs = append(errs, fmt.Errorf("azure.authority_host %q: %w", z.AuthorityHost, err))
	}
	if z.ClientID == "" {
		if z.TenantID != "" || z.TokenFile != "" {
			errs = append(errs, errors.New("azure: tenant_id and token_file mean nothing without client_id"))
		}
		return errs
	}
	for _, f := range []struct{ key, v string }{{"client_id", z.ClientID}, {"tenant_id", z.TenantID}} {
		if err := config.CheckPrintable(f.v, 256); err != nil {
			errs = append(errs, fmt.Errorf("azure.%s: %w", f.key, err))
		}
	}
	path, err := c.ImplyTokenFile(Key, z.TokenFile, DefaultTokenFile, Audience)
	if err != nil {
		errs = append(errs, err)
	}
	z.file = path
	// The file the Azure SDKs read gets tokens that outlive their caches,
	// unless its [[token_file]] says otherwise.
	if path != "" {
		c.DefaultTokenFileTTL(path, DefaultTokenTTL)
	}
	return errs
}

func checkAuthorityHost(s string) error {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return errors.New("want an https URL without credentials, query or fragment")
	}
	return nil
}

// Env implements feature.Env: the Azure SDKs' variables, with a client ID.
func (Module) Env(v any, _ *config.Agent, _ feature.Host) []string {
	z := v.(*Config)
	if z.ClientID == "" {
		return nil
	}
	return []string{
		"AZURE_CLIENT_ID=" + z.ClientID,
		"AZURE_TENANT_ID=" + z.TenantID,
		"AZURE_FEDERATED_TOKEN_FILE=" + z.file,
		"AZURE_AUTHORITY_HOST=" + z.AuthorityHost,
	}
}
