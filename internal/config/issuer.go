package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/httpapi"
	"github.com/wicket-sh/wicket/internal/proxy"
	"github.com/wicket-sh/wicket/internal/spiffe"
	"github.com/wicket-sh/wicket/internal/unixsock"
)

// IssuerServer is the issuer's public HTTP listener (static).
type IssuerServer struct {
	// PublicURL is the base every org's OIDC issuer URL is built from
	// (<public_url>/<org>). It is never taken from a request's Host header.
	PublicURL string `toml:"public_url"`
	Listen    string `toml:"listen"`
	TLSCert   string `toml:"tls_cert"`
	TLSKey    string `toml:"tls_key"`
	// AllowNonLoopback must be set to listen on a non-loopback address
	// without TLS.
	AllowPlaintext bool `toml:"allow_plaintext"`
}

// StateBackends returns the names state.backend accepts. Each has its
// settings validated in Validate and a backend in the issuer's registry
// (internal/issuer/backends.go); a test there keeps the two lists equal.
func StateBackends() []string { return []string{"bolt", "etcd"} }

// quotedOr lists names as "a", "b" or "c".
func quotedOr(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = strconv.Quote(n)
	}
	if len(q) < 2 {
		return strings.Join(q, "")
	}
	return strings.Join(q[:len(q)-1], ", ") + " or " + q[len(q)-1]
}

// State selects the issuer's state backend (static).
type State struct {
	Backend     string `toml:"backend"` // "bolt" (default) or "etcd"
	Dir         string `toml:"dir"`
	SealKeyFile string `toml:"seal_key_file"` // default <dir>/seal.key
	SealKeyEnv  string `toml:"seal_key_env"`

	// The rest configures the etcd backend (cluster mode), shared by every
	// issuer replica; see docs/cluster.md.

	// Endpoints are the etcd members' client URLs (https://host:2379).
	Endpoints []string `toml:"endpoints"`
	// TLSCert and TLSKey are the client certificate presented to etcd;
	// TLSCA verifies the members (system roots when empty).
	TLSCert string `toml:"tls_cert"`
	TLSKey  string `toml:"tls_key"`
	TLSCA   string `toml:"tls_ca"`
	// Prefix is prepended to every key, so deployments can share a cluster.
	Prefix         string   `toml:"prefix"`
	DialTimeout    Duration `toml:"dial_timeout"`
	RequestTimeout Duration `toml:"request_timeout"`
	// CacheGrace is how long, after etcd was last reachable, machine token
	// verification and OIDC signing keep working from memory; writes fail
	// with 503 from the first moment. 0 fails closed at once.
	CacheGrace Duration `toml:"cache_grace"`
	// AllowPlaintext permits http:// endpoints that are not loopback
	// (etcd on a private network the operator trusts).
	AllowPlaintext bool `toml:"allow_plaintext"`
}

// BoltPath is the bbolt state file.
func (s State) BoltPath() string { return filepath.Join(s.Dir, "state.db") }

// KeyFile is the seal key file path.
func (s State) KeyFile() string {
	if s.SealKeyFile != "" {
		return s.SealKeyFile
	}
	return filepath.Join(s.Dir, "seal.key")
}

// OIDC configures token signing (dynamic).
type OIDC struct {
	Alg        string   `toml:"alg"`        // RS256 (default) or ES256
	TokenTTL   Duration `toml:"token_ttl"`  // default lifetime, 10m
	MaxTTL     Duration `toml:"max_ttl"`    // longest a caller may ask for, at most 1h
	Prepublish Duration `toml:"prepublish"` // a new key is in the JWKS this long before it signs
	Grace      Duration `toml:"grace"`      // a retired key stays in the JWKS this long (≥ max_ttl)
	JWKSMaxAge Duration `toml:"jwks_max_age"`
	// RotateEvery rotates each org's signing key on a schedule; 0 = only by
	// `wicket issuer keys rotate`.
	RotateEvery Duration `toml:"rotate_every"`
}

