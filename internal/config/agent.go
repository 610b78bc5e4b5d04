package config

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/wicket-sh/wicket/api"
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

// Validate checks a socket's settings; name is its section in messages
// ("api", or a feature's key for a socket it serves).
func (s Socket) Validate(name string) []error {
	var errs []error
	if err := unixsock.ValidatePath(s.Path); err != nil {
		errs = append(errs, fmt.Errorf("%s.socket_path: %w", name, err))
	}
	if s.Mode == 0 || s.Mode&0o600 != 0o600 {
		errs = append(errs, fmt.Errorf("%s.socket_mode %04o: the owner needs read and write", name, uint32(s.Mode)))
	}
	if s.Mode&0o007 != 0 {
		errs = append(errs, fmt.Errorf("%s.socket_mode %04o: access for others is not allowed; use socket_group", name, uint32(s.Mode)))
	}
	errs = append(errs, s.validateConns(name)...)
	if _, err := s.GID(); err != nil {
		errs = append(errs, fmt.Errorf("%s.socket_group: %w", name, err))
	}
	return errs
}

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
func (s Socket) GID() (int, error) { return LookupGID(s.Group) }

// LookupGID resolves a group name or numeric gid; "" is -1 (keep the
// service's group).
func LookupGID(group string) (int, error) {
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

// AgentLimits are the agent's request limits: the shared ones plus the
// per-uid token bucket on token and proxied requests (dynamic).
type AgentLimits struct {
	Limits
	TokenRate  float64 `toml:"token_rate"`  // tokens per second per uid
	TokenBurst int     `toml:"token_burst"` // bucket size
}

// AgentReservedPaths are the guest API's own path prefixes: no proxy route
// ([proxy], agent/feature/proxyroutes) may lie under them.
var AgentReservedPaths = []string{"/v1/health", "/v1/metadata", "/v1/tokens", "/v1/svids"}

// Agent is the whole agent configuration.
type Agent struct {
	API    Socket      `toml:"api" reload:"restart"`
	Admin  Admin       `toml:"admin"`
	HTTP   HTTP        `toml:"http" reload:"restart"`
	Issuer AgentIssuer `toml:"issuer"`
	Limits AgentLimits `toml:"limits"`
	Log    Log         `toml:"log"`
	Policy []peer.Rule `toml:"policy"`

	policy *peer.Policy
	// TokenFileGroup, when set (not from the file: `wicket agent run` sets
	// it to the workload's group), is the group of every token file that
	// does not name one, implied ones included, so the workload can read
	// the files its SDKs are pointed at.
	TokenFileGroup string `toml:"-"`
	// WorkloadGroup, when set (not from the file: `wicket agent run` sets
	// it to the workload's gid), is the group a feature gives the socket
	// it serves when its section names none, so the workload can connect.
	WorkloadGroup string `toml:"-"`

	// Feature sections (see Section): registered, in order, and their
	// decoded values by key.
	sections []Section
	values   map[string]any

	tokenFiles []TokenFileSpec
	fileNames  []string          // parallel to tokenFiles: the section that claims each, for messages
	reserved   map[string]string // paths features serve (ReservePath): path to name
}

// DefaultAgent returns the configuration used when no file is given.
func DefaultAgent() *Agent {
	return &Agent{
		API:   Socket{Path: api.DefaultAPISocket, Mode: 0o660, MaxConns: 1024},
		Admin: Admin{Socket: Socket{Path: api.DefaultAdminSocket, Mode: 0o600, MaxConns: 32}},
		HTTP: HTTP{
			ReadHeaderTimeout: Duration{5 * time.Second},
			IdleTimeout:       Duration{60 * time.Second},
			WriteTimeout:      Duration{3 * time.Minute},
			MaxHeaderBytes:    16 << 10,
		},
		Issuer: AgentIssuer{RequestTimeout: Duration{10 * time.Second}},
		Limits: AgentLimits{
			Limits:     Limits{MaxBodyBytes: 64 << 10, BodyTimeout: Duration{10 * time.Second}},
			TokenRate:  10,
			TokenBurst: 20,
		},
		Log: Log{Level: "info"},
	}
}

// Override adjusts a parsed config before validation. Command-line flags
// become overrides, applied identically at startup and on every reload
// (S-flags), so a reload never silently drops a flag.
type Override func(*Agent)

// LoadAgent reads, parses and fully validates the agent config at path
// (defaults only when path is empty), applying overrides before validation.
// sections are the features' parts of the file (see Section), decoded and
// validated in order after the core; a key no section and no core field
// owns is an error.
func LoadAgent(path string, sections []Section, overrides ...Override) (*Agent, error) {
	return load(NewAgent(sections), path, overrides, (*Agent).Validate)
}

// decodeStrict decodes TOML into v and refuses keys v has no field for: a
// misspelt key silently ignored is a security setting silently not applied.
func decodeStrict(data []byte, v any) error {
	if a, ok := v.(*Agent); ok {
		return a.decode(data)
	}
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(v)
	if err != nil {
		return tomlError(err)
	}
	return undecoded(md)
}

// tomlError gives a parse error its line.
func tomlError(err error) error {
	var pe toml.ParseError
	if errors.As(err, &pe) {
		return fmt.Errorf("line %d: %s", pe.Position.Line, pe.Message)
	}
	return err
}

// undecoded refuses the keys md decoded into nothing.
func undecoded(md toml.MetaData) error {
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
	var errs []error
	errs = append(errs, c.API.Validate("api")...)
	errs = append(errs, c.Admin.Socket.Validate("admin")...)
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
	errs = append(errs, c.validateSections()...)
	if len(c.Policy) > 0 {
		p, err := peer.Compile(c.Policy)
		if err != nil {
			errs = append(errs, fmt.Errorf("policy: %w", err))
		}
		c.policy = p
	}
	return errors.Join(errs...)
}

// validateGuest checks the issuer and rate limit settings.
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
	if r := c.Limits.TokenRate; !(r > 0 && r <= 1e6) {
		errs = append(errs, fmt.Errorf("limits.token_rate %v: want more than 0, at most 1000000 per second", r))
	}
	if b := c.Limits.TokenBurst; b < 1 || b > 1e6 {
		errs = append(errs, fmt.Errorf("limits.token_burst %d: want 1..1000000", b))
	}
	return errs
}

// CompiledPolicy returns the validated policy, or the default policy for
// selfUID when the config has no rules.
func (c *Agent) CompiledPolicy(selfUID uint32) *peer.Policy {
	if c.policy == nil {
		return peer.Default(selfUID)
	}
	return c.policy
}
