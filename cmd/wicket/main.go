// Command wicket is the metadata service and credential broker for
// machines: agent, issuer, dev mode and the CLI, in one binary.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/wicket-sh/wicket/internal/version"
)

// exitError carries a process exit code up to main without printing twice.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

func main() {
	root := newRoot()
	if err := root.Execute(); err != nil {
		var ee exitError
		if errors.As(err, &ee) {
			os.Exit(ee.code)
		}
		fmt.Fprintln(os.Stderr, "wicket:", err)
		os.Exit(1)
	}
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "wicket",
		Short:         "Metadata service and credential broker for machines, over a Unix socket",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newVersionCmd(), newAgentCmd(), newAdminCmd(), newIssuerCmd(), newDevCmd())
	root.AddCommand(newTokenCmd())
	root.AddCommand(cloudCommands()...)
	return root
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print version and commit",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			v, c := version.Get()
			fmt.Fprintf(cmd.OutOrStdout(), "wicket %s (commit %s)\n", v, c)
		},
	}
}
