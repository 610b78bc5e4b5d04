package config

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math"
	"net/url"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/oidc"
	"github.com/wicket-sh/wicket/internal/peer"
	"github.com/wicket-sh/wicket/internal/proxy"
	"github.com/wicket-sh/wicket/internal/unixsock"
)

// Socket is the static description of one Unix socket.
type Socket struct {
	Path     string `toml:"socket_path"`
	Mode     Mode   `toml:"socket_mode"`
	Group    string `toml:"socket_group"` // name or numeric gid; "" keeps the service's group
	MaxConns int    `toml:"max_conns"`
	// MaxConnsPerUID caps one peer uid's connections (root's and the
	// service's own included); 0 means max_conns/4.
	MaxConnsPerUID int `toml:"max_conns_per_uid"`
}

// MaxBodyBytesLimit is the largest limits.max_body_bytes accepted: each
// body is buffered whole before its handler runs, so the cap times
// max_conns is memory callers can make the agent hold.
const MaxBodyBytesLimit = 1 << 20

// validateConns checks max_conns and max_conns_per_uid of the socket name.
func (s Socket) validateConns(name string) []error {
	var errs []error
	if s.MaxConns < 1 || s.MaxConns > 100000 {
		errs = append(errs, fmt.Errorf("%s.max_conns %d: want 1..100000", name, s.MaxConns))
	}
	if s.MaxConnsPerUID < 0 || s.MaxConnsPerUID > max(s.MaxConns, 1) {
		errs = append(errs, fmt.Errorf("%s.max_conns_per_uid %d: want 1..max_conns (%d), or 0 for max_conns/4", name, s.MaxConnsPerUID, s.MaxConns))
	}
	return errs
}

// GID resolves Group to a numeric gid, or -1 when it is empty.
func (s Socket) GID() (int, error) { return lookupGID(s.Group) }

// lookupGID resolves a group name or numeric gid; "" is -1 (keep the
// service's group).
func lookupGID(group string) (int, error) {
	if group == "" {
		return -1, nil
	}
	if n, err := strconv.Atoi(group); err == nil {
		if n < 0 {
			return 0, fmt.Errorf("negative gid %d", n)
		}
		return n, nil
	}
	g, err := user.LookupGroup(group)
	if err != nil {
		return 0, fmt.Errorf("unknown group %q", group)
	}
	return strconv.Atoi(g.Gid)
}

// UnixSock returns the unixsock.Config for this socket.
func (s Socket) UnixSock(name string, dirMode Mode) (unixsock.Config, error) {
	gid, err := s.GID()
	if err != nil {
		return unixsock.Config{}, fmt.Errorf("%s socket: %w", name, err)
	}
	return unixsock.Config{
		Name:     name,
		Path:     s.Path,
		Mode:     s.Mode.FileMode(),
		DirMode:  dirMode.FileMode(),
		SetGroup: gid >= 0,
		GID:      gid,
		MaxConns: s.MaxConns,
		// unixsock turns 0 into MaxConns/4.
		MaxConnsPerUID: s.MaxConnsPerUID,
	}, nil
}

// Admin configures the admin socket: who may use it (dynamic) and where it is (static).
type Admin struct {
	Socket `reload:"restart"`
	// AllowUIDs and AllowGIDs are allowed besides root and the service's own uid.
	AllowUIDs []uint32 `toml:"allow_uids"`
	AllowGIDs []uint32 `toml:"allow_gids"`
	// TokenFile or TokenEnv, when set, name an admin token every admin
	// request must also present (Authorization: Bearer).
	TokenFile string `toml:"token_file"`
	TokenEnv  string `toml:"token_env"`
}

// HTTP holds the server-level HTTP limits shared by a service's sockets.
type HTTP struct {
	ReadHeaderTimeout Duration `toml:"read_header_timeout"`
	IdleTimeout       Duration `toml:"idle_timeout"`
	WriteTimeout      Duration `toml:"write_timeout"`
	MaxHeaderBytes    int      `toml:"max_header_bytes"`
}

