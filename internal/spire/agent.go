package spire

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// AgentOptions configure a SPIRE agent.
type AgentOptions struct {
	// ID is the SPIFFE ID the agent's node gets besides its join-token
	// ID, the parent of its workload entries (default
	// spiffe://<trust domain>/node). Entries name it, not the join-token
	// ID, which holds the token.
	ID string
	// LogLevel is SPIRE's log level (default "INFO").
	LogLevel string
}

// Agent is a running spire-agent attested to a Server.
type Agent struct {
	bins   Bins
	id     string
	socket string
	proc   *process
}

// StartAgent generates a join token on srv (for o.ID, valid 10 minutes,
// used once), writes an agent config under dir with it, the server's
// bundle and the unix workload attestor, starts `spire-agent run` and
// waits until `spire-agent healthcheck` passes (StartTimeout). dir must
// exist and be private to the caller; it holds the config (0600: the
// token), the agent's data, the Workload API socket and agent.log.
func StartAgent(ctx context.Context, dir string, srv *Server, o AgentOptions) (*Agent, error) {
	if o.ID == "" {
		o.ID = "spiffe://" + srv.trustDomain + "/node"
	}
	if o.LogLevel == "" {
		o.LogLevel = "INFO"
	}
	bundle, err := srv.Bundle(ctx)
	if err != nil {
		return nil, err
	}
	bundlePath := filepath.Join(dir, "bundle.pem")
	if err := os.WriteFile(bundlePath, bundle, 0o600); err != nil {
		return nil, err
	}
	token, err := srv.joinToken(ctx, o.ID)
	if err != nil {
		return nil, err
	}
	a := &Agent{bins: srv.bins, id: o.ID, socket: filepath.Join(dir, "agent.sock")}
	conf := fmt.Sprintf(`agent {
  data_dir = %s
  log_level = %s
  server_address = "127.0.0.1"
  server_port = %q
  socket_path = %s
  trust_bundle_path = %s
  trust_domain = %s
  join_token = %s
}

plugins {
  NodeAttestor "join_token" {
    plugin_data {}
  }
  KeyManager "memory" {
    plugin_data {}
  }
  WorkloadAttestor "unix" {
    plugin_data {}
  }
}
`, hclString(filepath.Join(dir, "data")), hclString(o.LogLevel), strconv.Itoa(srv.port), hclString(a.socket),
		hclString(bundlePath), hclString(srv.trustDomain), hclString(token))
	confPath := filepath.Join(dir, "agent.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	a.proc, err = startProcess("spire-agent", filepath.Join(dir, "agent.log"), srv.redact, srv.bins.Agent, "run", "-config", confPath)
	if err != nil {
		return nil, err
	}
	err = poll(ctx, StartTimeout, a.proc, func(ctx context.Context) error {
		out, err := run(ctx, a.bins.Agent, "healthcheck", "-socketPath", a.socket)
		if err != nil {
			return fmt.Errorf("healthcheck: %v: %s", err, bytes.TrimSpace(out))
		}
		return nil
	})
	if err != nil {
		err = fmt.Errorf("spire-agent not healthy: %v\n%s\n%s", err, a.proc.tail(), srv.proc.tail())
		a.Close()
		return nil, err
	}
	return a, nil
}

// joinToken generates a join token whose node also gets id, and
// remembers it for redaction before anything could show it.
func (s *Server) joinToken(ctx context.Context, id string) (string, error) {
	out, err := run(ctx, s.bins.Server, "token", "generate", "-socketPath", s.socket, "-spiffeID", id, "-ttl", "600", "-output", "json")
	var reply struct {
		Value string `json:"value"`
	}
	if jerr := json.Unmarshal(out, &reply); jerr == nil && reply.Value != "" {
		s.mu.Lock()
		s.tokens = append(s.tokens, reply.Value)
		s.mu.Unlock()
	}
	if err != nil || reply.Value == "" {
		// The output is not shown: it may be the token itself.
		return "", fmt.Errorf("spire-server token generate for %s failed (%v; output of %d bytes withheld)", id, err, len(out))
	}
	return reply.Value, nil
}

// ID is the agent's node ID, the ParentID of its workload entries.
func (a *Agent) ID() string { return a.id }

// SocketPath is the agent's Workload API socket.
func (a *Agent) SocketPath() string { return a.socket }

// Addr is the Workload API address as go-spiffe takes it
// (workloadapi.WithAddr).
func (a *Agent) Addr() string { return "unix://" + a.socket }

// PID is the agent process's.
func (a *Agent) PID() int { return a.proc.cmd.Process.Pid }

// Log is the path of the agent's log (its stdout and stderr).
func (a *Agent) Log() string { return a.proc.log }

// WaitServes waits (StartTimeout) until the agent hands this process an
// X.509-SVID for spiffeID: its entry is registered and synced, and the
// caller's selectors match it. An agent syncs entries every few seconds.
func (a *Agent) WaitServes(ctx context.Context, spiffeID string) error {
	err := poll(ctx, StartTimeout, a.proc, func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		svids, err := workloadapi.FetchX509SVIDs(ctx, workloadapi.WithAddr(a.Addr()))
		if err != nil {
			return err
		}
		var got []string
		for _, s := range svids {
			if s.ID.String() == spiffeID {
				return nil
			}
			got = append(got, s.ID.String())
		}
		return fmt.Errorf("served %s, not %s", strings.Join(got, ", "), spiffeID)
	})
	if err != nil {
		return fmt.Errorf("spire-agent never served %s: %v\n%s", spiffeID, err, a.proc.tail())
	}
	return nil
}

// Close stops the agent (its process group; bounded).
func (a *Agent) Close() error { return a.proc.stop() }
