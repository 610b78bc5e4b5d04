// Package builtin is the one place the agent's features are registered
// (as containerd's builtins are): both binaries run this list. Adding a
// feature is one package under internal/agent/feature and one line here.
// Order matters where a feature reads what an earlier one claimed: the
// cloud sections pick among the [[token_file]] entries before them.
package builtin

import (
	"github.com/wicket-sh/wicket/internal/agent/feature"
	"github.com/wicket-sh/wicket/internal/agent/feature/aws"
	"github.com/wicket-sh/wicket/internal/agent/feature/azure"
	"github.com/wicket-sh/wicket/internal/agent/feature/gcp"
	"github.com/wicket-sh/wicket/internal/agent/feature/metadata"
	"github.com/wicket-sh/wicket/internal/agent/feature/oidctoken"
	"github.com/wicket-sh/wicket/internal/agent/feature/proxyroutes"
	"github.com/wicket-sh/wicket/internal/agent/feature/spiffe"
	"github.com/wicket-sh/wicket/internal/agent/feature/tokenfiles"
)

// Features returns the agent's features, in registration order.
func Features() []feature.Module {
	return []feature.Module{
		metadata.Module{},
		oidctoken.Module{},
		tokenfiles.Module{},
		aws.Module{},
		azure.Module{},
		gcp.Module{},
		proxyroutes.Module{},
		spiffe.Module{},
		spiffe.FilesModule{},
	}
}
