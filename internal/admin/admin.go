// Package admin serves a service's admin socket: health, status, reload and
// metrics for every wicket service, plus whatever commands the service
// registers (the issuer adds machine and key management). Every request is
// authorized by peer credentials and, when configured, an admin token, and
// every request is audited with the peer's uid, gid and pid (S-audit).
package admin

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/httpapi"
	"github.com/wicket-sh/wicket/internal/metrics"
	"github.com/wicket-sh/wicket/internal/peer"
	"github.com/wicket-sh/wicket/internal/unixsock"
)

// Auth is the admin socket's current access rule; a reload swaps it.
type Auth struct {
	Allow peer.Allowlist
	// Token, when non-empty, must also be presented as "Authorization: Bearer <token>".
	Token []byte
}

// Service is what the admin socket administers.
type Service interface {
	// Status returns the service's status document (JSON-encodable).
	Status() any
	// Reload re-reads and applies the configuration. The error is for the
	// log only; the caller gets a generic reply.
	Reload(ctx context.Context) (api.ReloadResult, error)
	// Metrics returns the service's metric samples.
	Metrics() []metrics.Sample
}

// Server is the admin HTTP handler.
type Server struct {
	svc     Service
	auth    func() Auth
	selfUID uint32
	log     *slog.Logger
	mux     *http.ServeMux

	// bodyLimits, when set (LimitBodies), caps request bodies; they are
	// read only after the caller is authorized.
	bodyLimits  func() unixsock.BodyLimits
	onBodyError func(http.ResponseWriter, *http.Request, error)

	denied  atomic.Uint64
	denials *unixsock.DenialLog
}

// New returns the admin handler for svc. auth is called on every request so
// reloads take effect at once.
func New(svc Service, auth func() Auth, selfUID uint32, logger *slog.Logger) *Server {
	s := &Server{svc: svc, auth: auth, selfUID: selfUID, log: logger, mux: http.NewServeMux(),
		// Denials are audited like every request, but summarized per uid
		// so a refused caller in a loop cannot flood the log.
		denials: unixsock.NewDenialLog(logger, unixsock.DenialLogConfig{
			Msg: "admin request", SummaryMsg: "admin denials suppressed", Level: slog.LevelInfo,
		}),
	}
	s.mux.HandleFunc("GET /v1/health", func(w http.ResponseWriter, r *http.Request) {
		WriteJSON(w, http.StatusOK, api.HealthReply{Status: api.HealthOK})
	})
	s.mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		WriteJSON(w, http.StatusOK, s.svc.Status())
	})
	s.mux.HandleFunc("POST /v1/reload", s.reload)
	s.mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		samples := append(s.svc.Metrics(), s.Counters().Samples()...)
		samples = append(samples, unixsock.DenialMetrics("admin", s.denials)...)
		metrics.Write(w, samples)
	})
	return s
}