// SPIFFE configures trust domains, SVIDs and the per-org CAs (static: a
// trust domain's name is part of every SVID and bundle already issued).
// See docs/spiffe.md.
type SPIFFE struct {
	// TrustDomain names the trust domain of every org not in
	// TrustDomains; "{org}" stands for the org.
	TrustDomain string `toml:"trust_domain"`
	// TrustDomains names trust domains explicitly: org → name.
	TrustDomains map[string]string `toml:"trust_domains"`
	// X509SVIDTTL is an X.509-SVID's life (at most the copy's that asked).
	X509SVIDTTL Duration `toml:"x509_svid_ttl"`
	// JWTSVIDTTL is a JWT-SVID's life (1m to 1h), capped at oidc.max_ttl
	// when issued: its signing keys (the org's JWT-SVID keys, apart from
	// its OIDC keys) share oidc.prepublish and oidc.grace ≥ oidc.max_ttl.
	JWTSVIDTTL Duration `toml:"jwt_svid_ttl"`
	// JWTRotateEvery rotates each org's JWT-SVID signing key on a
	// schedule; 0 = only when asked (`wicket issuer keys rotate --kind
	// spiffe-jwt`).
	JWTRotateEvery Duration `toml:"jwt_rotate_every"`
	// CATTL is the life of each CA certificate.
	CATTL Duration `toml:"ca_ttl"`
	// CAPrepublish is how long a new CA is in the bundle before it signs.
	CAPrepublish Duration `toml:"ca_prepublish"`
	// CAGrace is how long a retired CA stays in the bundle (≥ x509_svid_ttl).
	CAGrace Duration `toml:"ca_grace"`
	// CARotateEvery rotates each org's CA on a schedule; 0 = only when
	// asked (`wicket issuer keys rotate --kind spiffe-ca`).
	CARotateEvery Duration `toml:"ca_rotate_every"`
	// BundleRefreshHint is the bundle's spiffe_refresh_hint.
	BundleRefreshHint Duration `toml:"bundle_refresh_hint"`
	// Federation lists the foreign trust domains whose bundles the issuer
	// fetches and hands to the agents of the orgs that trust them
	// ([[spiffe.federation]]).
	Federation []SPIFFEFederation `toml:"federation"`
}

// The bundle endpoint profiles of the SPIFFE Federation specification.
const (
	// ProfileHTTPSWeb: the endpoint's TLS certificate is checked against
	// web PKI roots (ca_file, or the system's).
	ProfileHTTPSWeb = "https_web"
	// ProfileHTTPSSPIFFE: the endpoint's certificate is an X.509-SVID of
	// endpoint_spiffe_id, checked against the last known bundle of the
	// foreign trust domain (bundle_file to start with).
	ProfileHTTPSSPIFFE = "https_spiffe"
)

// SPIFFEFederation is one foreign trust domain that machines of Orgs
// trust: its bundle is fetched from BundleEndpointURL and handed to their
// agents beside their own. A foreign bundle only adds trust anchors for
// that trust domain; it never makes the issuer sign anything.
type SPIFFEFederation struct {
	// TrustDomain is the foreign trust domain's name ("spire.example").
	TrustDomain string `toml:"trust_domain"`
	// BundleEndpointURL is its SPIFFE bundle endpoint (https only).
	BundleEndpointURL string `toml:"bundle_endpoint_url"`
	// Profile is https_web or https_spiffe (required).
	Profile string `toml:"profile"`
	// CAFile (https_web) is a PEM file of the roots the endpoint's
	// certificate must chain to; empty: the system's roots.
	CAFile string `toml:"ca_file"`
	// EndpointSPIFFEID (https_spiffe, required there) is the SPIFFE ID
	// the endpoint's X.509-SVID must carry, a member of TrustDomain.
	EndpointSPIFFEID string `toml:"endpoint_spiffe_id"`
	// BundleFile (https_spiffe, required there) is the trust domain's
	// bundle to start from (SPIFFE bundle format), obtained out of band;
	// each fetched bundle replaces it in memory, never on disk.
	BundleFile string `toml:"bundle_file"`
	// Orgs are the orgs whose machines trust the domain: at least one,
	// there is no wildcard (a new org trusts nothing foreign until it is
	// listed).
	Orgs []string `toml:"orgs"`
}

