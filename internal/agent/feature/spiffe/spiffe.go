// Package spiffe is the SPIFFE feature of the agent: the [spiffe] section
// and the SPIFFE Workload API (package workloadapi, the standard gRPC
// service) on a Unix socket of its own, which the core opens with
// internal/unixsock under the same rules as its own sockets
// (feature.Listener). See docs/spiffe.md.
//
// Who a caller is comes from the kernel and the agent's policy: every
// call is decided by the core (RunHost.Authorize) as if it were POST
// /v1/svids/x509 (X.509-SVIDs and bundles) or POST /v1/svids/jwt
// (JWT-SVIDs, JWT bundles, validation) on the guest API, and the rule
// that admits the caller names its workload (svid_name; none: the
// machine's own SPIFFE ID). The issuer signs: each call to it carries a
// copy of the machine token narrowed to the svid feature, the one kind of
// request it is (bundle, X.509, JWT) and, for an SVID, the one SPIFFE ID
// asked for (and a JWT-SVID's audiences), so a copy captured on the way
// buys nothing but the same kind of answer for that same ID, expiring no
// later than the copy.
package spiffe

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/agent/feature"
	"github.com/wicket-sh/wicket/internal/agent/feature/spiffe/workloadapi"
	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/machinetoken"
	"github.com/wicket-sh/wicket/internal/metrics"
	"github.com/wicket-sh/wicket/internal/unixsock"
)

// Key is the section's TOML key, and the socket's name in status and
// metrics.
const Key = "spiffe"

// Settings is the [spiffe] section (static: a change needs a restart).
type Settings struct {
	config.Socket `reload:"restart"`
	// Enabled serves the Workload API; it needs issuer.url.
	Enabled bool `toml:"enabled" reload:"restart"`
	// X509CopyTTL is the life of the machine-token copy that asks for an
	// X.509-SVID: the SVID never outlives it.
	X509CopyTTL config.Duration `toml:"x509_copy_ttl" reload:"restart"`
	// JWTCopyTTL is the same for a JWT-SVID.
	JWTCopyTTL config.Duration `toml:"jwt_copy_ttl" reload:"restart"`
}

// Module is the feature.
type Module struct{}

var (
	_ config.Section  = Module{}
	_ feature.Runtime = Module{}
	_ feature.Env     = Module{}
)

// Key implements feature.Module and config.Section.
func (Module) Key() string { return Key }

// New implements config.Section: the defaults.
func (Module) New() any {
	return &Settings{
		Socket:      config.Socket{Path: api.DefaultSPIFFESocket, Mode: 0o660, MaxConns: 1024},
		X509CopyTTL: config.Duration{Duration: time.Hour},
		JWTCopyTTL:  config.Duration{Duration: 5 * time.Minute},
	}
}

// Validate implements config.Section.
func (Module) Validate(v any, c *config.Agent) []error {
	s := v.(*Settings)
	if !s.Enabled {
		return nil
	}
	if s.Group == "" && c.WorkloadGroup != "" {
		// `wicket agent run`: the workload must be able to connect.
		s.Group, s.Mode = c.WorkloadGroup, 0o660
	}
	errs := s.Socket.Validate(Key)
	if c.Issuer.URL == "" {
		errs = append(errs, errors.New("spiffe.enabled needs issuer.url to get SVIDs from"))
	}
	if s.Path == c.API.Path || s.Path == c.Admin.Path {
		errs = append(errs, errors.New("spiffe.socket_path must differ from api.socket_path and admin.socket_path"))
	}
	c.ReservePath("spiffe.socket_path", s.Path)
	if d := s.X509CopyTTL.Duration; d < 2*time.Minute || d > 24*time.Hour {
		errs = append(errs, errors.New("spiffe.x509_copy_ttl: want 2m to 24h"))
	}
	if d := s.JWTCopyTTL.Duration; d < 2*time.Minute || d > time.Hour {
		errs = append(errs, errors.New("spiffe.jwt_copy_ttl: want 2m to 1h"))
	}
	return errs
}

// From returns the [spiffe] section of c (the defaults when the feature
// is not registered).
func From(c *config.Agent) *Settings {
	if s, ok := c.Section(Key).(*Settings); ok {
		return s
	}
	return Module{}.New().(*Settings)
}

