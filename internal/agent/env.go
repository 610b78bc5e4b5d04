package agent

import (
	"context"

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
	if a.meta == nil {
		return ""
	}
	v, _ := a.meta.Vars()
	return v.Self
}

// WaitStarted waits until the agent serves its sockets, each feature that
// asks (feature.Starter: the first metadata fetch, successful or not;
// each token file written once) has started: what a workload started next
// to it expects to find.
func (a *Agent) WaitStarted(ctx context.Context) error {
	select {
	case <-a.ready:
	case <-ctx.Done():
		return ctx.Err()
	}
	for _, b := range a.built {
		if s, ok := b.inst.(feature.Starter); ok {
			if err := s.WaitStarted(ctx); err != nil {
				return err
			}
		}
	}
	return nil
}