func (c *SPIFFE) validate() []error {
	var errs []error
	if err := spiffe.ValidateTemplate(c.TrustDomain); err != nil {
		errs = append(errs, fmt.Errorf("spiffe.trust_domain: %w", err))
	}
	seen := map[string]string{}
	for org, name := range c.TrustDomains {
		if !ValidName(org) {
			errs = append(errs, fmt.Errorf("spiffe.trust_domains: org %q is not a valid org name", org))
			continue
		}
		if _, err := spiffe.TrustDomainFor("", c.TrustDomains, org); err != nil {
			errs = append(errs, fmt.Errorf("spiffe.trust_domains.%s: %w", org, err))
		}
		if other, dup := seen[name]; dup {
			errs = append(errs, fmt.Errorf("spiffe.trust_domains: orgs %s and %s share a trust domain", min(org, other), max(org, other)))
		}
		// An org not listed gets the template's name: if that is this
		// entry's, the two orgs would share a trust domain (the issuer
		// refuses the unlisted one anyway, at its first SVID).
		if other, ok := spiffe.TemplateOrg(c.TrustDomain, name); ok && other != org && ValidName(other) {
			if _, listed := c.TrustDomains[other]; !listed {
				errs = append(errs, fmt.Errorf("spiffe.trust_domains.%s: the trust_domain template gives org %q the same name; list %q explicitly too, or choose another name", org, other, other))
			}
		}
		seen[name] = org
	}
	if c.X509SVIDTTL.Duration < time.Minute || c.X509SVIDTTL.Duration > 24*time.Hour {
		errs = append(errs, errors.New("spiffe.x509_svid_ttl: want 1m to 24h"))
	}
	if c.JWTSVIDTTL.Duration < time.Minute || c.JWTSVIDTTL.Duration > time.Hour {
		errs = append(errs, errors.New("spiffe.jwt_svid_ttl: want 1m to 1h"))
	}
	if c.CAGrace.Duration < c.X509SVIDTTL.Duration {
		errs = append(errs, errors.New("spiffe.ca_grace must be at least x509_svid_ttl, or SVIDs outlive their CA in the bundle"))
	}
	if c.CAPrepublish.Duration < 0 || c.CATTL.Duration < 2*(c.CAPrepublish.Duration+c.CAGrace.Duration) {
		errs = append(errs, errors.New("spiffe.ca_ttl must be at least twice ca_prepublish + ca_grace"))
	}
	if c.CARotateEvery.Duration != 0 && (c.CARotateEvery.Duration < c.CAPrepublish.Duration+c.CAGrace.Duration ||
		c.CARotateEvery.Duration > c.CATTL.Duration-c.CAPrepublish.Duration-c.CAGrace.Duration) {
		errs = append(errs, errors.New("spiffe.ca_rotate_every must be 0, or between ca_prepublish + ca_grace and ca_ttl - ca_prepublish - ca_grace"))
	}
	if c.BundleRefreshHint.Duration < time.Second || c.BundleRefreshHint.Duration > c.CAPrepublish.Duration && c.CAPrepublish.Duration > 0 {
		errs = append(errs, errors.New("spiffe.bundle_refresh_hint: want at least 1s and shorter than ca_prepublish, or federated systems may not see a new CA before it signs"))
	}
	seenFed := map[string]bool{}
	perOrg := map[string]int{}
	for i, f := range c.Federation {
		errs = append(errs, c.validateFederation(i, f, seenFed)...)
		for _, org := range f.Orgs {
			perOrg[org]++
		}
	}
	for org, n := range perOrg {
		if n > MaxFederatedPerOrg {
			errs = append(errs, fmt.Errorf("spiffe.federation: org %s trusts %d foreign trust domains, more than %d", org, n, MaxFederatedPerOrg))
		}
	}
	return errs
}