// Env implements feature.Env: SPIFFE_ENDPOINT_SOCKET, the standard
// variable every SPIFFE library reads, when the Workload API is served.
func (Module) Env(v any, _ *config.Agent, _ feature.Host) []string {
	s := v.(*Settings)
	if !s.Enabled {
		return nil
	}
	return []string{api.SPIFFEEndpointSocketEnv + "=unix://" + s.Path}
}

// Build implements feature.Runtime. Without [spiffe] enabled or an issuer
// the instance serves no socket and reports enabled = false.
func (Module) Build(h feature.RunHost) (feature.Instance, error) {
	f := &Feature{host: h}
	if !From(h.Config()).Enabled || h.Issuer() == nil {
		return f, nil
	}
	f.srv = workloadapi.New(workloadapi.Options{
		Issuer: issuer{h}, Identify: f.identify, Now: h.Now,
		Logger: h.Logger().With("socket", Key),
	})
	f.files = &fileWriters{f: f}
	return f, nil
}

// Feature is the built feature: the Workload API server, nil when
// disabled.
type Feature struct {
	host  feature.RunHost
	srv   *workloadapi.Server
	files *fileWriters // [[svid_file]], nil when disabled
}

var (
	_ feature.Listener = (*Feature)(nil)
	_ feature.Worker   = (*Feature)(nil)
	_ feature.Counters = (*Feature)(nil)
	_ feature.Gauges   = (*Feature)(nil)
	_ feature.Status   = (*Feature)(nil)
	_ feature.Reloader = (*Feature)(nil)
)

// ListenConfig implements feature.Listener.
func (f *Feature) ListenConfig() (unixsock.Config, bool, error) {
	if f.srv == nil {
		return unixsock.Config{}, false, nil
	}
	sc, err := From(f.host.Config()).Socket.UnixSock(Key, 0o750)
	return sc, err == nil, err
}

// Serve implements feature.Listener.
func (f *Feature) Serve(l *unixsock.Listener) error { return f.srv.Serve(l) }

// Start implements feature.Worker: the renewals start with Serve; the
// [[svid_file]] writers start here.
func (f *Feature) Start() {
	if f.files != nil {
		f.files.start()
	}
}

// Stop implements feature.Worker: it stops the [[svid_file]] writers
// (their files stay), then ends the Workload API's streams and renewals,
// and with them Serve.
func (f *Feature) Stop() {
	if f.files != nil {
		f.files.stop()
	}
	if f.srv != nil {
		f.srv.Stop()
	}
}

// route is the guest API route whose policy a Workload API call of kind
// k shares.
func route(k workloadapi.Kind) string { return "/v1/svids/" + string(k) }

// identify is the Workload API's policy decision, made by the core: the
// rule that lets the caller POST the SVID route of kind k names its
// workload (svid_name; none: the machine's own ID).
func (f *Feature) identify(ctx context.Context, p unixsock.Peer, k workloadapi.Kind) (string, bool) {
	d, ok := f.host.Authorize(ctx, p, Key, http.MethodPost, route(k))
	if !ok {
		return "", false
	}
	return d.SVIDName, true
}

func (f *Feature) stats() workloadapi.Stats {
	if f.srv == nil {
		return workloadapi.Stats{}
	}
	return f.srv.Stats()
}

// Counters implements feature.Counters. Their status keys are the
// Workload API's (svids_issued, svid_rotations, svid_failures).
func (f *Feature) Counters() metrics.CounterSet {
	return metrics.CounterSet{
		{Key: "svids_issued", Name: "wicket_svids_issued_total", Help: "SVIDs (X.509 and JWT) obtained from the issuer.", Value: func() uint64 { return f.stats().Issued }},
		{Key: "svid_rotations", Name: "wicket_svid_rotations_total", Help: "X.509-SVIDs renewed before their end.", Value: func() uint64 { return f.stats().Rotations }},
		{Key: "svid_failures", Name: "wicket_svid_failures_total", Help: "Failed SVID or bundle fetches.", Value: func() uint64 { return f.stats().Failures }},
	}
}

