package config

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os/user"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/wicket-sh/wicket/internal/peer"
	"github.com/wicket-sh/wicket/internal/unixsock"
)

// Socket is the static description of one Unix socket.
type Socket struct {
	Path     string `toml:"socket_path"`
	Mode     Mode   `toml:"socket_mode"`
	Group    string `toml:"socket_group"` // name or numeric gid; "" keeps the service's group
	MaxConns int    `toml:"max_conns"`
}

// GID resolves Group to a numeric gid, or -1 when it is empty.
func (s Socket) GID() (int, error) {
	if s.Group == "" {
		return -1, nil
	}
	if n, err := strconv.Atoi(s.Group); err == nil {
		if n < 0 {
			return 0, fmt.Errorf("negative gid %d", n)
		}
		return n, nil
	}
	g, err := user.LookupGroup(s.Group)
	if err != nil {
		return 0, fmt.Errorf("unknown group %q", s.Group)
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

// Agent is the whole agent configuration.
type Agent struct {
	API    Socket      `toml:"api" reload:"restart"`
	Admin  Admin       `toml:"admin"`
	HTTP   HTTP        `toml:"http" reload:"restart"`
	Limits Limits      `toml:"limits"`
	Log    Log         `toml:"log"`
	Policy []peer.Rule `toml:"policy"`

	policy *peer.Policy
}

// DefaultAgent returns the configuration used when no file is given.
func DefaultAgent() *Agent {
	return &Agent{
		API:   Socket{Path: "/run/wicket/api.sock", Mode: 0o660, MaxConns: 1024},
		Admin: Admin{Socket: Socket{Path: "/run/wicket/admin.sock", Mode: 0o600, MaxConns: 32}},
		HTTP: HTTP{
			ReadHeaderTimeout: Duration{5 * time.Second},
			IdleTimeout:       Duration{60 * time.Second},
			WriteTimeout:      Duration{3 * time.Minute},
			MaxHeaderBytes:    16 << 10,
		},
		Limits: Limits{MaxBodyBytes: 64 << 10, BodyTimeout: Duration{10 * time.Second}},
		Log:    Log{Level: "info"},
	}
}

// Override adjusts a parsed config before validation. Command-line flags
// become overrides, applied identically at startup and on every reload
// (S-flags), so a reload never silently drops a flag.
type Override func(*Agent)

// LoadAgent reads, parses and fully validates the agent config at path
// (defaults only when path is empty), applying overrides before validation.
func LoadAgent(path string, overrides ...Override) (*Agent, error) {
	c := DefaultAgent()
	if path != "" {
		data, err := ReadFile(path)
		if err != nil {
			return nil, err
		}
		if err := decodeStrict(data, c); err != nil {
			return nil, fmt.Errorf("config %q: %w", path, err)
		}
	}
	for _, o := range overrides {
		o(c)
	}
	if err := c.Validate(); err != nil {
		if path != "" {
			return nil, fmt.Errorf("config %q: %w", path, err)
		}
		return nil, err
	}
	return c, nil
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
	var errs []error
	for _, s := range []struct {
		name string
		s    Socket
	}{{"api", c.API}, {"admin", c.Admin.Socket}} {
		if err := unixsock.ValidatePath(s.s.Path); err != nil {
			errs = append(errs, fmt.Errorf("%s.socket_path: %w", s.name, err))
		}
		if s.s.Mode == 0 || s.s.Mode&0o600 != 0o600 {
			errs = append(errs, fmt.Errorf("%s.socket_mode %04o: the owner needs read and write", s.name, uint32(s.s.Mode)))
		}
		if s.s.Mode&0o007 != 0 {
			errs = append(errs, fmt.Errorf("%s.socket_mode %04o: access for others is not allowed; use socket_group", s.name, uint32(s.s.Mode)))
		}
		if s.s.MaxConns < 1 || s.s.MaxConns > 100000 {
			errs = append(errs, fmt.Errorf("%s.max_conns %d: want 1..100000", s.name, s.s.MaxConns))
		}
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
	if c.Limits.MaxBodyBytes < 1024 || c.Limits.MaxBodyBytes > 16<<20 {
		errs = append(errs, fmt.Errorf("limits.max_body_bytes %d: want 1024..16777216", c.Limits.MaxBodyBytes))
	}
	if c.Limits.BodyTimeout.Duration <= 0 {
		errs = append(errs, errors.New("limits.body_timeout must be positive"))
	}
	if _, err := c.Log.SlogLevel(); err != nil {
		errs = append(errs, err)
	}
	if len(c.Policy) > 0 {
		p, err := peer.Compile(c.Policy)
		if err != nil {
			errs = append(errs, fmt.Errorf("policy: %w", err))
		}
		c.policy = p
	}
	return errors.Join(errs...)
}

// CompiledPolicy returns the validated policy, or the default policy for
// selfUID when the config has no rules.
func (c *Agent) CompiledPolicy(selfUID uint32) *peer.Policy {
	if c.policy == nil {
		return peer.Default(selfUID)
	}
	return c.policy
}