// MaxFederatedPerOrg bounds the foreign trust domains one org trusts:
// each bundle is at most 64 KiB, and an agent reads at most 1 MiB of a
// reply, so the foreign bundles can never crowd out the org's own.
const MaxFederatedPerOrg = 8

// validateFederation checks one [[spiffe.federation]] entry: a valid
// foreign name that no org of ours has or could get, listed once; an
// https endpoint; the profile's own settings and no other's; valid orgs.
func (c *SPIFFE) validateFederation(i int, f SPIFFEFederation, seen map[string]bool) []error {
	var errs []error
	at := fmt.Sprintf("spiffe.federation[%d]", i)
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(at+": "+format, a...)) }
	td, err := spiffeid.TrustDomainFromString(f.TrustDomain)
	switch {
	case f.TrustDomain == "":
		bad("trust_domain is required")
	case err != nil || td.Name() != f.TrustDomain:
		bad("trust_domain %q: want a trust domain name (lowercase, no scheme or path)", f.TrustDomain)
	case seen[f.TrustDomain]:
		bad("trust_domain %q is listed twice", f.TrustDomain)
	default:
		seen[f.TrustDomain] = true
		for org, name := range c.TrustDomains {
			if name == f.TrustDomain {
				bad("trust_domain %q is org %s's own (spiffe.trust_domains)", f.TrustDomain, org)
			}
		}
		if org, ok := spiffe.TemplateOrg(c.TrustDomain, f.TrustDomain); ok && (org == "" || ValidName(org)) {
			bad("trust_domain %q is what spiffe.trust_domain names org %q's: a wicket trust domain cannot be foreign", f.TrustDomain, org)
		}
	}
	u, err := url.Parse(f.BundleEndpointURL)
	switch {
	case f.BundleEndpointURL == "":
		bad("bundle_endpoint_url is required")
	case err != nil || u.Scheme != "https" || u.Host == "":
		bad("bundle_endpoint_url %q: want an https URL", f.BundleEndpointURL)
	case u.User != nil || u.Fragment != "":
		bad("bundle_endpoint_url %q: no user info or fragment", f.BundleEndpointURL)
	}
	switch f.Profile {
	case ProfileHTTPSWeb:
		if f.EndpointSPIFFEID != "" || f.BundleFile != "" {
			bad("endpoint_spiffe_id and bundle_file are for profile %q only", ProfileHTTPSSPIFFE)
		}
		if f.CAFile != "" && !filepath.IsAbs(f.CAFile) {
			bad("ca_file %q: want an absolute path", f.CAFile)
		}
	case ProfileHTTPSSPIFFE:
		if f.CAFile != "" {
			bad("ca_file is for profile %q only: https_spiffe trusts the domain's own bundle", ProfileHTTPSWeb)
		}
		if id, err := spiffeid.FromString(f.EndpointSPIFFEID); err != nil || td.IsZero() || !id.MemberOf(td) {
			bad("endpoint_spiffe_id %q: want the SPIFFE ID of the bundle endpoint, in trust domain %q", f.EndpointSPIFFEID, f.TrustDomain)
		}
		if f.BundleFile == "" || !filepath.IsAbs(f.BundleFile) {
			bad("bundle_file %q: want the absolute path of the domain's initial bundle", f.BundleFile)
		}
	case "":
		bad("profile is required: %q or %q", ProfileHTTPSWeb, ProfileHTTPSSPIFFE)
	default:
		bad("profile %q: want %q or %q", f.Profile, ProfileHTTPSWeb, ProfileHTTPSSPIFFE)
	}
	if len(f.Orgs) == 0 {
		bad("orgs: list the orgs whose machines trust %q (there is no wildcard)", f.TrustDomain)
	}
	dup := map[string]bool{}
	for _, org := range f.Orgs {
		switch {
		case !ValidName(org):
			bad("orgs: %q is not a valid org name", org)
		case dup[org]:
			bad("orgs: %q is listed twice", org)
		}
		dup[org] = true
	}
	return errs
}

// MachineTokens configures machine token minting (dynamic).
type MachineTokens struct {
	DefaultTTL Duration `toml:"default_ttl"`
	MaxTTL     Duration `toml:"max_ttl"`
}

