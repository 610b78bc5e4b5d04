package agent

import (
	"errors"
	"net/http"

	"github.com/wicket-sh/wicket/internal/apierror"
	"github.com/wicket-sh/wicket/internal/unixsock"
)

// apiHandler is the guest API. Every request passes, in order: body limits,
// path canonicalization, peer policy, then routing. The Host header is
// ignored: the socket is the address.
func (a *Agent) apiHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/health", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte("{\"status\":\"ok\"}\n"))
	})
	guard := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, ok := unixsock.PeerFromContext(r.Context())
		if !apierror.CanonicalPath(r.URL.Path) {
			apierror.BadRequest(w)
			return
		}
		rule, allowed := "", false
		if ok {
			rule, allowed = a.rt.Load().policy.Allowed(p, r.Method, r.URL.Path)
		}
		if !allowed {
			a.denied.Add(1)
			// The path is caller input: log it quoted by slog, cut short.
			a.log.Warn("request denied", "peer_uid", p.UID, "peer_gid", p.GID, "peer_pid", p.PID,
				"method", r.Method, "route", truncate(r.URL.Path, 128), "outcome", "denied")
			apierror.Forbidden(w)
			return
		}
		_ = rule
		h, pattern := mux.Handler(r)
		if pattern == "" {
			apierror.NotFound(w)
			return
		}
		h.ServeHTTP(w, r)
	})
	return unixsock.LimitBody(a.bodyLimits, writeBodyError, guard)
}

func writeBodyError(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, unixsock.ErrBodyTooLarge):
		apierror.Write(w, http.StatusRequestEntityTooLarge, apierror.CodeBodyTooLarge, "request body too large")
	case errors.Is(err, unixsock.ErrBodyTimeout):
		apierror.Write(w, http.StatusRequestTimeout, apierror.CodeRequestTimeout, "request timeout")
	default:
		apierror.BadRequest(w)
	}
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
