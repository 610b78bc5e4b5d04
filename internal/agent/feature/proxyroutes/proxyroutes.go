// Package proxyroutes is the proxy feature: the [proxy] section's
// allowlisted routes (anchored templates with {self} and {app}, see
// package proxy) and the forwarding of a request that matches one to its
// upstream, with an explicit header allowlist and a copy of the machine
// token attenuated to the route's features.
//
// What keeps a forwarded request safe is not decided here: the core's
// guard has decided the peer policy (from method, path and peer, before
// any body byte is read) before the feature sees the request, the per-uid
// rate limit is the core's (feature.RunHost.RateLimited), and the copy of
// the machine token comes from the core (feature.RunHost.UpstreamToken),
// which marks it external for any upstream other than the issuer's
// gateway. The forwarder refuses a reply that reflects the machine token
// (feature.RunHost.ContainsMachineToken).
package proxyroutes

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/agent/feature"
	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/httpapi"
	"github.com/wicket-sh/wicket/internal/metrics"
	"github.com/wicket-sh/wicket/internal/proxy"
	"github.com/wicket-sh/wicket/internal/unixsock"
)

// Key is the section's TOML key.
const Key = "proxy"

// Settings is the [proxy] section (dynamic): the routes forwarded
// upstream.
type Settings struct {
	Routes []Route `toml:"route"`

	table *proxy.Table // compiled by Validate
}

// Route is one [[proxy.route]].
type Route struct {
	// Match is "METHOD /path" with optional {self} and {app} segments and
	// an optional trailing "/*"; see package proxy.
	Match string `toml:"match"`
	// Upstream is the base URL; "" means issuer.url (its gateway).
	Upstream string          `toml:"upstream"`
	Timeout  config.Duration `toml:"timeout"`
	// Features of the attenuated machine token sent; default ["proxy"].
	Features []string `toml:"features"`
	// ForwardHeaders are the caller's request headers forwarded; unset
	// means proxy.DefaultForwardHeaders, [] means none. Naming a header
	// that is never forwarded (proxy.NeverForwarded) is an error.
	ForwardHeaders []string `toml:"forward_headers"`
}

// Module is the feature.
type Module struct{}

// Key implements config.Section.
func (Module) Key() string { return Key }

// New implements config.Section: no routes.
func (Module) New() any { return &Settings{} }

// Validate implements config.Section: it compiles the routes, none of
// which may lie under the guest API's own paths
// (config.AgentReservedPaths).
func (Module) Validate(v any, c *config.Agent) []error {
	s := v.(*Settings)
	var errs []error
	routes := make([]proxy.RouteConfig, len(s.Routes))
	for i, r := range s.Routes {
		routes[i] = proxy.RouteConfig{Match: r.Match, Upstream: r.Upstream, Timeout: r.Timeout.Duration, Features: r.Features, Headers: r.ForwardHeaders}
		if r.Upstream == "" && c.Issuer.URL == "" {
			errs = append(errs, fmt.Errorf("proxy.route[%d]: no upstream and no issuer.url to default to", i))
		}
	}
	t, err := proxy.Compile(routes, config.AgentReservedPaths)
	if err != nil {
		errs = append(errs, fmt.Errorf("proxy.%w", err))
	}
	s.table = t
	return errs
}

// From returns the [proxy] section of c (no routes when the feature is
// not registered).
func From(c *config.Agent) *Settings {
	if s, ok := c.Section(Key).(*Settings); ok {
		return s
	}
	return Module{}.New().(*Settings)
}

// Table returns the validated routes (never nil; empty before a
// successful Validate).
func (s *Settings) Table() *proxy.Table {
	if s.table == nil {
		return &proxy.Table{}
	}
	return s.table
}

// Build implements feature.Runtime.
func (Module) Build(h feature.RunHost) (feature.Instance, error) {
	return &Feature{
		host: h,
		log:  h.Logger(),
		fwd:  proxy.NewForwarder(proxy.Options{ContainsSecret: h.ContainsMachineToken}),
	}, nil
}

// Feature is the built feature: the forwarder and its counts.
type Feature struct {
	host feature.RunHost
	log  *slog.Logger
	fwd  *proxy.Forwarder

	proxied, proxyErrors atomic.Uint64
}

var (
	_ feature.Fallback = (*Feature)(nil)
	_ feature.Counters = (*Feature)(nil)
)

// Counters implements feature.Counters.
func (f *Feature) Counters() metrics.CounterSet {
	return metrics.CounterSet{
		{Key: "proxied", Name: "wicket_proxy_requests_total", Help: "Requests forwarded upstream.", Value: f.proxied.Load},
		{Key: "proxy_errors", Name: "wicket_proxy_errors_total", Help: "Forwarded requests that failed upstream.", Value: f.proxyErrors.Load},
	}
}

// ServeFallback implements feature.Fallback: it forwards a request that
// matches an allowlisted route; any other request gets 404 without a byte
// going upstream.
func (f *Feature) ServeFallback(w http.ResponseWriter, r *http.Request) {
	p, _ := unixsock.PeerFromContext(r.Context())
	routes := From(f.host.Config()).Table()
	vars, known := f.host.RouteVars()
	route, ok := routes.Lookup(r.Method, r.URL.Path, vars)
	if !ok {
		if !known && routes.UsesVars() {
			// {self} and {app} are unknown until the first metadata
			// fetch: the caller should retry, not conclude "no route".
			httpapi.Write(w, http.StatusServiceUnavailable, api.CodeUpstreamUnavailable, "upstream unavailable")
			return
		}
		httpapi.NotFound(w)
		return
	}
	if f.host.RateLimited(w, p) {
		f.log.Warn("proxy request", "peer_uid", p.UID, "peer_gid", p.GID, "peer_pid", p.PID,
			"route", route.Name(), "outcome", "rate_limited")
		return
	}
	base := route.Upstream()
	if base == nil {
		base = f.host.IssuerURL()
	}
	if base == nil {
		httpapi.Write(w, http.StatusServiceUnavailable, api.CodeUpstreamUnavailable, "upstream unavailable")
		return
	}
	tok, err := f.host.UpstreamToken(base, route.Features())
	if errors.Is(err, feature.ErrNoMachineToken) {
		httpapi.Write(w, http.StatusServiceUnavailable, api.CodeUpstreamUnavailable, "upstream unavailable")
		return
	}
	if err != nil {
		httpapi.WriteError(w, r, f.log, httpapi.InternalError(err))
		return
	}
	start := time.Now()
	res := f.fwd.Forward(w, r, route, base, api.AuthScheme+" "+tok)
	f.proxied.Add(1)
	args := []any{"peer_uid", p.UID, "peer_gid", p.GID, "peer_pid", p.PID, "method", r.Method,
		"route", route.Name(), "upstream", base.Host, "status", res.Status, "outcome", string(res.Outcome),
		"duration_ms", time.Since(start).Milliseconds()}
	if res.Err != nil {
		args = append(args, "err", res.Err.Error())
	}
	if res.Outcome != proxy.OutcomeOK && res.Outcome != proxy.OutcomeCanceled && res.Outcome != proxy.OutcomeBadRequest {
		f.host.UpstreamError()
		f.proxyErrors.Add(1)
		f.log.Warn("proxy request", args...)
		return
	}
	f.log.Info("proxy request", args...)
}
