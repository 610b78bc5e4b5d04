package httpapi

import (
	"errors"
	"log/slog"
	"net/http"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/unixsock"
)

// Error is a handler's failure: what the caller is told (Status, Code,
// Message, all program constants) and, apart from it, why (Cause, for the
// log only). Return one to WriteError rather than writing a reply and a
// log line by hand: the caller then cannot be sent the cause, whatever it
// contains.
type Error struct {
	Status  int    // HTTP status
	Code    string // one of the api.Code constants
	Message string // generic, never derived from the request
	Cause   error  // logged with the peer; never sent
}

// Error returns the generic message and the cause, for logs and tests.
func (e *Error) Error() string {
	if e.Cause == nil {
		return e.Message
	}
	return e.Message + ": " + e.Cause.Error()
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Cause }

// NewError returns an Error; code is one of the api.Code constants and
// msg a constant.
func NewError(status int, code, msg string, cause error) *Error {
	return &Error{Status: status, Code: code, Message: msg, Cause: cause}
}

// BadRequestError is a 400 bad_request.
func BadRequestError(cause error) *Error {
	return NewError(http.StatusBadRequest, api.CodeBadRequest, "bad request", cause)
}

// NotFoundError is a 404 not_found.
func NotFoundError(cause error) *Error {
	return NewError(http.StatusNotFound, api.CodeNotFound, "not found", cause)
}

// InternalError is a 500 internal_error.
func InternalError(cause error) *Error {
	return NewError(http.StatusInternalServerError, api.CodeInternal, "internal error", cause)
}

// UnavailableError is a 503 upstream_unavailable with msg ("service
// unavailable", "token unavailable"): retrying later may help.
func UnavailableError(msg string, cause error) *Error {
	return NewError(http.StatusServiceUnavailable, api.CodeUpstreamUnavailable, msg, cause)
}

// WriteError answers r with err's envelope and logs err's cause, if it has
// one, with the caller (the unixsock peer's uid, gid and pid, or the
// remote address), the method and the path cut short. An error that is
// not an *Error is a 500 whose text goes only to the log. 5xx causes are
// logged at error level, the caller's own mistakes at info.
func WriteError(w http.ResponseWriter, r *http.Request, logger *slog.Logger, err error) {
	var e *Error
	if !errors.As(err, &e) {
		e = InternalError(err)
	}
	if e.Cause != nil && logger != nil {
		level := slog.LevelInfo
		if e.Status >= 500 {
			level = slog.LevelError
		}
		attrs := []slog.Attr{slog.Int("status", e.Status), slog.String("code", e.Code)}
		if p, ok := unixsock.PeerFromContext(r.Context()); ok {
			attrs = append(attrs, slog.Any("peer", p))
		} else {
			attrs = append(attrs, slog.String("remote", r.RemoteAddr))
		}
		attrs = append(attrs, slog.String("method", r.Method), slog.String("path", Truncate(r.URL.Path, MaxLoggedPath)),
			slog.String("err", e.Cause.Error()))
		logger.LogAttrs(r.Context(), level, "request failed", attrs...)
	}
	Write(w, e.Status, e.Code, e.Message)
}

// HandlerFunc is a handler that returns its failure instead of writing it;
// see Handle.
type HandlerFunc func(w http.ResponseWriter, r *http.Request) error

// Handle adapts h: a non-nil error it returns is answered by WriteError
// with logger. h must not have written a reply when it returns one.
func Handle(logger *slog.Logger, h HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := h(w, r); err != nil {
			WriteError(w, r, logger, err)
		}
	})
}
