package agenttest_test

import (
	"net/http"
	"testing"

	"github.com/wicket-sh/wicket/internal/agent/agenttest"
	"github.com/wicket-sh/wicket/internal/issuer/issuertest"
)

// TestContract runs the issuer-API contract against the fake, so agent
// tests are tested against what the real issuer does (the same suite runs
// against it in internal/issuer).
func TestContract(t *testing.T) {
	issuertest.Run(t, func(t *testing.T) *issuertest.Target {
		is := agenttest.New(t)
		m := is.Machine()
		tok := is.MachineToken(t)
		return &issuertest.Target{
			URL: is.URL, Org: m.Org, App: m.App, Name: m.MachineName, MachineID: m.MachineID, Token: tok,
			SetTag: func(_ *testing.T, k, v string) {
				tags := is.Machine().Tags
				tags[k] = v
				is.SetTags(tags)
			},
			Remove:     func(*testing.T) { is.Remove() },
			Revoke:     func(t *testing.T) { is.Revoke(t, tok) },
			SetGateway: func(_ *testing.T, h http.Handler) { is.SetGateway(h) },
		}
	})
}
