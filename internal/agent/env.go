package agent

// WorkloadEnv returns the environment variables a workload started next to
// this agent needs to find it (KEY=value pairs): the API socket, and the
// variables of the configured cloud integrations. It never includes the
// machine token.
func (a *Agent) WorkloadEnv() []string {
	cfg := a.rt.Load().cfg
	return []string{"WICKET_SOCKET=" + cfg.API.Path}
}
