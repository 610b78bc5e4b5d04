// Package feature is the contract between the agent's core and its
// feature modules. The core (internal/agent) keeps the sockets, HTTP
// limits, logging, policy, admin and reload; a feature owns one section of
// the config (config.Section: its TOML key, type, defaults and
// validation) and what it adds at run time through the optional
// interfaces below. Features are registered statically, in one list
// (internal/agent/builtin); nothing is loaded at run time.
//
// A feature's settings keep no state between reloads: each reload decodes
// every section into a fresh value, and the agent swaps the whole config,
// and with it every feature's value, in one atomic step. A feature with
// run-time parts (Runtime) is built once, when the agent is created, and
// reads its section from the live config (Host.Config) each time it uses
// it, so a reload takes effect without rebuilding it.
package feature

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"time"

	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/fastlane"
	"github.com/wicket-sh/wicket/internal/machinetoken"
	"github.com/wicket-sh/wicket/internal/metrics"
	"github.com/wicket-sh/wicket/internal/peer"
	"github.com/wicket-sh/wicket/internal/proxy"
	"github.com/wicket-sh/wicket/internal/unixsock"
)

// Module is one feature of the agent, named by Key. A feature with
// settings implements config.Section (its TOML key is Key); one without
// (metadata) owns no key of the file.
type Module interface {
	Key() string
}

// CopyTTL is how long the copy of the machine token sent with one
// request (a metadata call, a forwarded request) stays valid: a copy
// captured upstream is useless soon after. OIDC token requests use
// [tokens] ttl instead.
const CopyTTL = 60 * time.Second

// Host is what the running agent offers a feature.
type Host interface {
	// MachineID is the machine's id from the latest metadata, "" before
	// the first successful fetch.
	MachineID() string
}

// Runtime is implemented by a module with parts that run: Build is called
// once per agent, in registration order, when the agent is created, and
// the Instance it returns lives until the agent stops.
type Runtime interface {
	Build(h RunHost) (Instance, error)
}

// Instance is a built feature. What it adds to the agent is given by the
// optional interfaces it implements: Routes, Fallback, Listener, Worker,
// Counters, Gauges, Status, StatusSection, Starter, Reloader and what other features or the core
// consume (TokenSource, Metadata).
type Instance any

// RunHost is what the running agent's core offers a feature it builds:
// its clock, logger, live config, the issuer client, the per-uid rate
// limit and the shared upstream-error count.
type RunHost interface {
	Host
	// Config is the running config; read it on every use, never keep it.
	Config() *config.Agent
	// Now is the agent's clock (agent.Options.Now).
	Now() time.Time
	// Logger is the agent's logger.
	Logger() *slog.Logger
	// Context ends when the agent shuts down: the parent of a feature's
	// background work and upstream calls.
	Context() context.Context
	// Issuer is the issuer client, nil when issuer.url is not set.
	Issuer() Issuer
	// TokenSource is the instance that implements TokenSource (the OIDC
	// token feature's), nil when none does; call it on each use.
	TokenSource() TokenSource
	// RateLimited applies the caller's per-uid token bucket ([limits]
	// token_rate, token_burst); when it refuses, it has answered 429 with
	// Retry-After and returns true.
	RateLimited(w http.ResponseWriter, p unixsock.Peer) bool
	// TakeRate takes one token from the caller's bucket without
	// answering, for a FastRoute; false when none is left (the route then
	// declines, and its handler's RateLimited answers the refusal).
	// ReturnRate gives back a token TakeRate took, for a request the
	// route declines after all: either way the request costs one token.
	TakeRate(p unixsock.Peer) bool
	ReturnRate(p unixsock.Peer)
	// UpstreamError counts one failed call to the issuer or an upstream
	// (upstream_errors, shared by every feature).
	UpstreamError()
	// IssuerURL is the issuer's base URL, which is also its gateway's: the
	// upstream of a proxy route without its own; nil without an issuer.
	IssuerURL() *url.URL
	// UpstreamToken returns a copy of the machine token for one request
	// forwarded to upstream: valid for 60 s and narrowed to features. The
	// core, not the feature, decides whether upstream is the issuer's
	// gateway (same scheme, host, port and path as IssuerURL); for any
	// other upstream the copy carries the external caveat, which the
	// issuer refuses, so a copy that upstream leaks or reflects back buys
	// nothing. ErrNoMachineToken when the agent holds no machine token.
	UpstreamToken(upstream *url.URL, features []machinetoken.Feature) (string, error)
	// ContainsMachineToken reports whether b holds the machine token (or
	// its encoded body): the check a forwarder makes on what an upstream
	// sends back, so a reflected token never reaches a workload.
	ContainsMachineToken(b []byte) bool
	// RouteVars are the proxy routes' {self} (machine id) and {app} from
	// the latest metadata; known is false before the first successful
	// fetch.
	RouteVars() (vars proxy.Vars, known bool)
	// Authorize is the peer policy for a call a feature receives on a
	// socket of its own (Listener), where the guest API's guard does not
	// run: the core decides as its guard would for method and path (the
	// guest API route whose rules the call shares), and counts and logs a
	// refusal as the guard does (api_denied, the per-uid denial summary;
	// socket and call name where it came from). The feature refuses the
	// call when ok is false; when true, the decision says which rule
	// admitted the caller (its SVIDName).
	Authorize(ctx context.Context, p unixsock.Peer, socket, method, path string) (d peer.Decision, ok bool)
}