// Limits returns the unixsock limits these settings describe.
func (h HTTP) Limits() unixsock.HTTPLimits {
	return unixsock.HTTPLimits{
		ReadHeaderTimeout: h.ReadHeaderTimeout.Duration,
		IdleTimeout:       h.IdleTimeout.Duration,
		WriteTimeout:      h.WriteTimeout.Duration,
		MaxHeaderBytes:    h.MaxHeaderBytes,
	}
}

// Limits holds request limits that a reload can change.
type Limits struct {
	MaxBodyBytes int64    `toml:"max_body_bytes"`
	BodyTimeout  Duration `toml:"body_timeout"`
}

// Log configures logging; the level can change on reload.
type Log struct {
	Level string `toml:"level"`
}

// SlogLevel returns the slog level for Level.
func (l Log) SlogLevel() (slog.Level, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(l.Level)); err != nil {
		return 0, fmt.Errorf("log.level %q: want debug, info, warn or error", l.Level)
	}
	return lv, nil
}

// AgentIssuer is how the agent reaches the issuer. The URL and the machine
// token's source are read once at start.
type AgentIssuer struct {
	// URL is the issuer's base URL (http or https); "" runs the agent
	// without an issuer: metadata and tokens then answer 503.
	URL string `toml:"url" reload:"restart"`
	// TokenFile holds the machine token; TokenUnlink removes it once read.
	TokenFile   string `toml:"token_file" reload:"restart"`
	TokenUnlink bool   `toml:"token_unlink" reload:"restart"`
	// RequestTimeout bounds one metadata or token call to the issuer.
	RequestTimeout Duration `toml:"request_timeout"`
}

// AgentTokens configures the OIDC token cache (dynamic).
type AgentTokens struct {
	// RefreshAt is the fraction of a token's lifetime after which the
	// cached token is renewed in the background.
	RefreshAt float64 `toml:"refresh_at"`
	// MaxAudiences caps the cache; the oldest audience is evicted first.
	MaxAudiences int `toml:"max_audiences"`
	// TTL is how long the copy of the machine token sent with each OIDC
	// token request is valid. The issuer never issues a JWT that outlives
	// the copy, so this bounds the JWTs the agent gets (the issuer's
	// [oidc] token_ttl applies when shorter) and what a copy captured
	// upstream can buy.
	TTL Duration `toml:"ttl"`
}

// AgentLimits are the agent's request limits: the shared ones plus the
// per-uid token bucket on token and proxied requests (dynamic).
type AgentLimits struct {
	Limits
	TokenRate  float64 `toml:"token_rate"`  // tokens per second per uid
	TokenBurst int     `toml:"token_burst"` // bucket size
}

// AgentProxy lists the routes forwarded upstream (dynamic).
type AgentProxy struct {
	Routes []AgentRoute `toml:"route"`
}

// AgentRoute is one [[proxy.route]].
type AgentRoute struct {
	// Match is "METHOD /path" with optional {self} and {app} segments and
	// an optional trailing "/*"; see package proxy.
	Match string `toml:"match"`
	// Upstream is the base URL; "" means issuer.url (its gateway).
	Upstream string   `toml:"upstream"`
	Timeout  Duration `toml:"timeout"`
	// Features of the attenuated machine token sent; default ["proxy"].
	Features []string `toml:"features"`
	// ForwardHeaders are the caller's request headers forwarded; unset
	// means proxy.DefaultForwardHeaders, [] means none. Naming a header
	// that is never forwarded (proxy.NeverForwarded) is an error.
	ForwardHeaders []string `toml:"forward_headers"`
}

// AgentReservedPaths are the guest API's own path prefixes: no proxy route
// may lie under them.
var AgentReservedPaths = []string{"/v1/health", "/v1/metadata", "/v1/tokens", "/v1/svids"}

