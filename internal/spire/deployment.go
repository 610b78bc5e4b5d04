package spire

import (
	"context"
	"errors"
	"os"
	"path/filepath"
)

// Options configure a whole deployment: a server, an agent attested to
// it, and workload entries under the agent.
type Options struct {
	Server ServerOptions
	Agent  AgentOptions
	// Entries are registered once the agent is up; an empty ParentID is
	// the agent's ID. Start waits until the agent serves each one to
	// this process, so each must select it (for example "unix:uid:0"
	// when running as root).
	Entries []Entry
}

// Deployment is a running server and agent.
type Deployment struct {
	Server *Server
	Agent  *Agent
}

// Start runs a server in dir/server and an agent in dir/agent, registers
// o.Entries and waits until the agent serves them. On error everything
// started is stopped.
func Start(ctx context.Context, dir string, o Options) (*Deployment, error) {
	sdir, adir := filepath.Join(dir, "server"), filepath.Join(dir, "agent")
	for _, d := range []string{sdir, adir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	srv, err := StartServer(ctx, sdir, o.Server)
	if err != nil {
		return nil, err
	}
	d := &Deployment{Server: srv}
	if d.Agent, err = StartAgent(ctx, adir, srv, o.Agent); err != nil {
		d.Close()
		return nil, err
	}
	for _, e := range o.Entries {
		if e.ParentID == "" {
			e.ParentID = d.Agent.ID()
		}
		if _, err := srv.CreateEntry(ctx, e); err != nil {
			d.Close()
			return nil, err
		}
	}
	for _, e := range o.Entries {
		if err := d.Agent.WaitServes(ctx, e.SPIFFEID); err != nil {
			d.Close()
			return nil, err
		}
	}
	return d, nil
}

// Close stops the agent, then the server.
func (d *Deployment) Close() error {
	var errs []error
	if d.Agent != nil {
		errs = append(errs, d.Agent.Close())
	}
	if d.Server != nil {
		errs = append(errs, d.Server.Close())
	}
	return errors.Join(errs...)
}
