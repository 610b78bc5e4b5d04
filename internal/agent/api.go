package agent

import (
	"encoding/json"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/agent/feature"
	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/fastlane"
	"github.com/wicket-sh/wicket/internal/httpapi"
	"github.com/wicket-sh/wicket/internal/peer"
	"github.com/wicket-sh/wicket/internal/unixsock"
)

// apiHandler is the guest API. Every request passes, in order: path
// canonicalization, peer policy, body limits, then routing (built-in
// endpoints first, the features' routes, then the feature that serves
// what no route matched: the proxy allowlist, feature.Fallback). The policy needs only the
// method, path and peer, so it comes before the body is read: a caller it
// refuses never makes the agent buffer anything. The Host header is
// ignored: the socket is the address.
func (a *Agent) apiHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/health", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(api.HealthReply{Status: api.HealthOK})
	})
	for _, b := range a.built {
		if r, ok := b.inst.(feature.Routes); ok {
			r.Routes(mux)
		}
	}

	guard := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, ok := unixsock.PeerFromContext(r.Context())
		if !httpapi.CanonicalPath(r.URL.Path) || httpapi.EncodedSeparator(r) {
			// Refused before the policy, so possibly to a caller it would
			// deny: it keeps no connection either.
			unixsock.CloseAfterReply(w)
			httpapi.BadRequest(w)
			return
		}
		rt := a.rt.Load()
		var d peer.Decision
		if ok {
			d = decide(r.Context(), rt.policy, p, r.Method, r.URL.Path)
		}
		if !d.Allowed {
			a.deny(w, r, p, ok, d)
			return
		}
		if !unixsock.ReadBody(w, r, a.bodyLimits(), httpapi.WriteBodyError) {
			return
		}
		// One lookup: a route without wildcards is served by its handler
		// directly; one with them through the mux itself, as only
		// ServeMux.ServeHTTP fills in the request's path values.
		if h, pattern := httpapi.MuxHandler(mux, r); pattern != "" {
			if strings.IndexByte(pattern, '{') < 0 {
				h.ServeHTTP(w, r)
			} else {
				mux.ServeHTTP(w, r)
			}
			return
		}
		if reservedPath(r.URL.Path) {
			// The guest API's own paths never reach the proxy.
			if allow := httpapi.AllowedMethods(mux, r, http.MethodGet, http.MethodPost); allow != "" {
				httpapi.MethodNotAllowed(w, allow)
				return
			}
			httpapi.NotFound(w)
			return
		}
		if a.fallback != nil {
			a.fallback.ServeFallback(w, r)
			return
		}
		httpapi.NotFound(w)
	})
	return guard
}

// fastLane puts the features' FastRoutes in front of srv, the guest API's
// server. The lane runs the guard's checks that apply to its requests
// (their paths are exact and canonical, their bodies within its buffer):
// the body limit and the policy, through the connection's memo as the
// guard's. Whatever it declines, a denial included, takes srv and the
// guard, which refuse, count and log it as they always do.
func (a *Agent) fastLane(srv *http.Server) *fastlane.Server {
	routes, paths := a.fastRoutes()
	return &fastlane.Server{
		Paths:    paths,
		Fallback: srv,
		Logger:   a.log,
		Handler: func(c *fastlane.Conn, r *fastlane.Request) (fastlane.Reply, bool) {
			uc, ok := unixsock.ConnOf(c.NetConn())
			if !ok {
				return fastlane.Reply{}, false
			}
			memo, _ := c.State.(*policyMemo)
			if memo == nil {
				memo = &policyMemo{}
				c.State = memo
			}
			return a.serveFast(routes, memo, uc.Peer(), r)
		},
	}
}

// fastRoutes are the features' FastRoutes and their paths.
func (a *Agent) fastRoutes() (routes []feature.FastRoute, paths []string) {
	for _, b := range a.built {
		fr, ok := b.inst.(feature.FastRoutes)
		if !ok {
			continue
		}
		for _, r := range fr.FastRoutes() {
			routes = append(routes, r)
			if !slices.Contains(paths, r.Path) {
				paths = append(paths, r.Path)
			}
		}
	}
	return routes, paths
}