// Gauges implements feature.Gauges: the seconds to the soonest cached
// X.509-SVID's end, when there is one, and each [[svid_file]]'s series.
func (f *Feature) Gauges() []metrics.Sample {
	var out []metrics.Sample
	if f.files != nil {
		out = f.files.samples(f.host.Now())
	}
	st := f.stats()
	if st.SoonestExpiry.IsZero() {
		return out
	}
	return append(out, metrics.Sample{Name: "wicket_svid_seconds_to_expiry", Help: "Seconds until the soonest cached X.509-SVID expires.",
		Type: metrics.Gauge, Value: st.SoonestExpiry.Sub(f.host.Now()).Seconds()})
}

// Status implements feature.Status: under "spiffe", whether the Workload
// API is served, the cached X.509-SVIDs, the soonest expiry and the
// federated trust domains held, never a key or a certificate.
func (f *Feature) Status() map[string]any {
	if f.srv == nil {
		return map[string]any{"spiffe": map[string]any{"enabled": false}}
	}
	st := f.srv.Stats()
	out := map[string]any{"enabled": true, "x509_svids_cached": st.X509SVIDs}
	if !st.SoonestExpiry.IsZero() {
		out["soonest_x509_expiry"] = st.SoonestExpiry.UTC().Format(time.RFC3339)
	}
	if len(st.Federated) > 0 {
		out["federated_trust_domains"] = st.Federated
	}
	return map[string]any{"spiffe": out}
}

// issuer asks the issuer for SVIDs (workloadapi.Issuer).
type issuer struct{ h feature.RunHost }

func (s issuer) do(ctx context.Context, method, path string, body any, ttl time.Duration, scope machinetoken.Scope, out any) error {
	var b []byte
	if body != nil {
		b, _ = json.Marshal(body)
	}
	rep, err := s.h.Issuer().Call(ctx, method, path, nil, b, ttl, scope)
	if err != nil {
		s.h.UpstreamError()
		return err
	}
	if rep.Status != http.StatusOK {
		s.h.UpstreamError()
		return errors.New("issuer answered " + strconv.Itoa(rep.Status) + " " + rep.Code())
	}
	if err := json.Unmarshal(rep.Body, out); err != nil {
		s.h.UpstreamError()
		return fmt.Errorf("issuer reply: %w", err)
	}
	return nil
}

// Scope is the copy of the machine token an SVID request for id carries:
// the svid feature, the one kind of SVID (an X.509-SVID without aud, a
// JWT-SVID with) and that one ID, and a JWT-SVID's audiences. Captured,
// an X.509 copy buys no JWT-SVID and a JWT copy no X.509-SVID.
func Scope(id string, aud []string) machinetoken.Scope {
	kind := machinetoken.SVIDX509
	if aud != nil {
		kind = machinetoken.SVIDJWT
	}
	return machinetoken.Scope{Features: []machinetoken.Feature{machinetoken.FeatureSVID},
		SVIDKinds: []machinetoken.SVIDKind{kind}, SPIFFEIDs: []string{id}, Audiences: aud}
}

// BundleScope is the copy the bundle read carries: the svid feature and
// the bundle kind only. It names no SPIFFE ID (it reads the machine's
// own), so captured it must buy no SVID at all: the kind binds it.
func BundleScope() machinetoken.Scope {
	return machinetoken.Scope{Features: []machinetoken.Feature{machinetoken.FeatureSVID},
		SVIDKinds: []machinetoken.SVIDKind{machinetoken.SVIDBundle}}
}

func (s issuer) Bundle(ctx context.Context) (*api.SVIDBundleReply, error) {
	var out api.SVIDBundleReply
	return &out, s.do(ctx, http.MethodGet, "/v1/svids/bundle", nil, feature.CopyTTL, BundleScope(), &out)
}

func (s issuer) X509(ctx context.Context, id string, csr []byte) (*api.X509SVIDReply, error) {
	var out api.X509SVIDReply
	ttl := From(s.h.Config()).X509CopyTTL.Duration
	return &out, s.do(ctx, http.MethodPost, "/v1/svids/x509", api.X509SVIDRequest{CSR: csr}, ttl, Scope(id, nil), &out)
}

func (s issuer) JWT(ctx context.Context, id string, aud []string) (*api.JWTSVIDReply, error) {
	var out api.JWTSVIDReply
	ttl := From(s.h.Config()).JWTCopyTTL.Duration
	return &out, s.do(ctx, http.MethodPost, "/v1/svids/jwt", api.JWTSVIDRequest{SPIFFEID: id, Audience: aud}, ttl, Scope(id, aud), &out)
}
