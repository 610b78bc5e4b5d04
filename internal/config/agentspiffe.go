package config

import (
	"errors"
	"time"

	"github.com/wicket-sh/wicket/api"
)

// AgentSPIFFE configures the SPIFFE Workload API socket (static; see
// docs/spiffe.md). Callers get identities by the [[policy]] rules that
// allow them POST /v1/svids/x509 (X.509-SVIDs and bundles) or POST
// /v1/svids/jwt (JWT-SVIDs, JWT bundles, validation), named by the rule's
// svid_name.
type AgentSPIFFE struct {
	Socket
	// Enabled serves the Workload API; it needs issuer.url.
	Enabled bool `toml:"enabled"`
	// X509CopyTTL is the life of the machine-token copy that asks for an
	// X.509-SVID: the SVID never outlives it.
	X509CopyTTL Duration `toml:"x509_copy_ttl"`
	// JWTCopyTTL is the same for a JWT-SVID.
	JWTCopyTTL Duration `toml:"jwt_copy_ttl"`
}

func defaultAgentSPIFFE() AgentSPIFFE {
	return AgentSPIFFE{
		Socket:      Socket{Path: api.DefaultSPIFFESocket, Mode: 0o660, MaxConns: 1024},
		X509CopyTTL: Duration{time.Hour},
		JWTCopyTTL:  Duration{5 * time.Minute},
	}
}

func (c *Agent) validateSPIFFE() []error {
	s := c.SPIFFE
	if !s.Enabled {
		return nil
	}
	var errs []error
	if c.Issuer.URL == "" {
		errs = append(errs, errors.New("spiffe.enabled needs issuer.url to get SVIDs from"))
	}
	if s.Path == c.API.Path || s.Path == c.Admin.Path {
		errs = append(errs, errors.New("spiffe.socket_path must differ from api.socket_path and admin.socket_path"))
	}
	if s.X509CopyTTL.Duration < 2*time.Minute || s.X509CopyTTL.Duration > 24*time.Hour {
		errs = append(errs, errors.New("spiffe.x509_copy_ttl: want 2m to 24h"))
	}
	if s.JWTCopyTTL.Duration < 2*time.Minute || s.JWTCopyTTL.Duration > time.Hour {
		errs = append(errs, errors.New("spiffe.jwt_copy_ttl: want 2m to 1h"))
	}
	return errs
}
