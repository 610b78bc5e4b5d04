package cli

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/wicket-sh/wicket/internal/agent"
	"github.com/wicket-sh/wicket/internal/supervise"
)

type runFlags struct {
	agentFlags
	user, group, workdir string
	allowRoot            bool
	stopTimeout          time.Duration
	sighup               string
}

func newAgentRunCmd() *cobra.Command {
	f := &runFlags{}
	cmd := &cobra.Command{
		Use:   "run [flags] -- CMD [ARGS...]",
		Short: "Run the agent as the machine's init: start CMD under a dropped identity and broker its credentials",
		Long: `Start the agent, wait until its sockets accept connections, then run CMD as
its child under --user/--group with WICKET_SOCKET set. CMD never sees the
machine token: the agent is non-dumpable, WICKET_* variables are removed
from CMD's environment, and CMD inherits no descriptor beyond 0-2.
SIGTERM, SIGINT, SIGQUIT, SIGUSR1, SIGUSR2 and SIGWINCH go to CMD's process
group; SIGHUP reloads the agent's config (or, with --sighup=forward, goes to
CMD too). Orphaned processes are reaped. When CMD exits the agent stops and
exits with CMD's status (128+N when killed by signal N).
Started from a terminal, a CMD of another uid gets a pseudo-terminal of its
own, relayed to that terminal (as su --pty does), and never the terminal
itself: it cannot push input into the invoking shell.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runWorkload(cmd.Context(), f, args)
		},
	}
	fl := cmd.Flags()
	// Flags end at CMD: `run --user app prog -v` passes -v to prog.
	fl.SetInterspersed(false)
	fl.StringVar(&f.config, "config", "", "agent config file (TOML); built-in defaults when empty")
	fl.StringVar(&f.apiSocket, "api-socket", "", "override api.socket_path")
	fl.StringVar(&f.adminSocket, "admin-socket", "", "override admin.socket_path")
	fl.StringVar(&f.logLevel, "log-level", "", "override log.level (debug, info, warn, error)")
	fl.StringVar(&f.logFormat, "log-format", "text", "log format: text or json")
	fl.IntVar(&f.tokenFD, "token-fd", -1, "read the machine token from this inherited file descriptor, then close it")
	fl.StringVar(&f.user, "user", "", "run CMD as this user (name or uid); with a name, also its primary and supplementary groups from /etc/group")
	fl.StringVar(&f.group, "group", "", "run CMD with this group (name or gid) and no supplementary groups")
	fl.StringVar(&f.workdir, "workdir", "", "working directory of CMD (default: the current one)")
	fl.BoolVar(&f.allowRoot, "allow-root-workload", false, "allow CMD to run as root (root can read the agent's memory, so the machine token too)")
	fl.DurationVar(&f.stopTimeout, "stop-timeout", supervise.DefaultStopTimeout, "after SIGTERM, how long CMD has to exit before its process group is killed")
	fl.StringVar(&f.sighup, "sighup", "reload", "on SIGHUP: reload (the agent's config) or forward (to CMD)")
	return cmd
}

func runWorkload(parent context.Context, f *runFlags, argv []string) error {
	if f.sighup != "reload" && f.sighup != "forward" {
		return fmt.Errorf("--sighup %q: want reload or forward", f.sighup)
	}
	// On a terminal the workload's pty relay may hold in raw mode, log
	// lines still need their CR.
	logger, level, err := NewLogger(supervise.TerminalWriter(os.Stderr), f.logFormat)
	if err != nil {
		return err
	}
	opts := agent.RunOptions{
		Options:       agent.Options{ConfigPath: f.config, Overrides: f.overrides(), Logger: logger, LogLevel: level},
		Argv:          argv,
		Dir:           f.workdir,
		User:          f.user,
		Group:         f.group,
		AllowRoot:     f.allowRoot,
		StopTimeout:   f.stopTimeout,
		ForwardSIGHUP: f.sighup == "forward",
	}
	if f.tokenFD >= 0 {
		opts.ReadMachineToken = func() (agent.MachineToken, error) { return agent.MachineTokenFromFD(f.tokenFD) }
	}
	code, err := agent.RunWorkload(parent, opts)
	switch {
	case err != nil && code != 1:
		fmt.Fprintf(os.Stderr, "wicket: %v\n", err)
		return ExitError{code}
	case err != nil:
		return err
	case code != 0:
		return ExitError{code}
	}
	return nil
}