// Handle registers a further admin command.
func (s *Server) Handle(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// Denied returns how many admin requests were refused.
func (s *Server) Denied() uint64 { return s.denied.Load() }

// StatusCounters is a service's status "counters": its own cs and the
// admin socket's. s may be nil (before the service runs): the admin
// counters are then 0.
func (s *Server) StatusCounters(cs metrics.CounterSet) map[string]uint64 {
	if s == nil {
		s = &Server{}
	}
	m := cs.Status()
	for k, v := range s.Counters().Status() {
		m[k] = v
	}
	return m
}

// Counters are the admin socket's own counters: /metrics serves them, and
// the service puts them in its status counters (Status merges them), so
// both come from this one list.
func (s *Server) Counters() metrics.CounterSet {
	return metrics.CounterSet{
		{Key: "admin_denied", Name: "wicket_admin_denied_total", Help: "Admin requests refused (peer or token).", Value: s.denied.Load},
	}
}

// LimitBodies caps request bodies (see unixsock.ReadBody); onError writes
// the reply when a body is refused. A body is read only once its caller is
// authorized. Call it before serving.
func (s *Server) LimitBodies(limits func() unixsock.BodyLimits, onError func(http.ResponseWriter, *http.Request, error)) {
	s.bodyLimits, s.onBodyError = limits, onError
}

// FlushDenials writes the pending per-uid denial summaries to the log; call
// it at shutdown. A nil Server is ignored.
func (s *Server) FlushDenials() {
	if s != nil {
		s.denials.Flush()
	}
}

func (s *Server) reload(w http.ResponseWriter, r *http.Request) {
	res, err := s.svc.Reload(r.Context())
	if err != nil {
		// The full reason (file path, parse error) is for the operator's
		// log; the client only learns that it failed.
		LogFrom(r.Context()).Error("reload failed", "err", err)
		httpapi.Write(w, http.StatusInternalServerError, api.CodeReloadFailed, "reload failed")
		return
	}
	if res.RestartRequired == nil {
		res.RestartRequired = []string{}
	}
	WriteJSON(w, http.StatusOK, res)
}

// ServeHTTP authorizes, audits and dispatches one admin request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	p, ok := unixsock.PeerFromContext(r.Context())
	lw := httpapi.NewStatusWriter(w)
	// The request path is logged quoted and cut short: it is caller input.
	logger := s.log.With("peer_uid", p.UID, "peer_gid", p.GID, "peer_pid", p.PID,
		"command", r.Method+" "+httpapi.Truncate(r.URL.Path, httpapi.MaxLoggedPath))
	r = r.WithContext(context.WithValue(r.Context(), logKey{}, logger))
	outcome := "ok"
	defer func() {
		args := []any{"outcome", outcome, "status", lw.Status, "duration_ms", time.Since(start).Milliseconds()}
		if strings.HasPrefix(outcome, "denied") {
			// Logged in full once per uid and interval, then counted.
			s.denials.Deny(r.Context(), p, strings.TrimPrefix(outcome, "denied_"), append([]any{"peer_uid", p.UID, "peer_gid", p.GID, "peer_pid", p.PID,
				"command", r.Method + " " + httpapi.Truncate(r.URL.Path, httpapi.MaxLoggedPath)}, args...)...)
			return
		}
		logger.Info("admin request", args...)
	}()

	auth := s.auth()
	switch {
	case !ok:
		// Not from a unixsock listener: no peer, no access.
		outcome = "denied_no_peer"
	case !auth.Allow.Allows(p, s.selfUID):
		outcome = "denied_peer"
	case len(auth.Token) > 0 && !tokenOK(r.Header.Get("Authorization"), auth.Token):
		outcome = "denied_token"
	}
	if outcome != "ok" {
		s.denied.Add(1)
		// A refused caller keeps no connection slot.
		unixsock.CloseAfterReply(lw)
		httpapi.Forbidden(lw)
		return
	}
	if !httpapi.CanonicalPath(r.URL.Path) {
		outcome = "bad_path"
		httpapi.BadRequest(lw)
		return
	}
	if httpapi.MuxPattern(s.mux, r) == "" {
		outcome = "unknown_command"
		if allow := httpapi.AllowedMethods(s.mux, r, http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete); allow != "" {
			httpapi.MethodNotAllowed(lw, allow)
			return
		}
		httpapi.NotFound(lw)
		return
	}
	if s.bodyLimits != nil && !unixsock.ReadBody(lw, r, s.bodyLimits(), s.onBodyError) {
		outcome = "bad_body"
		return
	}
	// Dispatch through the mux itself: only ServeMux.ServeHTTP fills in
	// the request's path values.
	s.mux.ServeHTTP(lw, r)
	if lw.Status >= 400 {
		outcome = "error"
	}
}

// tokenOK compares the presented bearer token with want in constant time
// (S-token). Hashing first makes the comparison independent of lengths too.
func tokenOK(header string, want []byte) bool {
	scheme, tok, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		tok = ""
	}
	a := sha256.Sum256([]byte(tok))
	b := sha256.Sum256(want)
	return subtle.ConstantTimeCompare(a[:], b[:]) == 1 && tok != ""
}

type logKey struct{}

// LogFrom returns the request's audit logger (with the peer's identity).
func LogFrom(ctx context.Context) *slog.Logger {
	if l, ok := ctx.Value(logKey{}).(*slog.Logger); ok {
		return l
	}
	return slog.Default()
}

// WriteJSON writes v as JSON with status.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// ReadJSON decodes a request body into v, refusing unknown fields and
// trailing data. Errors are for the log only.
func ReadJSON(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return io.ErrUnexpectedEOF
	}
	return nil
}
