package agent

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/wicket-sh/wicket/internal/agent/agenttest"
	"github.com/wicket-sh/wicket/internal/sockettest"
	"github.com/wicket-sh/wicket/internal/wait"
)

// The Workload API serves its cached SVIDs while the issuer is out of
// reach, until they expire (on the agent's clock): go-spiffe gets the same
// X.509-SVID and JWT-SVID with the issuer stopped, Unavailable once they
// are past their end, and new ones when the issuer is back, without a
// restart.
func TestWorkloadAPI_CacheWhileIssuerDownUntilExpiry(t *testing.T) {
	sockettest.RequireRoot(t, "the policy names uid 0")
	is := agenttest.New(t)
	// Short lives: 2 minutes of the agent's clock, which the test moves.
	is.SetX509SVIDTTL(2 * time.Minute)
	is.SetJWTSVIDTTL(2 * time.Minute)
	clk := &skewClock{}
	g := startGuestWith(t, is, svidCfg, Options{Now: clk.now})
	c, err := workloadapi.New(t.Context(), workloadapi.WithAddr("unix://"+filepath.Join(g.dir, "run", "spiffe.sock")))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	x1, err := c.FetchX509SVID(ctx)
	if err != nil {
		t.Fatalf("FetchX509SVID: %v", err)
	}
	j1, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "db"})
	if err != nil {
		t.Fatalf("FetchJWTSVID: %v", err)
	}

	is.Stop()
	x2, err := c.FetchX509SVID(ctx)
	if err != nil || !x2.Certificates[0].Equal(x1.Certificates[0]) {
		t.Fatalf("X.509-SVID with the issuer down: %v (same: %v), want the cached one", err, err == nil && x2.Certificates[0].Equal(x1.Certificates[0]))
	}
	j2, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "db"})
	if err != nil || j2.Marshal() != j1.Marshal() {
		t.Fatalf("JWT-SVID with the issuer down: %v, want the cached one", err)
	}
	// The guest API serves the same cached SVID meanwhile.
	if r := curl(t, g.api, 0, "-X", "POST", "http://wicket/v1/svids/x509"); r.status != 200 {
		t.Errorf("guest API with the issuer down: %d, want the cached svid", r.status)
	}

	// Past both ends on the agent's clock: nothing usable is left.
	clk.jump(3 * time.Minute)
	if _, err := c.FetchX509SVID(ctx); status.Code(err) != codes.Unavailable {
		t.Errorf("expired X.509-SVID with the issuer down: %v, want Unavailable", err)
	}
	if _, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "db"}); status.Code(err) != codes.Unavailable {
		t.Errorf("expired JWT-SVID with the issuer down: %v, want Unavailable", err)
	}
	if r := curl(t, g.api, 0, "-X", "POST", "http://wicket/v1/svids/x509"); r.status != 503 {
		t.Errorf("guest API, expired svid, issuer down: %d, want 503", r.status)
	}

	// The issuer is back, with lives that outlast the agent's clock lead:
	// the next calls get new SVIDs.
	is.SetX509SVIDTTL(time.Hour)
	is.SetJWTSVIDTTL(5 * time.Minute)
	is.Start(t)
	var x3 *x509svid.SVID
	wait.Eventually(t, 30*time.Second, func() bool {
		sv, err := c.FetchX509SVID(ctx)
		if err != nil {
			return false
		}
		x3 = sv
		return true
	}, "an X.509-SVID once the issuer is back")
	if x3.Certificates[0].Equal(x1.Certificates[0]) {
		t.Error("the expired X.509-SVID was served again")
	}
	j3, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "db"})
	if err != nil || j3.Marshal() == j1.Marshal() {
		t.Errorf("JWT-SVID once the issuer is back: %v (the expired one again: %v)", err, err == nil && j3.Marshal() == j1.Marshal())
	}
}
