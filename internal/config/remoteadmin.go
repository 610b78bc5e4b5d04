package config

import (
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/wicket-sh/wicket/internal/httpapi"
)

// RemoteAdmin is the issuer's remote admin API: machine management over
// HTTPS for host orchestrators holding admin tokens (docs/orchestrator.md).
// Where it listens and how it does TLS are static; its limits are dynamic.
type RemoteAdmin struct {
	// Listen, when set, serves the API on its own listener (host:port);
	// empty: no remote admin API.
	Listen  string `toml:"listen" reload:"restart"`
	TLSCert string `toml:"tls_cert" reload:"restart"`
	TLSKey  string `toml:"tls_key" reload:"restart"`
	// ClientCA, when set, is a PEM bundle: every caller must also present
	// a client certificate it verifies (besides the admin token).
	ClientCA string `toml:"client_ca" reload:"restart"`
	// AllowPlaintext must be set to listen on a non-loopback address
	// without TLS (TLS terminated in front of the issuer).
	AllowPlaintext bool `toml:"allow_plaintext" reload:"restart"`
	// Rate and Burst are each admin token's requests per second and
	// burst; every attenuated copy of a token shares its bucket.
	Rate  float64 `toml:"rate"`
	Burst int     `toml:"burst"`
	// Limits bounds request bodies (max_body_bytes, body_timeout).
	Limits
}

// Enabled reports whether the remote admin API is configured.
func (r RemoteAdmin) Enabled() bool { return r.Listen != "" }

// defaultRemoteAdmin is the remote admin API's defaults: disabled.
func defaultRemoteAdmin() RemoteAdmin {
	return RemoteAdmin{Rate: 20, Burst: 40, Limits: Limits{MaxBodyBytes: 64 << 10, BodyTimeout: Duration{10 * time.Second}}}
}

func (r RemoteAdmin) validate() []error {
	var errs []error
	if r.Rate <= 0 || r.Burst < 1 {
		errs = append(errs, errors.New("remote_admin: rate must be positive and burst at least 1"))
	}
	if r.MaxBodyBytes < 1024 || r.MaxBodyBytes > 1<<20 {
		errs = append(errs, errors.New("remote_admin.max_body_bytes: want 1024..1048576"))
	}
	if r.BodyTimeout.Duration <= 0 {
		errs = append(errs, errors.New("remote_admin.body_timeout must be positive"))
	}
	if !r.Enabled() {
		return errs
	}
	host, _, err := net.SplitHostPort(r.Listen)
	switch {
	case err != nil:
		errs = append(errs, fmt.Errorf("remote_admin.listen %q: want host:port", r.Listen))
	case (r.TLSCert == "") != (r.TLSKey == ""):
		errs = append(errs, errors.New("remote_admin: set both tls_cert and tls_key, or neither"))
	case r.TLSCert == "" && r.ClientCA != "":
		errs = append(errs, errors.New("remote_admin.client_ca needs tls_cert and tls_key"))
	case r.TLSCert == "" && !httpapi.LoopbackHost(host) && !r.AllowPlaintext:
		// Admin tokens travel on this listener: never in clear text over
		// a real network unless the operator says TLS ends in front of it.
		errs = append(errs, fmt.Errorf("remote_admin.listen %q is not loopback: configure tls_cert/tls_key or set allow_plaintext (TLS terminated in front)", r.Listen))
	}
	return errs
}
