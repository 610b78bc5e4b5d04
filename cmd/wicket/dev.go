package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/agent"
	"github.com/wicket-sh/wicket/internal/cli"
	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/issuer"
	"github.com/wicket-sh/wicket/internal/supervise"
)

// The dev machine registered by `wicket dev`.
var devMachine = api.MachineSpec{
	Org: "dev", App: "dev-app", Name: "dev-machine", Region: "local",
	Image: "wicket/dev:latest", PrivateIP: "fdaa::2", Tags: map[string]string{"env": "dev"},
}

func newDevCmd() *cobra.Command {
	var dir, addr, logFormat string
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run issuer + agent with one registered dev machine: the whole system on a laptop",
		Long: `wicket dev starts an issuer (bbolt state in DIR) and an agent for one
registered machine (org dev, app dev-app, machine dev-machine), with no
config file and no root. The agent's API socket is DIR/api.sock, its admin
socket DIR/admin.sock and its config DIR/agent.toml (written on first run,
hot-reloadable with SIGHUP or "wicket admin reload"). The issuer's admin
socket is DIR/issuer.sock. Restarting reuses the same state.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDev(cmd.Context(), cmd.OutOrStdout(), dir, addr, logFormat)
		},
	}
	cmd.Flags().StringVar(&dir, "dir", ".wicket-dev", "directory for state, sockets and agent.toml")
	cmd.Flags().StringVar(&addr, "issuer-addr", "127.0.0.1:8650", "issuer listen address (public URL is http://ADDR)")
	cmd.Flags().StringVar(&logFormat, "log-format", "text", "log format: text or json (logs go to stderr)")
	return cmd
}

const devAgentTOML = `# Agent config written by "wicket dev". Edit and reload:
#   wicket admin --socket %[1]s/admin.sock reload     (or send SIGHUP)
# Every key is documented in examples/agent.toml. The sockets and
# issuer.url below are what wicket dev runs with (it applies them as
# command-line flags would, so --issuer-addr wins over issuer.url); they
# are written here so that other commands reading this file, such as
# "wicket env aws --config", find the agent and pass validation.

[api]
socket_path = %[3]q
socket_mode = "0660"

[admin]
socket_path = %[4]q

[issuer]
url = %[5]q

[log]
level = "info"

# With no [[policy]], root and your own uid may do everything.
# [[policy]]
# name = "me"
# uids = [%[2]d]
# allow = ["GET /v1/health", "GET /v1/metadata*", "POST /v1/tokens/oidc"]
`

func runDev(parent context.Context, out io.Writer, dir, addr, logFormat string) error {
	start := time.Now()
	if parent == nil {
		parent = context.Background()
	}
	ctx, stop := signal.NotifyContext(parent, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	logger, level, err := cli.NewLogger(os.Stderr, logFormat)
	if err != nil {
		return err
	}
	// The dev machine's token lives in this process: keep it out of core
	// dumps and out of reach of other processes of the same user.
	if err := supervise.SetNonDumpable(); err != nil {
		return err
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	publicURL := "http://" + addr

	ov := []config.IssuerOverride{func(c *config.Issuer) {
		c.State.Dir = filepath.Join(abs, "state")
		c.Admin.Path = filepath.Join(abs, "issuer.sock")
		c.Server.Listen, c.Server.PublicURL = addr, publicURL
	}}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("issuer address %s: %w (choose another with --issuer-addr)", addr, err)
	}
	iss, err := issuer.Start(ctx, issuer.StartOptions{Init: true, Options: issuer.Options{
		Overrides: ov, Listener: ln, Logger: logger.With("service", "issuer"), LogLevel: level,
	}})
	if err != nil {
		return err
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The issuer stops with runCtx or on its own; issDone carries its
	// result once, like agDone the agent's.
	issDone := make(chan error, 1)
	go func() {
		select {
		case <-runCtx.Done():
		case <-iss.Done():
		}
		issDone <- iss.Stop()
	}()

	m, err := iss.EnsureMachine(ctx, devMachine)
	if err != nil {
		cancel()
		<-issDone
		return fmt.Errorf("register dev machine: %w", err)
	}
	minted, err := iss.MintToken(ctx, m.ID, 24*time.Hour)
	if err != nil {
		cancel()
		<-issDone
		return err
	}
	tok, err := agent.ParseMachineToken(minted.Token)
	if err != nil {
		cancel()
		<-issDone
		return err
	}

	agentCfg := filepath.Join(abs, "agent.toml")
	if _, err := os.Lstat(agentCfg); errors.Is(err, fs.ErrNotExist) {
		body := fmt.Sprintf(devAgentTOML, abs, os.Getuid(), filepath.Join(abs, "api.sock"), filepath.Join(abs, "admin.sock"), publicURL)
		if err := os.WriteFile(agentCfg, []byte(body), 0o600); err != nil {
			cancel()
			<-issDone
			return err
		}
	}
	agentOv := []config.Override{func(c *config.Agent) {
		c.API.Path = filepath.Join(abs, "api.sock")
		c.Admin.Path = filepath.Join(abs, "admin.sock")
		c.Issuer.URL = publicURL
	}}
	a, err := agent.New(agent.Options{ConfigPath: agentCfg, Overrides: agentOv, MachineToken: tok, Logger: logger.With("service", "agent")})
	if err != nil {
		cancel()
		<-issDone
		return fmt.Errorf("agent (config %s): %w", agentCfg, err)
	}
	agDone := make(chan error, 1)
	go func() { agDone <- a.Run(runCtx) }()
	select {
	case <-a.Ready():
	case err := <-agDone:
		cancel()
		<-issDone
		return err
	}
	cli.ReloadOnHUP(runCtx, a.Reload, logger)

	api := a.Config().API.Path
	// Print paths relative to where the user is, so the examples are short
	// and copy-pasteable.
	cwd, _ := os.Getwd()
	rel := func(p string) string {
		if r, err := filepath.Rel(cwd, p); err == nil && len(r) < len(p) {
			return r
		}
		return p
	}
	fmt.Fprintf(out, "ready in %dms: issuer %s, machine %s (%s), agent socket %s\n\n",
		time.Since(start).Milliseconds(), publicURL, m.Name, m.ID, rel(api))
	fmt.Fprintf(out, `Try, in another terminal:
  curl --unix-socket %[1]s http://wicket/v1/metadata
  curl --unix-socket %[1]s http://wicket/v1/metadata/tags/env
  curl --unix-socket %[1]s -X POST http://wicket/v1/tokens/oidc -d '{"aud":"sts.amazonaws.com"}'
  curl --unix-socket %[1]s -i 'http://wicket/v1/metadata?wait=true&timeout=30s&etag=ETAG'
  go run ./cmd/wicket issuer machine update --socket %[2]s dev/dev-app/dev-machine --tag color=blue
  go run ./cmd/wicket admin --socket %[3]s status
  curl %[4]s/dev/.well-known/openid-configuration
Ctrl-C stops both; state stays in %[5]s.
`, rel(api), rel(filepath.Join(abs, "issuer.sock")), rel(a.Config().Admin.Path), publicURL, rel(abs))

	var firstErr error
	select {
	case <-ctx.Done():
	case firstErr = <-agDone:
		agDone <- nil
	case firstErr = <-issDone:
		issDone <- nil
	}
	cancel()
	errA, errI := <-agDone, <-issDone
	return errors.Join(firstErr, errA, errI)
}
