// Command wicket is the metadata service and credential broker for
// machines, the platform's build: the issuer, cluster migration and dev
// mode, plus every command of the guest's build (cmd/wicket-agent).
package main

import (
	"github.com/spf13/cobra"

	"github.com/wicket-sh/wicket/internal/cli"
)

func main() { cli.Main(newRoot()) }

func newRoot() *cobra.Command {
	root := cli.NewRoot("wicket", "Metadata service and credential broker for machines, over a Unix socket")
	root.AddCommand(newIssuerCmd(), newDevCmd())
	return root
}