// ErrNoMachineToken is UpstreamToken's error in an agent that holds no
// machine token (no issuer configured).
var ErrNoMachineToken = errors.New("no machine token")

// Issuer calls the issuer's machine-authenticated API with a fresh copy
// of the machine token, valid for ttl and narrowed to scope. Errors carry
// the URL, never the token, and are for the log.
type Issuer interface {
	Call(ctx context.Context, method, path string, query url.Values, body []byte, ttl time.Duration, scope machinetoken.Scope) (*IssuerReply, error)
}

// IssuerReply is an issuer reply read in full (bounded).
type IssuerReply struct {
	Status int
	Header http.Header
	Body   []byte
}

// Code returns the stable code of an issuer error reply, for the log.
func (r *IssuerReply) Code() string {
	var e struct {
		Code string `json:"code"`
	}
	if json.Unmarshal(r.Body, &e) != nil || len(e.Code) > 64 {
		return ""
	}
	return e.Code
}

// Routes is implemented by an instance that serves guest API endpoints.
// The core's guard runs before every handler registered here: path
// canonicalization, the peer policy (decided from method, path and peer
// before any body byte is read), then the body limit; the handlers find
// the peer with unixsock.PeerFromContext and the buffered body with
// unixsock.BufferedBody. Patterns must lie under config.AgentReservedPaths
// so that no proxy route can shadow them.
type Routes interface {
	Routes(mux *http.ServeMux)
}

// FastRoutes is implemented by features with routes the guest API's fast
// lane serves (package fastlane): the lane parses a request of its strict
// form, the core's guard decides the policy as for Routes (a denial is
// declined, for the guard to refuse and log), and Serve answers from
// bytes built beforehand. A route that declines (ok false) must not have
// done anything yet: the request then takes the route's handler, which
// answers it as Serve would have, byte for byte but for Date (the tests
// hold both to it).
type FastRoutes interface {
	FastRoutes() []FastRoute
}

// FastRoute is one method and exact path of a Routes pattern, served by
// the fast lane when it can.
type FastRoute struct {
	Method, Path string
	Serve        func(p unixsock.Peer, r *fastlane.Request) (rep fastlane.Reply, ok bool)
}

// Fallback is implemented by the one instance that serves the guest API
// requests no route matched, outside config.AgentReservedPaths (the
// proxy). The core's guard has run as for Routes; without a Fallback such
// a request gets 404. An agent with two is refused at New.
type Fallback interface {
	ServeFallback(w http.ResponseWriter, r *http.Request)
}

