package issuer

import (
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/issuer/issuertest"
)

// TestContract runs the issuer-API contract against the real issuer: its
// public handler on loopback, with bolt state and the gateway pointed at a
// platform API the suite provides.
func TestContract(t *testing.T) {
	issuertest.Run(t, func(t *testing.T) *issuertest.Target {
		var platform atomic.Pointer[http.Handler]
		up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if h := platform.Load(); h != nil {
				(*h).ServeHTTP(w, r)
				return
			}
			http.NotFound(w, r)
		}))
		t.Cleanup(up.Close)
		ti := startIssuer(t, shortDir(t), func(c *config.Issuer) { c.Gateway.Upstream = up.URL })
		m, tok, err := ti.AddMachine(t.Context(), devSpec)
		if err != nil {
			t.Fatal(err)
		}
		return &issuertest.Target{
			URL: ti.url, Org: m.Org, App: m.App, Name: m.Name, MachineID: m.ID, Token: tok.Token,
			SetTag: func(t *testing.T, k, v string) {
				if _, err := ti.UpdateMachine(t.Context(), m.ID, api.MachineUpdate{SetTags: map[string]string{k: v}}); err != nil {
					t.Fatal(err)
				}
			},
			Remove: func(t *testing.T) {
				if err := ti.RemoveMachine(t.Context(), m.ID); err != nil {
					t.Fatal(err)
				}
			},
			Revoke: func(t *testing.T) {
				if err := ti.RevokeToken(t.Context(), tok.TokenID, "contract"); err != nil {
					t.Fatal(err)
				}
			},
			SetGateway: func(_ *testing.T, h http.Handler) { platform.Store(&h) },
		}
	})
}