// Gateway configures the optional forwarding of /v1/apps/... (dynamic).
type Gateway struct {
	Upstream string   `toml:"upstream"`
	Timeout  Duration `toml:"timeout"`
	// ForwardHeaders are the machine's request headers forwarded; unset
	// means proxy.DefaultForwardHeaders, [] means none. Naming a header
	// that is never forwarded (proxy.NeverForwarded) is an error.
	ForwardHeaders []string `toml:"forward_headers"`
}

// Issuer is the whole issuer configuration.
type Issuer struct {
	Server        IssuerServer  `toml:"server" reload:"restart"`
	Admin         Admin         `toml:"admin"`
	State         State         `toml:"state" reload:"restart"`
	HTTP          HTTP          `toml:"http" reload:"restart"`
	OIDC          OIDC          `toml:"oidc"`
	MachineTokens MachineTokens `toml:"machine_tokens"`
	Gateway       Gateway       `toml:"gateway"`
	SPIFFE        SPIFFE        `toml:"spiffe" reload:"restart"`
	RemoteAdmin   RemoteAdmin   `toml:"remote_admin"`
	Log           Log           `toml:"log"`

	gatewayHeaders *proxy.HeaderAllowlist
}

// GatewayHeaders returns the validated gateway.forward_headers (the
// default list before Validate).
func (c *Issuer) GatewayHeaders() *proxy.HeaderAllowlist {
	if c.gatewayHeaders == nil {
		h, _ := proxy.CompileHeaders(nil)
		return h
	}
	return c.gatewayHeaders
}

// DefaultIssuer returns the configuration used when no file is given.
func DefaultIssuer() *Issuer {
	return &Issuer{
		Server: IssuerServer{PublicURL: "http://127.0.0.1:8650", Listen: "127.0.0.1:8650"},
		Admin:  Admin{Socket: Socket{Path: api.DefaultIssuerAdminSocket, Mode: 0o600, MaxConns: 32}},
		State: State{
			Backend: "bolt", Dir: "/var/lib/wicket",
			Prefix: "/wicket/", DialTimeout: Duration{5 * time.Second}, RequestTimeout: Duration{5 * time.Second},
			CacheGrace: Duration{5 * time.Minute},
		},
		HTTP: HTTP{
			ReadHeaderTimeout: Duration{5 * time.Second},
			IdleTimeout:       Duration{120 * time.Second},
			WriteTimeout:      Duration{3 * time.Minute},
			MaxHeaderBytes:    32 << 10,
		},
		OIDC: OIDC{
			Alg:        "RS256",
			TokenTTL:   Duration{10 * time.Minute},
			MaxTTL:     Duration{time.Hour},
			Prepublish: Duration{15 * time.Minute},
			Grace:      Duration{2 * time.Hour},
			JWKSMaxAge: Duration{5 * time.Minute},
		},
		MachineTokens: MachineTokens{DefaultTTL: Duration{720 * time.Hour}, MaxTTL: Duration{8760 * time.Hour}},
		Gateway:       Gateway{Timeout: Duration{30 * time.Second}},
		SPIFFE: SPIFFE{
			TrustDomain: spiffe.DefaultTrustDomainTemplate,
			X509SVIDTTL: Duration{time.Hour}, JWTSVIDTTL: Duration{5 * time.Minute},
			CATTL: Duration{90 * 24 * time.Hour}, CAPrepublish: Duration{time.Hour}, CAGrace: Duration{24 * time.Hour},
			BundleRefreshHint: Duration{5 * time.Minute},
		},
		RemoteAdmin: defaultRemoteAdmin(),
		Log:         Log{Level: "info"},
	}
}

// IssuerOverride adjusts a parsed issuer config before validation, at
// startup and on every reload alike.
type IssuerOverride func(*Issuer)

// LoadIssuer reads, parses and validates the issuer config at path
// (defaults only when path is empty), applying overrides before validation.
func LoadIssuer(path string, overrides ...IssuerOverride) (*Issuer, error) {
	return load(DefaultIssuer(), path, overrides, (*Issuer).Validate)
}

