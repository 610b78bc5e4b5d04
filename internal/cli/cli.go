// Package cli is the command line both binaries share: the guest's
// commands (agent, agent run, token, admin, version, trust and the cloud
// helpers) and the plumbing every command uses (exit codes, logging,
// SIGHUP reloads, admin-socket calls). `wicket-agent` is exactly these
// commands; `wicket` adds the issuer, dev and migrate commands on top.
//
// Nothing here may import the issuer or a store backend: the agent-only
// binary is built from this package, and must not link the etcd client,
// grpc, protobuf or zap (cmd/wicket-agent's dependency test holds that).
package cli

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/wicket-sh/wicket/internal/version"
)

// ExitError carries a process exit code up to Run without printing
// anything: the command has already said what went wrong, or the code is
// a workload's.
type ExitError struct{ Code int }

func (e ExitError) Error() string { return fmt.Sprintf("exit status %d", e.Code) }

// NewRoot returns a root command named name with the guest's commands.
func NewRoot(name, short string) *cobra.Command {
	root := &cobra.Command{
		Use:           name,
		Short:         short,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(NewVersionCmd(), NewAgentCmd(), NewAdminCmd(), NewTokenCmd(), NewTrustCmd())
	root.AddCommand(CloudCommands()...)
	return root
}

// NewVersionCmd prints the version and commit.
func NewVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print version and commit",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			v, c := version.Get()
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s (commit %s)\n", cmd.Root().Name(), v, c)
		},
	}
}

// Run executes root with args and returns the process's exit code: an
// ExitError's code, 1 (after printing the error) for any other error.
func Run(root *cobra.Command, args []string) int {
	root.SetArgs(args)
	if err := root.Execute(); err != nil {
		var ee ExitError
		if errors.As(err, &ee) {
			return ee.Code
		}
		fmt.Fprintln(os.Stderr, "wicket:", err)
		return 1
	}
	return 0
}

// Main runs root with the process's arguments and exits.
func Main(root *cobra.Command) { os.Exit(Run(root, os.Args[1:])) }
