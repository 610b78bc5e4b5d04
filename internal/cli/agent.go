package cli

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/wicket-sh/wicket/internal/agent"
	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/supervise"
)

type agentFlags struct {
	config      string
	checkConfig string
	apiSocket   string
	adminSocket string
	logLevel    string
	logFormat   string
	tokenFD     int
}

// overrides turns flags into config overrides, used at startup and on
// every reload alike.
func (f *agentFlags) overrides() []config.Override {
	var o []config.Override
	if f.apiSocket != "" {
		p := f.apiSocket
		o = append(o, func(c *config.Agent) { c.API.Path = p })
	}
	if f.adminSocket != "" {
		p := f.adminSocket
		o = append(o, func(c *config.Agent) { c.Admin.Path = p })
	}
	if f.logLevel != "" {
		l := f.logLevel
		o = append(o, func(c *config.Agent) { c.Log.Level = l })
	}
	return o
}

func NewAgentCmd() *cobra.Command {
	f := &agentFlags{}
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the in-machine agent (guest API and admin sockets)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.checkConfig != "" {
				if _, err := agent.LoadConfig(f.checkConfig, f.overrides()...); err != nil {
					fmt.Fprintf(cmd.ErrOrStderr(), "config invalid: %v\n", err)
					return ExitError{1}
				}
				fmt.Fprintf(cmd.OutOrStdout(), "config ok: %s\n", f.checkConfig)
				return nil
			}
			return runAgent(cmd.Context(), f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.config, "config", "", "agent config file (TOML); built-in defaults when empty")
	fl.StringVar(&f.checkConfig, "check-config", "", "validate this config file and exit 0 (valid) or 1")
	fl.StringVar(&f.apiSocket, "api-socket", "", "override api.socket_path")
	fl.StringVar(&f.adminSocket, "admin-socket", "", "override admin.socket_path")
	fl.StringVar(&f.logLevel, "log-level", "", "override log.level (debug, info, warn, error)")
	fl.StringVar(&f.logFormat, "log-format", "text", "log format: text or json")
	fl.IntVar(&f.tokenFD, "token-fd", -1, "read the machine token from this inherited file descriptor, then close it")
	cmd.AddCommand(newAgentRunCmd())
	return cmd
}

func runAgent(parent context.Context, f *agentFlags) error {
	// Before any token enters the process: no core dump, and no same-uid
	// process reads our memory or the initial environment block (which
	// keeps WICKET_MACHINE_TOKEN even after unsetenv).
	if err := supervise.SetNonDumpable(); err != nil {
		return err
	}
	logger, level, err := NewLogger(os.Stderr, f.logFormat)
	if err != nil {
		return err
	}
	opts := agent.Options{ConfigPath: f.config, Overrides: f.overrides(), Logger: logger, LogLevel: level}
	if f.tokenFD >= 0 {
		if opts.MachineToken, err = agent.MachineTokenFromFD(f.tokenFD); err != nil {
			return err
		}
	}
	a, err := agent.New(opts)
	if err != nil {
		return err
	}
	if parent == nil {
		parent = context.Background()
	}
	ctx, stop := signal.NotifyContext(parent, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ReloadOnHUP(ctx, a.Reload, logger)
	return a.Run(ctx)
}