// Validate checks the whole issuer config.
func (c *Issuer) Validate() error {
	var errs []error
	u, err := url.Parse(c.Server.PublicURL)
	switch {
	case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
		errs = append(errs, fmt.Errorf("server.public_url %q: want an http(s) URL", c.Server.PublicURL))
	case u.RawQuery != "" || u.Fragment != "" || u.User != nil:
		errs = append(errs, fmt.Errorf("server.public_url %q: no query, fragment or user info", c.Server.PublicURL))
	}
	host, _, err := net.SplitHostPort(c.Server.Listen)
	if err != nil {
		errs = append(errs, fmt.Errorf("server.listen %q: want host:port", c.Server.Listen))
	} else if (c.Server.TLSCert == "") != (c.Server.TLSKey == "") {
		errs = append(errs, errors.New("server: set both tls_cert and tls_key, or neither"))
	} else if c.Server.TLSCert == "" && !httpapi.LoopbackHost(host) && !c.Server.AllowPlaintext {
		// Machine tokens travel on this listener: never in clear text over
		// a real network unless the operator says TLS ends in front of it.
		errs = append(errs, fmt.Errorf("server.listen %q is not loopback: configure tls_cert/tls_key or set allow_plaintext (TLS terminated in front)", c.Server.Listen))
	}
	if err := unixsock.ValidatePath(c.Admin.Path); err != nil {
		errs = append(errs, fmt.Errorf("admin.socket_path: %w", err))
	}
	if c.Admin.Mode&0o600 != 0o600 || c.Admin.Mode&0o007 != 0 {
		errs = append(errs, fmt.Errorf("admin.socket_mode %04o: owner needs rw, others nothing", uint32(c.Admin.Mode)))
	}
	if c.Admin.MaxConns < 1 {
		errs = append(errs, errors.New("admin.max_conns must be at least 1"))
	} else if n := c.Admin.MaxConnsPerUID; n < 0 || n > c.Admin.MaxConns {
		errs = append(errs, fmt.Errorf("admin.max_conns_per_uid %d: want 1..max_conns (%d), or 0 for max_conns/4", n, c.Admin.MaxConns))
	}
	if c.Admin.TokenFile != "" && c.Admin.TokenEnv != "" {
		errs = append(errs, errors.New("admin: set token_file or token_env, not both"))
	}
	switch c.State.Backend {
	case "bolt":
		if c.State.Dir == "" || !filepath.IsAbs(c.State.Dir) {
			errs = append(errs, fmt.Errorf("state.dir %q: want an absolute path", c.State.Dir))
		}
	case "etcd":
		errs = append(errs, c.State.validateEtcd()...)
	default:
		errs = append(errs, fmt.Errorf("state.backend %q: want %s", c.State.Backend, quotedOr(StateBackends())))
	}
	if c.OIDC.Alg != "RS256" && c.OIDC.Alg != "ES256" {
		errs = append(errs, fmt.Errorf("oidc.alg %q: want RS256 or ES256", c.OIDC.Alg))
	}
	if c.OIDC.MaxTTL.Duration <= 0 || c.OIDC.MaxTTL.Duration > time.Hour {
		errs = append(errs, errors.New("oidc.max_ttl: want more than 0 and at most 1h"))
	}
	if c.OIDC.TokenTTL.Duration < time.Minute || c.OIDC.TokenTTL.Duration > c.OIDC.MaxTTL.Duration {
		errs = append(errs, errors.New("oidc.token_ttl: want at least 1m and at most oidc.max_ttl"))
	}
	if c.OIDC.Grace.Duration < c.OIDC.MaxTTL.Duration {
		errs = append(errs, errors.New("oidc.grace must be at least oidc.max_ttl, or tokens outlive their key in the JWKS"))
	}
	if c.OIDC.JWKSMaxAge.Duration >= c.OIDC.Prepublish.Duration && c.OIDC.Prepublish.Duration > 0 {
		errs = append(errs, errors.New("oidc.jwks_max_age must be shorter than oidc.prepublish, or relying parties may not see a new key before it signs"))
	}
	if c.OIDC.RotateEvery.Duration != 0 && c.OIDC.RotateEvery.Duration < c.OIDC.Prepublish.Duration+c.OIDC.Grace.Duration {
		errs = append(errs, errors.New("oidc.rotate_every must be 0 or at least prepublish + grace"))
	}
	if c.SPIFFE.JWTRotateEvery.Duration != 0 && c.SPIFFE.JWTRotateEvery.Duration < c.OIDC.Prepublish.Duration+c.OIDC.Grace.Duration {
		errs = append(errs, errors.New("spiffe.jwt_rotate_every must be 0 or at least oidc.prepublish + oidc.grace"))
	}
	if c.MachineTokens.DefaultTTL.Duration <= 0 || c.MachineTokens.DefaultTTL.Duration > c.MachineTokens.MaxTTL.Duration {
		errs = append(errs, errors.New("machine_tokens.default_ttl: want more than 0 and at most machine_tokens.max_ttl"))
	}
	if c.Gateway.Upstream != "" {
		u, err := url.Parse(c.Gateway.Upstream)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("gateway.upstream %q: want an http(s) URL", c.Gateway.Upstream))
		}
		if c.Gateway.Timeout.Duration <= 0 {
			errs = append(errs, errors.New("gateway.timeout must be positive"))
		}
	}
	if h, err := proxy.CompileHeaders(c.Gateway.ForwardHeaders); err != nil {
		errs = append(errs, fmt.Errorf("gateway.forward_headers: %w", err))
	} else {
		c.gatewayHeaders = h
	}
	errs = append(errs, c.SPIFFE.validate()...)
	errs = append(errs, c.RemoteAdmin.validate()...)
	if _, err := c.Log.SlogLevel(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (s *State) validateEtcd() []error {
	var errs []error
	// The seal key is the one thing every replica must have locally.
	if s.SealKeyEnv == "" && s.SealKeyFile == "" && (s.Dir == "" || !filepath.IsAbs(s.Dir)) {
		errs = append(errs, fmt.Errorf("state.dir %q: want an absolute path (it holds seal.key), or set seal_key_file or seal_key_env", s.Dir))
	}
	if s.SealKeyFile != "" && !filepath.IsAbs(s.SealKeyFile) {
		errs = append(errs, fmt.Errorf("state.seal_key_file %q: want an absolute path", s.SealKeyFile))
	}
	if len(s.Endpoints) == 0 {
		errs = append(errs, errors.New("state.endpoints: want at least one etcd client URL"))
	}
	for _, e := range s.Endpoints {
		u, err := url.Parse(e)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
			errs = append(errs, fmt.Errorf("state.endpoints %q: want http(s)://host:port", e))
			continue
		}
		// Machine records and revocations travel on this connection (keys
		// are sealed): not in clear text over a real network unless the
		// operator says so.
		if u.Scheme == "http" && !httpapi.LoopbackHost(u.Hostname()) && !s.AllowPlaintext {
			errs = append(errs, fmt.Errorf("state.endpoints %q is not loopback: use https (tls_ca, tls_cert, tls_key) or set state.allow_plaintext", e))
		}
	}
	if (s.TLSCert == "") != (s.TLSKey == "") {
		errs = append(errs, errors.New("state: set both tls_cert and tls_key, or neither"))
	}
	if s.Prefix == "" {
		errs = append(errs, errors.New("state.prefix: want a key prefix such as \"/wicket/\""))
	}
	if s.DialTimeout.Duration <= 0 || s.RequestTimeout.Duration <= 0 {
		errs = append(errs, errors.New("state.dial_timeout and state.request_timeout must be positive"))
	}
	if s.CacheGrace.Duration < 0 {
		errs = append(errs, errors.New("state.cache_grace must not be negative"))
	}
	return errs
}

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// ValidName reports whether s is a valid org, app or machine name: lowercase
// DNS-label syntax, which is safe in URLs, OIDC subjects and log lines.
func ValidName(s string) bool { return nameRE.MatchString(s) }
