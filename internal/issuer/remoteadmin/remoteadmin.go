// Package remoteadmin is the issuer's remote admin API's front door: the
// HTTP(S) handler host orchestrators call with an admin token. It decides,
// for every request and in this order, before any handler runs: the path
// is canonical; the admin token authenticates (signature, window,
// revocation, source address: 401 otherwise, the reason only in the log);
// the token's rate bucket has room (429 with Retry-After); the route
// exists (404/405); the body fits (413/408). Each request then gets one
// audit line naming the admin token id, the caller's address and the
// outcome, never the token.
//
// What a request may do once in is the handlers' business: they get the
// verified token with Caller and ask it (admintoken.Verified.Allow). The
// issuer registers the same machine handlers here as on its admin socket.
package remoteadmin

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/admintoken"
	"github.com/wicket-sh/wicket/internal/httpapi"
	"github.com/wicket-sh/wicket/internal/ratelimit"
	"github.com/wicket-sh/wicket/internal/unixsock"
)

// Limits are the per-request limits, read on every request so that a
// reload applies at once.
type Limits struct {
	Rate  float64 // requests per second per admin token id
	Burst int
	Body  unixsock.BodyLimits
}

// Config configures a Server.
type Config struct {
	// Verify authenticates an admin token used from remote (required).
	Verify func(token string, remote netip.Addr) (*admintoken.Verified, error)
	// Limits returns the current limits (required).
	Limits func() Limits
	Logger *slog.Logger
	// Now is the rate limiter's clock; nil is time.Now.
	Now func() time.Time
}

// Server is the remote admin API handler.
type Server struct {
	cfg     Config
	mux     *http.ServeMux
	limiter *ratelimit.Limiter[string]

	requests, unauthorized, rateLimited atomic.Uint64
}

// New returns a Server with no routes; add them with Handle.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Server{cfg: cfg, mux: http.NewServeMux(), limiter: ratelimit.New[string]()}
}

// Handle registers a route. Its handler runs only for an authenticated,
// rate-limited request whose body has been read within the limits.
func (s *Server) Handle(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

type callerKey struct{}

type caller struct {
	tok *admintoken.Verified
	log *slog.Logger
}

// Caller returns the request's verified admin token and its audit logger
// (with the token id and the caller's address). ok is false for a request
// that did not come through a Server: handlers refuse it.
func Caller(ctx context.Context) (tok *admintoken.Verified, log *slog.Logger, ok bool) {
	c, ok := ctx.Value(callerKey{}).(*caller)
	if !ok || c.tok == nil {
		return nil, nil, false
	}
	return c.tok, c.log, true
}

// Stats are the server's counters.
type Stats struct {
	Requests, Unauthorized, RateLimited uint64
}

// Stats returns the counters.
func (s *Server) Stats() Stats {
	return Stats{Requests: s.requests.Load(), Unauthorized: s.unauthorized.Load(), RateLimited: s.rateLimited.Load()}
}

// ServeHTTP checks, audits and dispatches one request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	s.requests.Add(1)
	remote := remoteAddr(r)
	sw := httpapi.NewStatusWriter(w)
	// The request path is logged cut short: it is caller input.
	logger := s.cfg.Logger.With("command", r.Method+" "+httpapi.Truncate(r.URL.Path, httpapi.MaxLoggedPath))
	outcome, tokenID, reason := "ok", "", ""
	defer func() {
		args := []any{"remote", remote.String(), "admin_token_id", tokenID, "outcome", outcome, "status", sw.Status, "duration_ms", time.Since(start).Milliseconds()}
		if reason != "" {
			args = append(args, "reason", reason)
		}
		if outcome == "ok" || outcome == "error" {
			logger.Info("remote admin request", args...)
			return
		}
		logger.Warn("remote admin request", args...)
	}()

	// An encoded "/" is allowed: a machine may be named org%2Fapp%2Fname,
	// as on the admin socket; nothing here forwards paths.
	if !httpapi.CanonicalPath(r.URL.Path) {
		outcome = "bad_path"
		httpapi.BadRequest(sw)
		return
	}
	tok, err := admintokenFrom(r)
	var v *admintoken.Verified
	if err == nil {
		v, err = s.cfg.Verify(tok, remote)
	}
	if err != nil {
		s.unauthorized.Add(1)
		outcome, reason = "denied_token", err.Error()
		unixsock.CloseAfterReply(sw)
		httpapi.Write(sw, http.StatusUnauthorized, api.CodeUnauthorized, "unauthorized")
		return
	}
	tokenID = v.TokenID
	lim := s.cfg.Limits()
	if ok, wait := s.limiter.Allow(v.TokenID, lim.Rate, lim.Burst, s.cfg.Now()); !ok {
		s.rateLimited.Add(1)
		outcome = "rate_limited"
		sw.Header().Set("Retry-After", strconv.Itoa(ratelimit.RetryAfterSeconds(wait)))
		unixsock.CloseAfterReply(sw)
		httpapi.Write(sw, http.StatusTooManyRequests, api.CodeRateLimited, "rate limited")
		return
	}
	if httpapi.MuxPattern(s.mux, r) == "" {
		outcome = "unknown_command"
		if allow := httpapi.AllowedMethods(s.mux, r, http.MethodGet, http.MethodPost, http.MethodPatch, http.MethodDelete); allow != "" {
			httpapi.MethodNotAllowed(sw, allow)
			return
		}
		httpapi.NotFound(sw)
		return
	}
	if !unixsock.ReadBody(sw, r, lim.Body, httpapi.WriteBodyError) {
		outcome = "bad_body"
		return
	}
	// Handlers' lines name the token too; WriteError adds the address.
	hlog := logger.With("admin_token_id", v.TokenID)
	r = r.WithContext(context.WithValue(r.Context(), callerKey{}, &caller{tok: v, log: hlog}))
	s.mux.ServeHTTP(sw, r)
	if sw.Status >= 400 {
		outcome = "error"
	}
}

var errNoToken = errors.New("no or malformed Authorization header")

func admintokenFrom(r *http.Request) (string, error) {
	h := r.Header.Values("Authorization")
	if len(h) != 1 {
		return "", errNoToken
	}
	return admintoken.ParseHeader(h[0])
}

func remoteAddr(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// TLSConfig returns the listener's TLS configuration: TLS 1.2 at least,
// and, when clientCA names a PEM bundle, a client certificate it verifies
// required of every caller.
func TLSConfig(certFile, keyFile, clientCA string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("remote admin certificate: %w", err)
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	if clientCA != "" {
		pem, err := os.ReadFile(clientCA)
		if err != nil {
			return nil, fmt.Errorf("remote admin client CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, errors.New("remote admin client CA: no certificate in the file")
		}
		c.ClientCAs, c.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return c, nil
}
