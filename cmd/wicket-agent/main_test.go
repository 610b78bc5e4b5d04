package main

import (
	"bytes"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// The guest's binary links none of the issuer's cluster stack: a package
// that pulls in etcd, its embedded server's test stack or zap (an import
// of the issuer or a store backend from internal/cli, say) fails this
// test. grpc and protobuf are allowed since the SPIFFE Workload API (a
// gRPC service) is in the agent; the grpc-gateway and otel layers etcd
// brings with it are not.
func TestDeps_NoClusterStack(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	deps := strings.Fields(string(out))
	// A list without the agent is not the binary's: the check below
	// would pass for the wrong reason.
	if !slices.Contains(deps, "github.com/wicket-sh/wicket/internal/agent") {
		t.Fatalf("go list -deps does not list internal/agent: %q", out)
	}
	// The Workload API must really be in, or the grpc exemption below
	// would be allowed for nothing.
	if !slices.Contains(deps, "github.com/wicket-sh/wicket/internal/agent/feature/spiffe/workloadapi") {
		t.Fatalf("go list -deps does not list internal/agent/feature/spiffe/workloadapi")
	}
	forbidden := []string{
		"go.etcd.io/",
		"go.uber.org/zap",
		"github.com/grpc-ecosystem/",
		"go.opentelemetry.io/",
		"github.com/soheilhy/cmux",
		"github.com/tmc/grpc-websocket-proxy",
		"github.com/wicket-sh/wicket/internal/issuer",
		"github.com/wicket-sh/wicket/internal/store",
		"net/http/pprof", // the bench build's profiler is cmd/wicket's, behind a tag
		// Envoy's SDS messages are encoded by internal/xdswire: Envoy's
		// generated protos cost 5 MiB of binary and 2.5 MiB resident.
		"github.com/envoyproxy/",
		"github.com/cncf/xds/",
	}
	for _, d := range deps {
		for _, f := range forbidden {
			if strings.HasPrefix(d, f) {
				t.Errorf("wicket-agent depends on %s", d)
			}
		}
	}
}

// The guest's commands are there, the platform's are not.
func TestCommands(t *testing.T) {
	root := newRoot()
	for _, path := range [][]string{
		{"agent"}, {"agent", "run"}, {"token", "oidc"}, {"admin", "status"}, {"admin", "reload"}, {"version"},
		{"aws", "credential-process"}, {"gcp", "executable"}, {"gcp", "config"}, {"env", "aws"}, {"env", "azure"},
	} {
		c, _, err := root.Find(path)
		if err != nil || c == root || c.Name() != path[len(path)-1] {
			t.Errorf("wicket-agent %s: not a command (%v)", strings.Join(path, " "), err)
		}
	}
	for _, name := range []string{"issuer", "dev", "migrate"} {
		if c, _, err := root.Find([]string{name}); err == nil && c != root {
			t.Errorf("wicket-agent has the platform's %q command", name)
		}
	}
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetArgs([]string{"version"})
	if err := root.Execute(); err != nil || !strings.HasPrefix(out.String(), "wicket-agent ") {
		t.Errorf("version: %q, %v", out.String(), err)
	}
}
