// Command wicket-agent is the guest's build of wicket: the agent (and
// `agent run`), token, admin, version and the cloud helpers, without the
// issuer, so without the etcd client, grpc, protobuf or zap. The platform
// runs the full `wicket` (cmd/wicket), which has these commands too.
package main

import (
	"github.com/spf13/cobra"

	"github.com/wicket-sh/wicket/internal/cli"
)

func main() { cli.Main(newRoot()) }

func newRoot() *cobra.Command {
	return cli.NewRoot("wicket-agent", "The in-machine agent of wicket: metadata service and credential broker over a Unix socket")
}