// Agent is the whole agent configuration.
type Agent struct {
	API    Socket      `toml:"api" reload:"restart"`
	Admin  Admin       `toml:"admin"`
	HTTP   HTTP        `toml:"http" reload:"restart"`
	Issuer AgentIssuer `toml:"issuer"`
	Tokens AgentTokens `toml:"tokens"`
	Limits AgentLimits `toml:"limits"`
	Log    Log         `toml:"log"`
	Policy []peer.Rule `toml:"policy"`
	Proxy  AgentProxy  `toml:"proxy"`
	// SPIFFE is the Workload API socket (agentspiffe.go).
	SPIFFE AgentSPIFFE `toml:"spiffe" reload:"restart"`

	// Cloud integrations (dynamic): token files, and the [aws] and
	// [azure] settings that imply one each.
	TokenFiles []AgentTokenFile `toml:"token_file"`
	AWS        AgentAWS         `toml:"aws"`
	Azure      AgentAzure       `toml:"azure"`

	policy *peer.Policy
	routes *proxy.Table
	// TokenFileGroup, when set (not from the file: `wicket agent run` sets
	// it to the workload's group), is the group of every token file that
	// does not name one, implied ones included, so the workload can read
	// the files its SDKs are pointed at.
	TokenFileGroup string `toml:"-"`

	tokenFiles []TokenFileSpec
	awsFile    string
	azureFile  string
}

// DefaultAgent returns the configuration used when no file is given.
func DefaultAgent() *Agent {
	return &Agent{
		API:    Socket{Path: api.DefaultAPISocket, Mode: 0o660, MaxConns: 1024},
		SPIFFE: defaultAgentSPIFFE(),
		Admin:  Admin{Socket: Socket{Path: api.DefaultAdminSocket, Mode: 0o600, MaxConns: 32}},
		HTTP: HTTP{
			ReadHeaderTimeout: Duration{5 * time.Second},
			IdleTimeout:       Duration{60 * time.Second},
			WriteTimeout:      Duration{3 * time.Minute},
			MaxHeaderBytes:    16 << 10,
		},
		Issuer: AgentIssuer{RequestTimeout: Duration{10 * time.Second}},
		Tokens: AgentTokens{RefreshAt: 0.8, MaxAudiences: 1000, TTL: Duration{10 * time.Minute}},
		Limits: AgentLimits{
			Limits:     Limits{MaxBodyBytes: 64 << 10, BodyTimeout: Duration{10 * time.Second}},
			TokenRate:  10,
			TokenBurst: 20,
		},
		Log:   Log{Level: "info"},
		Azure: AgentAzure{AuthorityHost: DefaultAzureAuthorityHost},
	}
}

// Override adjusts a parsed config before validation. Command-line flags
// become overrides, applied identically at startup and on every reload
// (S-flags), so a reload never silently drops a flag.
type Override func(*Agent)

// LoadAgent reads, parses and fully validates the agent config at path
// (defaults only when path is empty), applying overrides before validation.
func LoadAgent(path string, overrides ...Override) (*Agent, error) {
	return load(DefaultAgent(), path, overrides, (*Agent).Validate)
}

// decodeStrict decodes TOML into v and refuses keys v has no field for: a
// misspelt key silently ignored is a security setting silently not applied.
func decodeStrict(data []byte, v any) error {
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(v)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return fmt.Errorf("line %d: %s", pe.Position.Line, pe.Message)
		}
		return err
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
		}
		return fmt.Errorf("unknown keys: %s", strings.Join(keys, ", "))
	}
	return nil
}

