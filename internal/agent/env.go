package agent

import (
	"context"
	"fmt"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/config"
)

// defaultAWSSessionName is AWS_ROLE_SESSION_NAME before the machine's
// metadata (its id) is known.
const defaultAWSSessionName = "wicket"

// WorkloadEnv returns the environment variables a workload started next to
// this agent needs to find it (KEY=value pairs): the API socket, and the
// variables of the configured cloud integrations, which name the token
// files the agent keeps. It never includes the machine token or a token.
func (a *Agent) WorkloadEnv() []string {
	cfg := a.rt.Load().cfg
	env := []string{api.SocketEnv + "=" + cfg.API.Path}
	if cfg.SPIFFE.Enabled {
		// The standard variable every SPIFFE library reads.
		env = append(env, api.SPIFFEEndpointSocketEnv+"=unix://"+cfg.SPIFFE.Path)
	}
	if aw := cfg.AWS; aw.RoleARN != "" {
		env = append(env,
			"AWS_ROLE_ARN="+aw.RoleARN,
			"AWS_WEB_IDENTITY_TOKEN_FILE="+cfg.AWSTokenFile(),
			"AWS_ROLE_SESSION_NAME="+a.awsSessionName(aw.SessionName),
		)
	}
	if az := cfg.Azure; az.ClientID != "" {
		env = append(env,
			"AZURE_CLIENT_ID="+az.ClientID,
			"AZURE_TENANT_ID="+az.TenantID,
			"AZURE_FEDERATED_TOKEN_FILE="+cfg.AzureTokenFile(),
			"AZURE_AUTHORITY_HOST="+az.AuthorityHost,
		)
	}
	return env
}

// awsSessionName is aws.session_name, else the machine id (so the role
// session names the machine in CloudTrail), else "wicket".
func (a *Agent) awsSessionName(configured string) string {
	if configured != "" {
		return configured
	}
	if snap := a.meta.cur.Load(); snap != nil && snap.fields["machine_id"] != "" {
		return config.AWSSessionName(snap.fields["machine_id"])
	}
	return defaultAWSSessionName
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
