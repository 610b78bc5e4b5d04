// Package tokenfiles is the [[token_file]] feature: files the agent keeps
// holding a fresh OIDC token for one audience, for tools that read tokens
// from disk (AWS_WEB_IDENTITY_TOKEN_FILE, AZURE_FEDERATED_TOKEN_FILE, GCP
// file-sourced credentials). It owns the section's keys and their checks;
// the files it claims join the agent's one list of token files
// (config.Agent.AddTokenFile), and its run-time part (refreshers.go)
// keeps every file of that list, its own and those [aws] and [azure]
// imply.
package tokenfiles

import (
	"fmt"
	"strconv"
	"time"

	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/oidc"
)

// Key is the section's TOML key.
const Key = "token_file"

// File is one [[token_file]].
type File struct {
	Path     string `toml:"path"`     // absolute and clean
	Audience string `toml:"audience"` // the tokens' aud
	// Mode is the file's permission bits (default 0440). Pointers tell
	// "not set" from an explicit value that fails validation.
	Mode *config.Mode `toml:"mode"`
	// Group is a group name or gid; "" keeps the agent's group.
	Group string `toml:"group"`
	// Refresh is how much of a token's life passes before the file gets
	// a new one (default "80%").
	Refresh *config.Percent `toml:"refresh"`
	// TTL is the life the agent asks the issuer for, for this file's
	// tokens (1m..1h, and at most the issuer's [oidc] max_ttl); unset
	// shares the guest API's tokens for the audience, whose life is
	// [tokens] ttl capped by the issuer's [oidc] token_ttl.
	TTL *config.Duration `toml:"ttl"`
}

// MinTTL and MaxTTL bound [[token_file]] ttl: the issuer's [oidc] max_ttl
// is at most 1 h, and it refuses a request for more than its own max_ttl.
const (
	MinTTL = time.Minute
	MaxTTL = time.Hour
)

// Module is the feature.
type Module struct{}

// Key implements config.Section.
func (Module) Key() string { return Key }

// New implements config.Section: no files by default.
func (Module) New() any { return &[]File{} }

// Validate implements config.Section: each file is checked and claimed
// in order.
func (Module) Validate(v any, c *config.Agent) []error {
	var errs []error
	for i, f := range *v.(*[]File) {
		name := fmt.Sprintf("token_file[%d]", i)
		s, ferrs := f.spec(name)
		errs = append(errs, ferrs...)
		c.AddTokenFile(name, s)
	}
	return errs
}

// spec checks one [[token_file]] and applies its defaults.
func (f File) spec(name string) (config.TokenFileSpec, []error) {
	var errs []error
	s := config.TokenFileSpec{Path: f.Path, Audience: f.Audience, Mode: config.DefaultTokenFileMode.FileMode(), GID: -1, Refresh: float64(config.DefaultTokenFileRefresh)}
	if err := config.CheckFilePath(f.Path); err != nil {
		errs = append(errs, fmt.Errorf("%s.path: %w", name, err))
	}
	if f.Audience == "" {
		errs = append(errs, fmt.Errorf("%s.audience is required", name))
	} else if oidc.ValidateAudience([]string{f.Audience}) != nil {
		errs = append(errs, fmt.Errorf("%s.audience: want 1..%d printable ASCII characters without spaces", name, oidc.MaxAudienceLen))
	}
	if f.Mode != nil {
		s.Mode = f.Mode.FileMode()
		if err := config.CheckTokenFileMode(s.Mode); err != nil {
			errs = append(errs, fmt.Errorf("%s.mode %04o: %w", name, uint32(s.Mode), err))
		}
	}
	gid, err := config.LookupGID(f.Group)
	if err != nil {
		errs = append(errs, fmt.Errorf("%s.group: %w", name, err))
	}
	s.GID = gid
	if f.Refresh != nil {
		s.Refresh = float64(*f.Refresh)
		if !(s.Refresh >= 0.1 && s.Refresh <= 0.95) {
			errs = append(errs, fmt.Errorf("%s.refresh %s: want 10%%..95%% of the token's life", name, strconv.FormatFloat(s.Refresh*100, 'f', -1, 64)+"%"))
		}
	}
	if f.TTL != nil {
		s.TTL = f.TTL.Duration
		if s.TTL < MinTTL || s.TTL > MaxTTL {
			errs = append(errs, fmt.Errorf("%s.ttl %v: want %v..%v (and at most the issuer's oidc.max_ttl)", name, s.TTL, MinTTL, MaxTTL))
		}
	}
	return s, errs
}
