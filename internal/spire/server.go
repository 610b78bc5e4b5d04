package spire

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ServerOptions configure a SPIRE server. Zero values take SPIRE's
// defaults.
type ServerOptions struct {
	// Bins are the binaries (Binaries("") when zero).
	Bins Bins
	// TrustDomain is the server's trust domain (default "spire.test").
	TrustDomain string
	// KeyManager is "memory" (the default) or "disk" (keys in the
	// directory, kept across a restart of the server).
	KeyManager string
	// CATTL, X509SVIDTTL and JWTSVIDTTL are the server's ca_ttl,
	// default_x509_svid_ttl and default_jwt_svid_ttl.
	CATTL, X509SVIDTTL, JWTSVIDTTL time.Duration
	// ServerHCL is added inside the config's server block as it is: a
	// federation {...} block, for example.
	ServerHCL string
	// LogLevel is SPIRE's log level (default "INFO").
	LogLevel string
	// Env is added to the server's environment, which is otherwise PATH
	// alone: SSL_CERT_FILE, say, for the roots its https_web federation
	// client trusts.
	Env []string
}

// Server is a running spire-server.
type Server struct {
	bins        Bins
	dir         string
	socket      string
	port        int
	trustDomain string
	proc        *process

	mu     sync.Mutex
	tokens []string // join tokens generated, redacted from logs and errors
}