// Validate checks everything that can be checked without side effects and
// compiles the policy.
func (c *Agent) Validate() error {
	errs := c.validateSPIFFE()
	socks := []struct {
		name string
		s    Socket
	}{{"api", c.API}, {"admin", c.Admin.Socket}}
	if c.SPIFFE.Enabled {
		socks = append(socks, struct {
			name string
			s    Socket
		}{"spiffe", c.SPIFFE.Socket})
	}
	for _, s := range socks {
		if err := unixsock.ValidatePath(s.s.Path); err != nil {
			errs = append(errs, fmt.Errorf("%s.socket_path: %w", s.name, err))
		}
		if s.s.Mode == 0 || s.s.Mode&0o600 != 0o600 {
			errs = append(errs, fmt.Errorf("%s.socket_mode %04o: the owner needs read and write", s.name, uint32(s.s.Mode)))
		}
		if s.s.Mode&0o007 != 0 {
			errs = append(errs, fmt.Errorf("%s.socket_mode %04o: access for others is not allowed; use socket_group", s.name, uint32(s.s.Mode)))
		}
		errs = append(errs, s.s.validateConns(s.name)...)
		if _, err := s.s.GID(); err != nil {
			errs = append(errs, fmt.Errorf("%s.socket_group: %w", s.name, err))
		}
	}
	if c.API.Path == c.Admin.Path {
		errs = append(errs, errors.New("api.socket_path and admin.socket_path are the same"))
	}
	if c.Admin.TokenFile != "" && c.Admin.TokenEnv != "" {
		errs = append(errs, errors.New("admin: set token_file or token_env, not both"))
	}
	if c.HTTP.ReadHeaderTimeout.Duration <= 0 || c.HTTP.IdleTimeout.Duration <= 0 || c.HTTP.WriteTimeout.Duration <= 0 {
		errs = append(errs, errors.New("http: timeouts must be positive"))
	}
	if c.HTTP.MaxHeaderBytes < 1024 || c.HTTP.MaxHeaderBytes > 1<<20 {
		errs = append(errs, fmt.Errorf("http.max_header_bytes %d: want 1024..1048576", c.HTTP.MaxHeaderBytes))
	}
	if c.Limits.MaxBodyBytes < 1024 || c.Limits.MaxBodyBytes > MaxBodyBytesLimit {
		errs = append(errs, fmt.Errorf("limits.max_body_bytes %d: want 1024..%d (1 MiB): every body is held in memory whole before its handler runs", c.Limits.MaxBodyBytes, MaxBodyBytesLimit))
	}
	if c.Limits.BodyTimeout.Duration <= 0 {
		errs = append(errs, errors.New("limits.body_timeout must be positive"))
	}
	if _, err := c.Log.SlogLevel(); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, c.validateGuest()...)
	errs = append(errs, c.validateCloud()...)
	if len(c.Policy) > 0 {
		p, err := peer.Compile(c.Policy)
		if err != nil {
			errs = append(errs, fmt.Errorf("policy: %w", err))
		}
		c.policy = p
	}
	return errors.Join(errs...)
}

