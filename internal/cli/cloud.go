package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/client"
	"github.com/wicket-sh/wicket/internal/agent"
	awsfeature "github.com/wicket-sh/wicket/internal/agent/feature/aws"
	azurefeature "github.com/wicket-sh/wicket/internal/agent/feature/azure"
	"github.com/wicket-sh/wicket/internal/cloud/aws"
	"github.com/wicket-sh/wicket/internal/cloud/gcp"
	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/tokenfile"
)

// cloudCommands are the cloud integration commands: aws, gcp and env.
func CloudCommands() []*cobra.Command {
	return []*cobra.Command{newAWSCmd(), newGCPCmd(), newEnvCmd()}
}

func socketFlag(cmd *cobra.Command, socket *string) {
	cmd.Flags().StringVar(socket, "socket", "", "agent API socket (default $WICKET_SOCKET or "+api.DefaultAPISocket+")")
}

func newAWSCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "aws", Short: "AWS integration: credentials from the machine's OIDC identity"}
	var (
		socket, roleARN, aud, sessionName, stsEndpoint string
		duration                                       time.Duration
	)
	cp := &cobra.Command{
		Use:   "credential-process",
		Short: "Print AWS credentials for a role, for credential_process in ~/.aws/config",
		Long: `Gets an OIDC token from the agent, exchanges it with STS
(AssumeRoleWithWebIdentity) for temporary credentials of --role-arn, and
prints them as credential_process JSON. In ~/.aws/config:

  [profile app]
  credential_process = /usr/local/bin/wicket aws credential-process --role-arn arn:aws:iam::123456789012:role/app`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if sessionName == "" {
				host, _ := os.Hostname()
				sessionName = aws.SessionName("wicket-" + host)
			}
			if err := aws.CheckParams(roleARN, sessionName, duration); err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), time.Minute)
			defer cancel()
			tok, _, err := agentOIDCToken(ctx, socket, aud)
			if err != nil {
				_, line := describeAgentError(err)
				return line
			}
			creds, err := aws.CredentialProcess(ctx, tok, roleARN, sessionName, duration, stsEndpoint)
			if err != nil {
				return err // one line; STS's code when STS refused
			}
			b, err := json.Marshal(creds)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s\n", b)
			return err
		},
	}
	socketFlag(cp, &socket)
	fl := cp.Flags()
	fl.StringVar(&roleARN, "role-arn", "", "role to assume (required)")
	fl.StringVar(&aud, "aud", aws.Audience, "audience of the OIDC token")
	fl.DurationVar(&duration, "duration", time.Hour, "credentials lifetime, 15m..12h (0: STS's default)")
	fl.StringVar(&sessionName, "session-name", os.Getenv("AWS_ROLE_SESSION_NAME"), "role session name ($AWS_ROLE_SESSION_NAME; default wicket-<hostname>)")
	fl.StringVar(&stsEndpoint, "sts-endpoint", os.Getenv("AWS_ENDPOINT_URL_STS"), "STS endpoint URL ($AWS_ENDPOINT_URL_STS; default: AWS's for the region)")
	cp.MarkFlagRequired("role-arn")
	cmd.AddCommand(cp)
	return cmd
}

func newGCPCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "gcp", Short: "Google Cloud integration: workload identity federation"}

	var exeSocket, exeAud string
	exe := &cobra.Command{
		Use:   "executable",
		Short: "Print an executable-sourced credential response (run by Google's client libraries)",
		Long: `Gets an OIDC token from the agent for the workload identity provider
(--audience, or $GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE which Google's libraries
set) and prints it in the executable-sourced credential format. On failure
it prints the error form of that response, a one-line error on stderr, and
exits 1. Google's libraries run it only with
GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES=1; see 'wicket gcp config'.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := cmd.OutOrStdout()
			fail := func(code, msg string, err error) error {
				b, _ := json.Marshal(gcp.ExecutableError(code, msg))
				fmt.Fprintf(out, "%s\n", b)
				return err
			}
			if exeAud == "" {
				return fail("missing_audience", "no audience: set --audience or GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE",
					errors.New("no audience: set --audience or GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE"))
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), time.Minute)
			defer cancel()
			tok, exp, err := agentOIDCToken(ctx, exeSocket, exeAud)
			if err != nil {
				code, line := describeAgentError(err)
				return fail(code, line.Error(), line)
			}
			b, err := json.Marshal(gcp.ExecutableSuccess(tok, exp))
			if err != nil {
				return err
			}
			b = append(b, '\n')
			// The libraries read a cached response from this file before
			// running the executable again; 0600, like the token itself.
			if f := os.Getenv("GOOGLE_EXTERNAL_ACCOUNT_OUTPUT_FILE"); f != "" {
				if err := tokenfile.Write(f, b, 0o600, -1); err != nil {
					return fail("output_file", "cannot write the output file", err)
				}
			}
			_, err = out.Write(b)
			return err
		},
	}
	socketFlag(exe, &exeSocket)
	exe.Flags().StringVar(&exeAud, "audience", os.Getenv("GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE"), "token audience: the provider's //iam.googleapis.com/... name ($GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE)")

	var (
		cfgAud, sa, tokenFile, output, cfgSocket, cacheFile, project string
		useExe                                                       bool
		timeout                                                      time.Duration
	)
	cfgCmd := &cobra.Command{
		Use:   "config",
		Short: "Write the external_account credentials file for Google's client libraries and gcloud",
		Long: `Writes the external_account credentials JSON that points Google's
libraries at wicket: either at a token file the agent keeps fresh
(--token-file) or at 'wicket gcp executable' (--executable). Use it with
GOOGLE_APPLICATION_CREDENTIALS=<file> or 'gcloud auth login --cred-file=<file>'.

With --output FILE, stdout gets the export lines for a shell
(eval "$(wicket gcp config ... --output FILE)"): GOOGLE_APPLICATION_CREDENTIALS,
GOOGLE_CLOUD_PROJECT with --project (without it, Google's libraries look the
project up in Cloud Resource Manager when a client is created), and
GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES=1 with --executable.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var src gcp.CredentialSource
			switch {
			case useExe == (tokenFile != ""):
				return errors.New("give exactly one of --token-file or --executable")
			case useExe:
				self, err := os.Executable()
				if err != nil {
					return fmt.Errorf("cannot find the wicket binary: %w", err)
				}
				if self, err = filepath.EvalSymlinks(self); err != nil {
					return fmt.Errorf("cannot find the wicket binary: %w", err)
				}
				// Google's libraries split the command on white space.
				if strings.ContainsAny(self, " \t\n") || strings.ContainsAny(cfgSocket, " \t\n") {
					return errors.New("the wicket binary's path and the socket path must not contain white space")
				}
				src.Command = self + " gcp executable"
				if cfgSocket != "" {
					src.Command += " --socket " + cfgSocket
				}
				src.Timeout, src.OutputFile = timeout, cacheFile
			default:
				abs, err := filepath.Abs(tokenFile)
				if err != nil {
					return err
				}
				src.File = abs
			}
			ea, err := gcp.ExternalAccountConfig(cfgAud, sa, src)
			if err != nil {
				return err
			}
			if project != "" && checkProject(project) != nil {
				return fmt.Errorf("--project %q: want a project ID (6..30 of a-z, 0-9 and -) or number", project)
			}
			if output == "" || output == "-" {
				_, err = cmd.OutOrStdout().Write(ea.JSON())
				if err == nil && project != "" {
					fmt.Fprintf(cmd.ErrOrStderr(), "set GOOGLE_CLOUD_PROJECT=%s next to GOOGLE_APPLICATION_CREDENTIALS\n", project)
				}
				return err
			}
			// No secret inside: readable by the workload's users.
			if err := tokenfile.Write(output, ea.JSON(), 0o644, -1); err != nil {
				return err
			}
			abs, err := filepath.Abs(output)
			if err != nil {
				return err
			}
			env := []string{"GOOGLE_APPLICATION_CREDENTIALS=" + abs}
			if project != "" {
				env = append(env, "GOOGLE_CLOUD_PROJECT="+project)
			}
			if useExe {
				env = append(env, "GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES=1")
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "wrote %s\n", output)
			return printExports(cmd.OutOrStdout(), env)
		},
	}
	fl := cfgCmd.Flags()
	fl.StringVar(&cfgAud, "audience", "", "workload identity provider: //iam.googleapis.com/projects/N/locations/global/workloadIdentityPools/P/providers/X (required)")
	fl.StringVar(&sa, "service-account", "", "service account email to impersonate (optional)")
	fl.StringVar(&tokenFile, "token-file", "", "token file kept fresh by the agent ([[token_file]] in agent.toml)")
	fl.BoolVar(&useExe, "executable", false, "run 'wicket gcp executable' for each token instead of reading a file")
	fl.StringVar(&cfgSocket, "socket", "", "with --executable: agent API socket to put in the command (default: the executable's default)")
	fl.DurationVar(&timeout, "executable-timeout", gcp.DefaultExecutableTimeout, "with --executable: how long the libraries wait for it (5s..2m)")
	fl.StringVar(&cacheFile, "executable-output-file", "", "with --executable: file where responses are cached between runs (optional)")
	fl.StringVarP(&output, "output", "o", "", "write the JSON to this file and print the environment for it")
	fl.StringVar(&project, "project", os.Getenv("GOOGLE_CLOUD_PROJECT"), "project ID for GOOGLE_CLOUD_PROJECT ($GOOGLE_CLOUD_PROJECT)")
	cfgCmd.MarkFlagRequired("audience")

	cmd.AddCommand(exe, cfgCmd)
	return cmd
}

func newEnvCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "env",
		Short: "Print the environment that points a cloud SDK at a token file",
		Long: `Prints export lines for a shell: eval "$(wicket env aws ...)". The token
file is the one the agent keeps fresh ([[token_file]], [aws] or [azure] in
agent.toml). With --config, the values come from the agent's config, as
'wicket agent run' exports them; flags override them.`,
	}
	var roleARN, awsFile, sessionName, awsConfig string
	awsCmd := &cobra.Command{
		Use:   "aws",
		Short: "AWS_ROLE_ARN, AWS_WEB_IDENTITY_TOKEN_FILE, AWS_ROLE_SESSION_NAME",
		Long: `With --config AGENT_TOML, the role and the token file come from its [aws]
section, and the session name from aws.session_name, else the machine id
(asked of the agent at api.socket_path), else "wicket".`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fl := cmd.Flags()
			if awsConfig != "" {
				cfg, err := loadAgentConfig(awsConfig)
				if err != nil {
					return err
				}
				awsCfg := awsfeature.From(cfg)
				if awsCfg.RoleARN == "" && !fl.Changed("role-arn") {
					return fmt.Errorf("agent config %s has no [aws] role_arn", awsConfig)
				}
				if !fl.Changed("role-arn") {
					roleARN = awsCfg.RoleARN
				}
				if !fl.Changed("token-file") {
					awsFile = awsCfg.TokenFilePath()
				}
				if !fl.Changed("session-name") {
					sessionName = awsCfg.SessionName
					if sessionName == "" {
						sessionName = agentSessionName(cmd.Context(), cfg.API.Path)
					}
				}
			}
			if roleARN == "" || awsFile == "" {
				return errors.New("give --role-arn and --token-file, or --config with an agent config that has [aws] role_arn")
			}
			if sessionName != "" && !aws.ValidSessionName(sessionName) {
				return fmt.Errorf("session name %q: want 2..64 of letters, digits and +=,.@_-", sessionName)
			}
			return printExports(cmd.OutOrStdout(), aws.EnvAWS(roleARN, awsFile, sessionName))
		},
	}
	awsCmd.Flags().StringVar(&awsConfig, "config", "", "agent config (agent.toml) to read [aws] from")
	awsCmd.Flags().StringVar(&roleARN, "role-arn", "", "role to assume (required without --config)")
	awsCmd.Flags().StringVar(&awsFile, "token-file", "", "web identity token file (required without --config)")
	awsCmd.Flags().StringVar(&sessionName, "session-name", "", "role session name (optional)")

	var clientID, tenantID, azFile, authority, azConfig string
	azCmd := &cobra.Command{
		Use:   "azure",
		Short: "AZURE_CLIENT_ID, AZURE_TENANT_ID, AZURE_FEDERATED_TOKEN_FILE, AZURE_AUTHORITY_HOST",
		Long: `For Azure SDKs' workload identity credential. The token file must hold
tokens for the audience api://AzureADTokenExchange. With --config
AGENT_TOML, every value comes from its [azure] section.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fl := cmd.Flags()
			if azConfig != "" {
				cfg, err := loadAgentConfig(azConfig)
				if err != nil {
					return err
				}
				azCfg := azurefeature.From(cfg)
				if azCfg.ClientID == "" && !fl.Changed("client-id") {
					return fmt.Errorf("agent config %s has no [azure] client_id", azConfig)
				}
				for _, f := range []struct {
					flag string
					dst  *string
					v    string
				}{
					{"client-id", &clientID, azCfg.ClientID},
					{"tenant-id", &tenantID, azCfg.TenantID},
					{"token-file", &azFile, azCfg.TokenFilePath()},
					{"authority-host", &authority, azCfg.AuthorityHost},
				} {
					if !fl.Changed(f.flag) {
						*f.dst = f.v
					}
				}
			}
			if clientID == "" || tenantID == "" || azFile == "" {
				return errors.New("give --client-id, --tenant-id and --token-file, or --config with an agent config that has [azure] client_id")
			}
			return printExports(cmd.OutOrStdout(), []string{
				"AZURE_CLIENT_ID=" + clientID,
				"AZURE_TENANT_ID=" + tenantID,
				"AZURE_FEDERATED_TOKEN_FILE=" + azFile,
				"AZURE_AUTHORITY_HOST=" + authority,
			})
		},
	}
	azCmd.Flags().StringVar(&azConfig, "config", "", "agent config (agent.toml) to read [azure] from")
	azCmd.Flags().StringVar(&clientID, "client-id", "", "application (client) ID of the app registration or managed identity (required without --config)")
	azCmd.Flags().StringVar(&tenantID, "tenant-id", "", "directory (tenant) ID (required without --config)")
	azCmd.Flags().StringVar(&azFile, "token-file", "", "federated token file (required without --config)")
	azCmd.Flags().StringVar(&authority, "authority-host", azurefeature.DefaultAuthorityHost, "Microsoft Entra authority")

	cmd.AddCommand(awsCmd, azCmd)
	return cmd
}

// checkProject accepts a Google Cloud project ID or project number.
func checkProject(p string) error {
	if len(p) < 6 || len(p) > 30 {
		return errors.New("bad length")
	}
	for i := 0; i < len(p); i++ {
		if c := p[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return errors.New("bad character")
		}
	}
	return nil
}

// loadAgentConfig reads and validates an agent config, with its errors on
// one line.
func loadAgentConfig(path string) (*config.Agent, error) {
	cfg, err := agent.LoadConfig(path)
	if err != nil {
		return nil, errors.New(strings.ReplaceAll(err.Error(), "\n", "; "))
	}
	return cfg, nil
}

// agentSessionName is the role session name 'wicket agent run' exports
// when the config names none: the machine id, asked of the agent at
// socket, else "wicket" (agent not running, not allowed, no metadata yet).
func agentSessionName(ctx context.Context, socket string) string {
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	c := client.New(socket)
	c.Timeout = 2 * time.Second
	id, err := c.Get(ctx, "machine_id")
	if err != nil || id == "" {
		return "wicket"
	}
	return aws.SessionName(id)
}

// printExports prints "K=V" pairs as POSIX shell export lines, each value
// single-quoted so nothing in it is expanded.
func printExports(w io.Writer, env []string) error {
	var b strings.Builder
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		if strings.ContainsAny(v, "\x00\n\r") {
			return fmt.Errorf("%s: value contains a control character", k)
		}
		fmt.Fprintf(&b, "export %s='%s'\n", k, strings.ReplaceAll(v, "'", `'\''`))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// agentOIDCToken asks the agent on socket ("" = $WICKET_SOCKET or the
// default) for an OIDC token for aud.
func agentOIDCToken(ctx context.Context, socket, aud string) (string, time.Time, error) {
	return client.New(socket).OIDCToken(ctx, aud)
}

// describeAgentError turns a failed token request into the one line the
// user sees, and the code for gcp's error response.
func describeAgentError(err error) (code string, line error) {
	var ce *client.Error
	switch {
	case errors.As(err, &ce) && ce.Status == http.StatusForbidden:
		return ce.Code, fmt.Errorf("the agent denied the token request (403 %s): its policy does not allow this user to get OIDC tokens", ce.Code)
	case errors.As(err, &ce):
		code := ce.Code
		if code == "" {
			code = "agent_error"
		}
		return code, fmt.Errorf("the agent could not provide a token: %s", strings.TrimPrefix(ce.Error(), "wicket agent: "))
	case errors.Is(err, syscall.ENOENT), errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.EACCES):
		return "agent_unreachable", fmt.Errorf("cannot reach the agent: %v", err)
	}
	return "agent_error", err
}