// Listener is implemented by an instance that serves a Unix socket of its
// own beside the guest API (the SPIFFE Workload API). The core opens it
// with internal/unixsock under the same rules as its own sockets (S-sock:
// path, mode, group, connection caps, peer credentials), after the API and
// admin sockets and before Ready; an error fails Run. Once the workers
// have started it calls Serve in its own goroutine; at shutdown it stops
// the workers (Worker.Stop must make Serve return), then closes and
// removes the socket. The socket joins status and /metrics under its
// name. No guard runs on it: the feature applies the peer policy to every
// call through RunHost.Authorize.
type Listener interface {
	// ListenConfig is the socket to open; ok is false when the running
	// config serves none (the feature is disabled).
	ListenConfig() (cfg unixsock.Config, ok bool, err error)
	// Serve serves l until Stop; it returns nil then.
	Serve(l *unixsock.Listener) error
}

// Metadata is implemented by the metadata feature's instance: the core
// reads the machine id (Host.MachineID) and the proxy routes' {self} and
// {app} (RunHost.RouteVars) from it. ok is false before the first
// successful fetch.
type Metadata interface {
	Vars() (vars proxy.Vars, ok bool)
}

// Starter is implemented by an instance a workload started next to the
// agent should wait for (the first metadata fetch): the agent's
// WaitStarted waits for each.
type Starter interface {
	WaitStarted(ctx context.Context) error
}

// Gauges is implemented by an instance with samples outside the agent's
// counter list (values that go up and down, series per item such as a
// token file's): its samples join /metrics.
type Gauges interface {
	Gauges() []metrics.Sample
}

// Worker is implemented by an instance with background work: Start when
// the agent's sockets open, Stop (which waits for it) at shutdown, after
// the agent's context (Done) has ended.
type Worker interface {
	Start()
	Stop()
}

// Counters is implemented by an instance that counts: its counters join
// the agent's one list, shown in status and on /metrics.
type Counters interface {
	Counters() metrics.CounterSet
}

// Status is implemented by an instance that reports state: the fields are
// merged into the status document's "upstream" object. They never hold a
// secret.
type Status interface {
	Status() map[string]any
}

// StatusSection is implemented by an instance whose state has a key of
// its own in the status document (the token files' "token_files"); a key
// the core already writes is ignored. It never holds a secret.
type StatusSection interface {
	StatusSection() (key string, v any)
}

// Reloader is implemented by an instance that acts on a reload (the token
// files' refreshers follow the running config): Reloaded is called after
// a valid reload has swapped the new config in, with reloads serialized.
type Reloader interface {
	Reloaded()
}

// Token is one OIDC token as the OIDC token feature hands it out.
type Token struct {
	JWT     string
	ID      string // the jti, which logs carry instead of the token
	Expires time.Time
}

// TokenSource is implemented by the OIDC token feature's instance; other
// features (the token files' refreshers) get their tokens from it through
// RunHost.TokenSource, so every holder shares one cache and one issuer call per renewal.
type TokenSource interface {
	// Token returns a token for aud ("" the issuer's default audience)
	// and where it came from ("cache" or "issuer").
	Token(ctx context.Context, aud string) (Token, string, error)
	// FreshToken is Token for a holder that keeps the token past the
	// request (a token file): it prefers a renewal under way to a token
	// past the cache's refresh point. ttl > 0 asks for tokens of that
	// life (a token file's ttl), cached apart from the guest API's; 0
	// shares the guest API's tokens for aud.
	FreshToken(ctx context.Context, aud string, ttl time.Duration) (Token, string, error)
}

// Env is implemented by a feature that gives a workload started next to
// the agent environment variables (KEY=value pairs), from its section's
// value v in the running config c. They never hold a secret.
type Env interface {
	Env(v any, c *config.Agent, h Host) []string
}

// Sections returns the config sections of the modules that have one, in
// order.
func Sections(modules []Module) []config.Section {
	var out []config.Section
	for _, m := range modules {
		if s, ok := m.(config.Section); ok {
			out = append(out, s)
		}
	}
	return out
}