// validateGuest checks the issuer, token cache, rate limit and proxy
// settings, and compiles the routes.
func (c *Agent) validateGuest() []error {
	var errs []error
	if c.Issuer.URL != "" {
		if _, err := proxy.ParseUpstream(c.Issuer.URL); err != nil {
			errs = append(errs, fmt.Errorf("issuer.url: %w", err))
		}
	}
	if f := c.Issuer.TokenFile; f != "" && (!filepath.IsAbs(f) || filepath.Clean(f) != f) {
		errs = append(errs, fmt.Errorf("issuer.token_file %q: want a clean absolute path", f))
	}
	if c.Issuer.TokenUnlink && c.Issuer.TokenFile == "" {
		errs = append(errs, errors.New("issuer.token_unlink is set but issuer.token_file is not"))
	}
	if d := c.Issuer.RequestTimeout.Duration; d < 100*time.Millisecond || d > 5*time.Minute {
		errs = append(errs, fmt.Errorf("issuer.request_timeout %v: want 100ms..5m", d))
	}
	if r := c.Tokens.RefreshAt; !(r >= 0.1 && r <= 0.95) {
		errs = append(errs, fmt.Errorf("tokens.refresh_at %v: want a fraction of the lifetime, 0.1..0.95", r))
	}
	if n := c.Tokens.MaxAudiences; n < 1 || n > 100000 {
		errs = append(errs, fmt.Errorf("tokens.max_audiences %d: want 1..100000", n))
	}
	if d := c.Tokens.TTL.Duration; d < time.Minute || d > time.Hour {
		errs = append(errs, fmt.Errorf("tokens.ttl %v: want 1m..1h", d))
	}
	if r := c.Limits.TokenRate; !(r > 0 && r <= 1e6) {
		errs = append(errs, fmt.Errorf("limits.token_rate %v: want more than 0, at most 1000000 per second", r))
	}
	if b := c.Limits.TokenBurst; b < 1 || b > 1e6 {
		errs = append(errs, fmt.Errorf("limits.token_burst %d: want 1..1000000", b))
	}
	routes := make([]proxy.RouteConfig, len(c.Proxy.Routes))
	for i, r := range c.Proxy.Routes {
		routes[i] = proxy.RouteConfig{Match: r.Match, Upstream: r.Upstream, Timeout: r.Timeout.Duration, Features: r.Features, Headers: r.ForwardHeaders}
		if r.Upstream == "" && c.Issuer.URL == "" {
			errs = append(errs, fmt.Errorf("proxy.route[%d]: no upstream and no issuer.url to default to", i))
		}
	}
	t, err := proxy.Compile(routes, AgentReservedPaths)
	if err != nil {
		errs = append(errs, fmt.Errorf("proxy.%w", err))
	}
	c.routes = t
	return errs
}

// CompiledRoutes returns the validated proxy routes (never nil after a
// successful Validate).
func (c *Agent) CompiledRoutes() *proxy.Table {
	if c.routes == nil {
		return &proxy.Table{}
	}
	return c.routes
}

// CompiledPolicy returns the validated policy, or the default policy for
// selfUID when the config has no rules.
func (c *Agent) CompiledPolicy(selfUID uint32) *peer.Policy {
	if c.policy == nil {
		return peer.Default(selfUID)
	}
	return c.policy
}

// Cloud integrations: token files, and the [aws] and [azure] sections that
// imply one each (all dynamic).

// Audiences and defaults of the token files.
const (
	// AWSAudience is the audience AWS STS expects by default.
	AWSAudience = "sts.amazonaws.com"
	// AzureAudience is the audience Microsoft Entra expects in federated
	// credentials.
	AzureAudience = "api://AzureADTokenExchange"

	DefaultAWSTokenFile       = "/run/wicket/tokens/aws"
	DefaultAzureTokenFile     = "/run/wicket/tokens/azure"
	DefaultAzureAuthorityHost = "https://login.microsoftonline.com/"

	DefaultTokenFileMode    Mode    = 0o440
	DefaultTokenFileRefresh Percent = 0.8

	// MaxTokenFiles bounds the files one agent keeps.
	MaxTokenFiles = 64
)

// AgentTokenFile is one [[token_file]]: a file the agent keeps holding a
// fresh OIDC token for one audience, for tools that read tokens from disk
// (AWS_WEB_IDENTITY_TOKEN_FILE, AZURE_FEDERATED_TOKEN_FILE, GCP
// file-sourced credentials).
type AgentTokenFile struct {
	Path     string `toml:"path"`     // absolute and clean
	Audience string `toml:"audience"` // the tokens' aud
	// Mode is the file's permission bits (default 0440). Pointers tell
	// "not set" from an explicit value that fails validation.
	Mode *Mode `toml:"mode"`
	// Group is a group name or gid; "" keeps the agent's group.
	Group string `toml:"group"`
	// Refresh is how much of a token's life passes before the file gets
	// a new one (default "80%").
	Refresh *Percent `toml:"refresh"`
}

