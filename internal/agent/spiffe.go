package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/agent/workloadapi"
	"github.com/wicket-sh/wicket/internal/machinetoken"
	"github.com/wicket-sh/wicket/internal/metrics"
	"github.com/wicket-sh/wicket/internal/unixsock"
)

// spiffeIssuer asks the issuer for SVIDs with copies of the machine token
// attenuated to the svid feature and the one SPIFFE ID asked for (and a
// JWT-SVID's audiences): captured on the way, a copy buys nothing but an
// SVID for that same ID, expiring no later than the copy.
type spiffeIssuer struct{ a *Agent }

func (s spiffeIssuer) do(ctx context.Context, method, path string, body any, ttl time.Duration, scope machinetoken.Scope, out any) error {
	var b []byte
	if body != nil {
		b, _ = json.Marshal(body)
	}
	rep, err := s.a.issuer.callScoped(ctx, method, path, nil, b, ttl, scope)
	if err != nil {
		s.a.upstreamErrors.Add(1)
		return err
	}
	if rep.status != http.StatusOK {
		s.a.upstreamErrors.Add(1)
		return errors.New("issuer answered " + strconv.Itoa(rep.status) + " " + rep.code())
	}
	if err := json.Unmarshal(rep.body, out); err != nil {
		s.a.upstreamErrors.Add(1)
		return fmt.Errorf("issuer reply: %w", err)
	}
	return nil
}

func svidScope(id string, aud []string) machinetoken.Scope {
	return machinetoken.Scope{Features: []machinetoken.Feature{machinetoken.FeatureSVID}, SPIFFEIDs: []string{id}, Audiences: aud}
}

func (s spiffeIssuer) Bundle(ctx context.Context) (*api.SVIDBundleReply, error) {
	var out api.SVIDBundleReply
	return &out, s.do(ctx, http.MethodGet, "/v1/svids/bundle", nil, attenuatedTTL,
		machinetoken.Scope{Features: []machinetoken.Feature{machinetoken.FeatureSVID}}, &out)
}

func (s spiffeIssuer) X509(ctx context.Context, id string, csr []byte) (*api.X509SVIDReply, error) {
	var out api.X509SVIDReply
	ttl := s.a.rt.Load().cfg.SPIFFE.X509CopyTTL.Duration
	return &out, s.do(ctx, http.MethodPost, "/v1/svids/x509", api.X509SVIDRequest{CSR: csr}, ttl, svidScope(id, nil), &out)
}

func (s spiffeIssuer) JWT(ctx context.Context, id string, aud []string) (*api.JWTSVIDReply, error) {
	var out api.JWTSVIDReply
	ttl := s.a.rt.Load().cfg.SPIFFE.JWTCopyTTL.Duration
	return &out, s.do(ctx, http.MethodPost, "/v1/svids/jwt", api.JWTSVIDRequest{SPIFFEID: id, Audience: aud}, ttl, svidScope(id, aud), &out)
}

// svidRoute is the guest API route whose policy a Workload API call of
// kind k shares.
func svidRoute(k workloadapi.Kind) string { return "/v1/svids/" + string(k) }

// identifySPIFFE is the Workload API's policy decision: the rule that
// lets the caller POST the SVID route of kind k names its workload
// (svid_name; none: the machine's own ID). A denial is logged and counted
// like the API socket's.
func (a *Agent) identifySPIFFE(ctx context.Context, p unixsock.Peer, k workloadapi.Kind) (string, bool) {
	d := a.rt.Load().policy.Decide(p, http.MethodPost, svidRoute(k))
	if d.Allowed {
		return d.SVIDName, true
	}
	a.denied.Add(1)
	reason := "policy"
	if d.ExeErr != nil {
		reason = "exe_unavailable"
	}
	a.denials.Deny(ctx, p, reason, "peer_uid", p.UID, "peer_gid", p.GID, "peer_pid", p.PID,
		"socket", "spiffe", "call", string(k), "outcome", "denied", "reason", reason)
	return "", false
}

// startWorkloadAPI opens the Workload API socket and serves it until
// stopWorkloadAPI; without [spiffe] enabled it does nothing.
func (a *Agent) startWorkloadAPI() error {
	cfg := a.rt.Load().cfg
	if !cfg.SPIFFE.Enabled || a.issuer == nil {
		return nil
	}
	sc, err := cfg.SPIFFE.Socket.UnixSock("spiffe", 0o750)
	if err != nil {
		return err
	}
	sc.Logger = a.log
	l, err := unixsock.Listen(sc)
	if err != nil {
		return fmt.Errorf("spiffe socket: %w", err)
	}
	a.spiffeLn = l
	a.spiffe = workloadapi.New(workloadapi.Options{
		Issuer: spiffeIssuer{a}, Identify: a.identifySPIFFE, Now: a.now,
		Logger: a.log.With("socket", "spiffe"),
	})
	a.bg.Add(1)
	go func() {
		defer a.bg.Done()
		if err := a.spiffe.Serve(l); err != nil {
			a.log.Error("spiffe socket", "err", err)
		}
	}()
	return nil
}

// stopWorkloadAPI ends the Workload API's streams and closes its socket.
func (a *Agent) stopWorkloadAPI() {
	if a.spiffe != nil {
		a.spiffe.Stop()
	}
	if a.spiffeLn != nil {
		a.spiffeLn.Close()
	}
}

// spiffeStatus is the Workload API's part of status: counts and the
// soonest SVID expiry, never a key or a certificate.
func (a *Agent) spiffeStatus() map[string]any {
	if a.spiffe == nil {
		return map[string]any{"enabled": false}
	}
	st := a.spiffe.Stats()
	out := map[string]any{"enabled": true, "svids_issued": st.Issued, "x509_rotations": st.Rotations,
		"failures": st.Failures, "x509_svids_cached": st.X509SVIDs}
	if !st.SoonestExpiry.IsZero() {
		out["soonest_x509_expiry"] = st.SoonestExpiry.UTC().Format(time.RFC3339)
	}
	return out
}

func (a *Agent) spiffeMetrics() []metrics.Sample {
	if a.spiffe == nil {
		return nil
	}
	st := a.spiffe.Stats()
	out := []metrics.Sample{
		{Name: "wicket_svids_issued_total", Help: "SVIDs (X.509 and JWT) obtained from the issuer.", Type: metrics.Counter, Value: float64(st.Issued)},
		{Name: "wicket_svid_rotations_total", Help: "X.509-SVIDs renewed before their end.", Type: metrics.Counter, Value: float64(st.Rotations)},
		{Name: "wicket_svid_failures_total", Help: "Failed SVID or bundle fetches.", Type: metrics.Counter, Value: float64(st.Failures)},
	}
	if !st.SoonestExpiry.IsZero() {
		out = append(out, metrics.Sample{Name: "wicket_svid_seconds_to_expiry", Help: "Seconds until the soonest cached X.509-SVID expires.",
			Type: metrics.Gauge, Value: st.SoonestExpiry.Sub(a.now()).Seconds()})
	}
	return out
}