// StartServer writes a server config under dir, starts `spire-server run`
// and waits until `spire-server healthcheck` passes (StartTimeout). dir
// must exist and be private to the caller; it holds the config, the
// datastore, the key manager's keys, the API socket and server.log.
func StartServer(ctx context.Context, dir string, o ServerOptions) (*Server, error) {
	if o.Bins == (Bins{}) {
		b, err := Binaries("")
		if err != nil {
			return nil, err
		}
		o.Bins = b
	}
	if o.TrustDomain == "" {
		o.TrustDomain = "spire.test"
	}
	if o.LogLevel == "" {
		o.LogLevel = "INFO"
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	s := &Server{bins: o.Bins, dir: dir, socket: filepath.Join(dir, "server.sock"), port: port, trustDomain: o.TrustDomain}
	conf, err := serverConfig(dir, s.socket, port, o)
	if err != nil {
		return nil, err
	}
	confPath := filepath.Join(dir, "server.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	s.proc, err = startProcessEnv("spire-server", filepath.Join(dir, "server.log"), o.Env, s.redact, o.Bins.Server, "run", "-config", confPath)
	if err != nil {
		return nil, err
	}
	err = poll(ctx, StartTimeout, s.proc, func(ctx context.Context) error {
		out, err := run(ctx, s.bins.Server, "healthcheck", "-socketPath", s.socket)
		if err != nil {
			return fmt.Errorf("healthcheck: %v: %s", err, bytes.TrimSpace(out))
		}
		return nil
	})
	if err != nil {
		err = fmt.Errorf("spire-server not healthy: %v\n%s", err, s.proc.tail())
		s.Close()
		return nil, err
	}
	return s, nil
}

func serverConfig(dir, socket string, port int, o ServerOptions) (string, error) {
	var km string
	switch o.KeyManager {
	case "", "memory":
		km = `KeyManager "memory" {
    plugin_data {}
  }`
	case "disk":
		km = fmt.Sprintf(`KeyManager "disk" {
    plugin_data {
      keys_path = %s
    }
  }`, hclString(filepath.Join(dir, "keys.json")))
	default:
		return "", fmt.Errorf("spire: key manager %q: want memory or disk", o.KeyManager)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "server {\n  bind_address = \"127.0.0.1\"\n  bind_port = %q\n  socket_path = %s\n  trust_domain = %s\n  data_dir = %s\n  log_level = %s\n",
		strconv.Itoa(port), hclString(socket), hclString(o.TrustDomain), hclString(filepath.Join(dir, "data")), hclString(o.LogLevel))
	for _, d := range []struct {
		key string
		v   time.Duration
	}{{"ca_ttl", o.CATTL}, {"default_x509_svid_ttl", o.X509SVIDTTL}, {"default_jwt_svid_ttl", o.JWTSVIDTTL}} {
		if d.v > 0 {
			fmt.Fprintf(&b, "  %s = %s\n", d.key, hclDuration(d.v))
		}
	}
	if o.ServerHCL != "" {
		b.WriteString(o.ServerHCL + "\n")
	}
	fmt.Fprintf(&b, `}

plugins {
  DataStore "sql" {
    plugin_data {
      database_type = "sqlite3"
      connection_string = %s
    }
  }
  NodeAttestor "join_token" {
    plugin_data {}
  }
  %s
}
`, hclString(filepath.Join(dir, "datastore.sqlite3")), km)
	return b.String(), nil
}

// TrustDomain is the server's trust domain name.
func (s *Server) TrustDomain() string { return s.trustDomain }

// SocketPath is the server API's Unix socket (for the CLI's -socketPath).
func (s *Server) SocketPath() string { return s.socket }

// Addr is the loopback address agents attest to ("127.0.0.1:PORT").
func (s *Server) Addr() string { return "127.0.0.1:" + strconv.Itoa(s.port) }

// PID is the server process's.
func (s *Server) PID() int { return s.proc.cmd.Process.Pid }

// Log is the path of the server's log (its stdout and stderr).
func (s *Server) Log() string { return s.proc.log }

// LogTail is the end of the server's log, join tokens redacted.
func (s *Server) LogTail() string { return s.proc.tail() }

// CLI runs `spire-server <args...> -socketPath <the server's socket>`
// (bounded) and returns its output: bundle show, bundle set, federation
// create and the like. Not for `token generate`, whose output is a
// credential: StartAgent does that itself.
func (s *Server) CLI(ctx context.Context, args ...string) ([]byte, error) {
	if len(args) > 0 && args[0] == "token" {
		return nil, errors.New("spire: token commands are StartAgent's")
	}
	out, err := run(ctx, s.bins.Server, append(args, "-socketPath", s.socket)...)
	// An attested agent's ID, in entries and agent listings, holds its
	// join token.
	out = []byte(s.redact(string(out)))
	if err != nil {
		return out, errors.New(s.redact(fmt.Sprintf("spire-server %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))))
	}
	return out, nil
}

// Bundle is the server's own trust bundle, PEM (what an agent
// bootstraps with).
func (s *Server) Bundle(ctx context.Context) ([]byte, error) {
	return s.CLI(ctx, "bundle", "show", "-format", "pem")
}

// Entry is a registration entry.
type Entry struct {
	SPIFFEID string
	// ParentID is the agent's (Agent.ID) for a workload entry.
	ParentID string
	// Selectors such as "unix:uid:0".
	Selectors []string
	// FederatesWith are trust domains ("spiffe://other.test") whose
	// bundles the entry's SVIDs come with; the server must have them.
	FederatesWith []string
	// X509SVIDTTL and JWTSVIDTTL override the server's defaults.
	X509SVIDTTL, JWTSVIDTTL time.Duration
}

// CreateEntry registers e and returns its entry ID.
func (s *Server) CreateEntry(ctx context.Context, e Entry) (string, error) {
	if e.SPIFFEID == "" || e.ParentID == "" || len(e.Selectors) == 0 {
		return "", errors.New("spire: an entry needs a SPIFFE ID, a parent ID and a selector")
	}
	args := []string{"entry", "create", "-output", "json", "-spiffeID", e.SPIFFEID, "-parentID", e.ParentID}
	for _, sel := range e.Selectors {
		args = append(args, "-selector", sel)
	}
	for _, td := range e.FederatesWith {
		args = append(args, "-federatesWith", td)
	}
	if e.X509SVIDTTL > 0 {
		args = append(args, "-x509SVIDTTL", strconv.Itoa(int(e.X509SVIDTTL/time.Second)))
	}
	if e.JWTSVIDTTL > 0 {
		args = append(args, "-jwtSVIDTTL", strconv.Itoa(int(e.JWTSVIDTTL/time.Second)))
	}
	out, err := s.CLI(ctx, args...)
	if err != nil {
		return "", err
	}
	var reply struct {
		Results []struct {
			Status struct {
				Code    int    `json:"code"`
				Message string `json:"message"`
			} `json:"status"`
			Entry struct {
				ID string `json:"id"`
			} `json:"entry"`
		} `json:"results"`
	}
	if err := json.Unmarshal(out, &reply); err != nil || len(reply.Results) != 1 {
		return "", fmt.Errorf("spire-server entry create: unexpected output: %s", bytes.TrimSpace(out))
	}
	r := reply.Results[0]
	if r.Status.Code != 0 || r.Entry.ID == "" {
		return "", fmt.Errorf("spire-server entry create %s: code %d: %s", e.SPIFFEID, r.Status.Code, r.Status.Message)
	}
	return r.Entry.ID, nil
}

// Close stops the server (its process group; bounded).
func (s *Server) Close() error { return s.proc.stop() }

// redact replaces every join token this server generated in text: the
// server logs the IDs of the agents it attests, which contain the token.
func (s *Server) redact(text string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, t := range s.tokens {
		text = strings.ReplaceAll(text, t, "[join-token]")
	}
	return text
}