// AgentAWS is [aws]: with a role, the agent keeps a token file for STS and
// workloads it starts get the AWS SDKs' web identity environment.
type AgentAWS struct {
	RoleARN string `toml:"role_arn"`
	// SessionName is AWS_ROLE_SESSION_NAME; "" means the machine id.
	SessionName string `toml:"session_name"`
	// TokenFile is AWS_WEB_IDENTITY_TOKEN_FILE; see Agent.AWSTokenFile.
	TokenFile string `toml:"token_file"`
}

// AgentAzure is [azure]: with a client ID, the agent keeps a token file for
// Microsoft Entra workload identity federation.
type AgentAzure struct {
	ClientID      string `toml:"client_id"`
	TenantID      string `toml:"tenant_id"`
	TokenFile     string `toml:"token_file"` // see Agent.AzureTokenFile
	AuthorityHost string `toml:"authority_host"`
}

// TokenFileSpec is one token file the agent keeps, with defaults applied
// and the group resolved. Two equal specs (ignoring ImpliedBy) describe the
// same refresher.
type TokenFileSpec struct {
	Path     string
	Audience string
	Mode     fs.FileMode
	GID      int     // -1 keeps the agent's group
	Refresh  float64 // fraction of a token's life
	// ImpliedBy is "aws" or "azure" for a file those sections imply, ""
	// for a [[token_file]].
	ImpliedBy string
}

// Percent is a share written as "80%" in TOML and held as a fraction (0.8).
type Percent float64

// UnmarshalText implements encoding.TextUnmarshaler.
func (p *Percent) UnmarshalText(b []byte) error {
	s, ok := strings.CutSuffix(string(b), "%")
	v, err := strconv.ParseFloat(s, 64)
	if !ok || err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		return fmt.Errorf("invalid percentage %q: want a share like \"80%%\"", b)
	}
	*p = Percent(v / 100)
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (p Percent) MarshalText() ([]byte, error) {
	return []byte(strconv.FormatFloat(float64(p)*100, 'f', -1, 64) + "%"), nil
}

// TokenFileSpecs returns every token file to keep: the [[token_file]]
// entries in order, then those [aws] and [azure] imply. Set by Validate.
func (c *Agent) TokenFileSpecs() []TokenFileSpec { return c.tokenFiles }

// AWSTokenFile is the file AWS_WEB_IDENTITY_TOKEN_FILE names, "" without
// aws.role_arn: aws.token_file; else the one [[token_file]] with audience
// sts.amazonaws.com; else the implied DefaultAWSTokenFile. Set by Validate.
func (c *Agent) AWSTokenFile() string { return c.awsFile }

// AzureTokenFile is the file AZURE_FEDERATED_TOKEN_FILE names, "" without
// azure.client_id, chosen as for AWSTokenFile with the audience
// api://AzureADTokenExchange. Set by Validate.
func (c *Agent) AzureTokenFile() string { return c.azureFile }