// serveFast is the lane's handler for p's request r on a connection whose
// policy memo is memo.
func (a *Agent) serveFast(routes []feature.FastRoute, memo *policyMemo, p unixsock.Peer, r *fastlane.Request) (fastlane.Reply, bool) {
	rt := a.rt.Load()
	if max := rt.cfg.Limits.MaxBodyBytes; max > 0 && int64(len(r.Body)) > max {
		return fastlane.Reply{}, false
	}
	if !memo.decide(rt.policy, p, r.Method, r.Path).Allowed {
		return fastlane.Reply{}, false
	}
	for i := range routes {
		if routes[i].Method == r.Method && routes[i].Path == r.Path {
			return routes[i].Serve(p, r)
		}
	}
	return fastlane.Reply{}, false
}

// deny answers 403 and closes the connection, so a refused caller holds no
// slot, and logs the denial through the per-uid summary (a denied loop
// cannot flood the log).
func (a *Agent) deny(w http.ResponseWriter, r *http.Request, p unixsock.Peer, havePeer bool, d peer.Decision) {
	a.denied.Add(1)
	reason := denyReason(havePeer, d)
	// The path is caller input: log it quoted by slog, cut short.
	a.denials.Deny(r.Context(), p, reason, denyArgs(p, reason, d,
		"method", r.Method, "route", httpapi.Truncate(r.URL.Path, httpapi.MaxLoggedPath))...)
	unixsock.CloseAfterReply(w)
	httpapi.Forbidden(w)
}

// denyReason is a refusal's reason in the log and the denial summary.
func denyReason(havePeer bool, d peer.Decision) string {
	switch {
	case !havePeer:
		return "no_peer"
	case d.ExeErr != nil:
		return "exe_unavailable"
	}
	return "policy"
}

// denyArgs are a refusal's log fields: the peer, what was asked (where),
// the outcome and, for a rule naming exes, the executable and why it could
// not be checked.
func denyArgs(p unixsock.Peer, reason string, d peer.Decision, where ...any) []any {
	args := append([]any{"peer_uid", p.UID, "peer_gid", p.GID, "peer_pid", p.PID}, where...)
	args = append(args, "outcome", "denied", "reason", reason)
	if d.Exe != "" {
		args = append(args, "peer_exe", d.Exe)
	}
	if d.ExeErr != nil {
		// A rule naming exes could not be checked: say why, so an
		// operator on an old kernel learns rules with exes fail closed.
		args = append(args, "exe_error", d.ExeErr.Error())
	}
	return args
}

func reservedPath(p string) bool {
	for _, prefix := range config.AgentReservedPaths {
		if p == prefix || strings.HasPrefix(p, prefix+"/") {
			return true
		}
	}
	return false
}

// rateLimited applies the per-uid token bucket; when it refuses, it answers
// 429 with Retry-After and returns true.
func (a *Agent) rateLimited(w http.ResponseWriter, rt *runtime, p unixsock.Peer) bool {
	ok, wait := a.limiter.Allow(p.UID, rt.cfg.Limits.TokenRate, rt.cfg.Limits.TokenBurst, a.now())
	if ok {
		return false
	}
	a.rateLimitedN.Add(1)
	w.Header().Set("Retry-After", strconv.Itoa(retryAfterSeconds(wait)))
	httpapi.Write(w, http.StatusTooManyRequests, api.CodeRateLimited, "rate limited")
	return true
}

// issuerGateway reports whether upstream is the issuer's gateway: the
// issuer URL itself (same scheme, host and port, and path), which is what
// a route without its own upstream uses. Anything else, the issuer's host
// under another path included, is an external upstream.
func issuerGateway(upstream, issuer *url.URL) bool {
	if upstream == nil || issuer == nil {
		return false
	}
	return strings.EqualFold(upstream.Scheme, issuer.Scheme) &&
		strings.EqualFold(hostPort(upstream), hostPort(issuer)) &&
		strings.TrimRight(upstream.Path, "/") == strings.TrimRight(issuer.Path, "/")
}

// hostPort returns u's host with the scheme's default port made explicit.
func hostPort(u *url.URL) string {
	if u.Port() != "" {
		return u.Host
	}
	port := "80"
	if strings.EqualFold(u.Scheme, "https") {
		port = "443"
	}
	return net.JoinHostPort(u.Hostname(), port)
}
