package agent

import (
	"context"
	"fmt"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/agent/feature"
)

// WorkloadEnv returns the environment variables a workload started next to
// this agent needs to find it (KEY=value pairs): the API socket, and the
// variables of the configured features (feature.Env: the cloud
// integrations, which name the token files the agent keeps), in
// registration order. It never includes the machine token or a token.
func (a *Agent) WorkloadEnv() []string {
	cfg := a.rt.Load().cfg
	env := []string{api.SocketEnv + "=" + cfg.API.Path}
	for _, m := range a.opts.Features {
		if e, ok := m.(feature.Env); ok {
			env = append(env, e.Env(cfg.Section(m.Key()), cfg, a)...)
		}
	}
	return env
}

// MachineID implements feature.Host: the id in the latest metadata.
func (a *Agent) MachineID() string {
	if snap := a.meta.cur.Load(); snap != nil {
		return snap.fields["machine_id"]
	}
	return ""
}

// WaitStarted waits until the agent serves its sockets, has made its first
// metadata fetch (successful or not) and has written each token file once:
// what a workload started next to it expects to find.
func (a *Agent) WaitStarted(ctx context.Context) error {
	select {
	case <-a.ready:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-a.meta.attempted:
	case <-ctx.Done():
		return fmt.Errorf("first metadata fetch: %w", ctx.Err())
	}
	return a.WaitTokenFiles(ctx)
}