// validateCloud checks [[token_file]], [aws] and [azure], and settles the
// list of token files.
func (c *Agent) validateCloud() []error {
	var errs []error
	c.tokenFiles, c.awsFile, c.azureFile = nil, "", ""
	specs := make([]TokenFileSpec, 0, len(c.TokenFiles)+2)
	names := make([]string, 0, len(c.TokenFiles)+2) // for messages, parallel to specs
	for i, f := range c.TokenFiles {
		name := fmt.Sprintf("token_file[%d]", i)
		s, ferrs := f.spec(name)
		errs = append(errs, ferrs...)
		specs, names = append(specs, s), append(names, name)
	}

	if a := c.AWS; a.RoleARN == "" {
		if a.SessionName != "" || a.TokenFile != "" {
			errs = append(errs, errors.New("aws: session_name and token_file mean nothing without role_arn"))
		}
	} else {
		if err := checkRoleARN(a.RoleARN); err != nil {
			errs = append(errs, fmt.Errorf("aws.role_arn: %w", err))
		}
		if a.SessionName != "" && !awsSessionNameRE.MatchString(a.SessionName) {
			errs = append(errs, fmt.Errorf("aws.session_name %q: want 2..64 of letters, digits and +=,.@_-", a.SessionName))
		}
		path, implied, err := impliedTokenFile("aws", a.TokenFile, DefaultAWSTokenFile, AWSAudience, specs)
		if err != nil {
			errs = append(errs, err)
		}
		c.awsFile = path
		if implied != nil {
			specs, names = append(specs, *implied), append(names, "aws")
		}
	}

	z := c.Azure
	if err := checkAuthorityHost(z.AuthorityHost); err != nil {
		errs = append(errs, fmt.Errorf("azure.authority_host %q: %w", z.AuthorityHost, err))
	}
	if z.ClientID == "" {
		if z.TenantID != "" || z.TokenFile != "" {
			errs = append(errs, errors.New("azure: tenant_id and token_file mean nothing without client_id"))
		}
	} else {
		for _, f := range []struct{ key, v string }{{"client_id", z.ClientID}, {"tenant_id", z.TenantID}} {
			if err := checkPrintable(f.v, 256); err != nil {
				errs = append(errs, fmt.Errorf("azure.%s: %w", f.key, err))
			}
		}
		path, implied, err := impliedTokenFile("azure", z.TokenFile, DefaultAzureTokenFile, AzureAudience, specs)
		if err != nil {
			errs = append(errs, err)
		}
		c.azureFile = path
		if implied != nil {
			specs, names = append(specs, *implied), append(names, "azure")
		}
	}

	if len(specs) > MaxTokenFiles {
		errs = append(errs, fmt.Errorf("token_file: %d files, at most %d", len(specs), MaxTokenFiles))
	}
	if len(specs) > 0 && c.Issuer.URL == "" {
		errs = append(errs, fmt.Errorf("%s: token files need issuer.url to get tokens from", names[0]))
	}
	// One writer per file, and never over a file the agent reads or serves.
	taken := map[string]string{
		c.API.Path: "api.socket_path", c.Admin.Path: "admin.socket_path", c.SPIFFE.Path: "spiffe.socket_path",
		c.Issuer.TokenFile: "issuer.token_file", c.Admin.TokenFile: "admin.token_file",
	}
	delete(taken, "")
	for i, s := range specs {
		if other, dup := taken[s.Path]; dup && s.Path != "" {
			errs = append(errs, fmt.Errorf("%s: path %q is also %s", names[i], s.Path, other))
			continue
		}
		taken[s.Path] = names[i]
	}
	if c.TokenFileGroup != "" {
		gid, err := lookupGID(c.TokenFileGroup)
		if err != nil {
			errs = append(errs, fmt.Errorf("token file group: %w", err))
		}
		for i := range specs {
			if specs[i].GID == -1 {
				specs[i].GID = gid
			}
		}
	}
	c.tokenFiles = specs
	return errs
}

// spec checks one [[token_file]] and applies its defaults.
func (f AgentTokenFile) spec(name string) (TokenFileSpec, []error) {
	var errs []error
	s := TokenFileSpec{Path: f.Path, Audience: f.Audience, Mode: DefaultTokenFileMode.FileMode(), GID: -1, Refresh: float64(DefaultTokenFileRefresh)}
	if err := checkFilePath(f.Path); err != nil {
		errs = append(errs, fmt.Errorf("%s.path: %w", name, err))
	}
	if f.Audience == "" {
		errs = append(errs, fmt.Errorf("%s.audience is required", name))
	} else if oidc.ValidateAudience([]string{f.Audience}) != nil {
		errs = append(errs, fmt.Errorf("%s.audience: want 1..%d printable ASCII characters without spaces", name, oidc.MaxAudienceLen))
	}
	if f.Mode != nil {
		s.Mode = f.Mode.FileMode()
		if err := checkTokenFileMode(s.Mode); err != nil {
			errs = append(errs, fmt.Errorf("%s.mode %04o: %w", name, uint32(s.Mode), err))
		}
	}
	gid, err := lookupGID(f.Group)
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
	return s, errs
}

// impliedTokenFile settles the file a cloud section points its SDKs at:
// the section's token_file (written with aud unless a [[token_file]] has
// that path, whatever its audience, e.g. MinIO's client ID); or, without
// one, the single [[token_file]] for aud; or a new file at def. It returns
// the spec to add when the file is implied.
func impliedTokenFile(section, path, def, aud string, specs []TokenFileSpec) (string, *TokenFileSpec, error) {
	var sameAud []string
	for _, s := range specs {
		if path != "" && s.Path == path {
			return path, nil, nil
		}
		if s.Audience == aud {
			sameAud = append(sameAud, s.Path)
		}
	}
	switch {
	case path != "":
		if err := checkFilePath(path); err != nil {
			return "", nil, fmt.Errorf("%s.token_file: %w", section, err)
		}
		if len(sameAud) > 0 {
			// Two files for one audience, the SDKs pointed at the one
			// no [[token_file]] describes: almost surely a mistake.
			return "", nil, fmt.Errorf("%s.token_file %q: the [[token_file]] for audience %s is %q; use that path or leave %s.token_file empty", section, path, aud, sameAud[0], section)
		}
	case len(sameAud) == 1:
		return sameAud[0], nil, nil
	case len(sameAud) > 1:
		return "", nil, fmt.Errorf("%s: several [[token_file]] have audience %s (%s): set %s.token_file to the one to use", section, aud, strings.Join(sameAud, ", "), section)
	default:
		path = def
	}
	return path, &TokenFileSpec{Path: path, Audience: aud, Mode: DefaultTokenFileMode.FileMode(), GID: -1,
		Refresh: float64(DefaultTokenFileRefresh), ImpliedBy: section}, nil
}

func checkFilePath(p string) error {
	if p == "" || !filepath.IsAbs(p) || filepath.Clean(p) != p || p == "/" {
		return fmt.Errorf("%q: want a clean absolute path to a file", p)
	}
	return nil
}

// checkTokenFileMode: a token file is read by the workload through its
// group; nobody else reads it, and nobody but the agent (which replaces it
// whole) writes it.
func checkTokenFileMode(m fs.FileMode) error {
	switch {
	case m&0o007 != 0:
		return errors.New("no access for others is allowed; use group")
	case m&0o111 != 0:
		return errors.New("execute bits make no sense on a token")
	case m&0o020 != 0:
		return errors.New("the group may read, not write")
	case m&0o440 == 0:
		return errors.New("neither owner nor group could read it")
	}
	return nil
}

// awsSessionNameRE is STS's rule for role session names (the same as
// internal/cloud/aws, which this package does not import: it would pull the
// AWS SDK into everything that reads a config).
var awsSessionNameRE = regexp.MustCompile(`^[\w+=,.@-]{2,64}$`)

func checkRoleARN(arn string) error {
	if !strings.HasPrefix(arn, "arn:") {
		return fmt.Errorf("%q is not an ARN (arn:...)", arn)
	}
	return checkPrintable(arn, 2048)
}

// checkPrintable accepts 1..max bytes of printable ASCII without spaces.
func checkPrintable(s string, max int) error {
	if s == "" || len(s) > max {
		return fmt.Errorf("want 1..%d characters", max)
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return errors.New("want printable ASCII without spaces")
		}
	}
	return nil
}

func checkAuthorityHost(s string) error {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return errors.New("want an https URL without credentials, query or fragment")
	}
	return nil
}

// AWSSessionName turns s (a machine id or name) into a valid STS role
// session name: other characters become '-', and it is cut to 64
// characters; "wicket" when too short.
func AWSSessionName(s string) string {
	b := []byte(s)
	for i, ch := range b {
		if !(ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' || strings.IndexByte("+=,.@_-", ch) >= 0) {
			b[i] = '-'
		}
	}
	if len(b) > 64 {
		b = b[:64]
	}
	if len(b) < 2 {
		return "wicket"
	}
	return string(b)
}
