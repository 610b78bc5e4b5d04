package httpapi

import (
	"errors"
	"net/http"
	"strconv"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/unixsock"
)

// Write sends {"error":msg,"code":code} (an api.ErrorReply) with status.
// code is one of the api.Code constants; msg must be a constant from the
// program, never derived from the request.
func Write(w http.ResponseWriter, status int, code, msg string) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	body := `{"error":` + strconv.Quote(msg) + `,"code":` + strconv.Quote(code) + "}\n"
	w.WriteHeader(status)
	w.Write([]byte(body))
}

// Common responses.
func NotFound(w http.ResponseWriter) { Write(w, http.StatusNotFound, api.CodeNotFound, "not found") }

// MethodNotAllowed answers 405 with the allowed methods.
func MethodNotAllowed(w http.ResponseWriter, allow string) {
	w.Header().Set("Allow", allow)
	Write(w, http.StatusMethodNotAllowed, api.CodeMethodNotAllowed, "method not allowed")
}

// Forbidden answers 403.
func Forbidden(w http.ResponseWriter) { Write(w, http.StatusForbidden, api.CodeForbidden, "forbidden") }

// BadRequest answers 400.
func BadRequest(w http.ResponseWriter) {
	Write(w, http.StatusBadRequest, api.CodeBadRequest, "bad request")
}

// Internal answers 500.
func Internal(w http.ResponseWriter) {
	Write(w, http.StatusInternalServerError, api.CodeInternal, "internal error")
}

// WriteBodyError answers a request whose body unixsock.ReadBody refused:
// 413 body_too_large, 408 request_timeout, or 400 for a body that could
// not be read. Pass it as ReadBody's onError.
func WriteBodyError(w http.ResponseWriter, _ *http.Request, err error) {
	switch {
	case errors.Is(err, unixsock.ErrBodyTooLarge):
		Write(w, http.StatusRequestEntityTooLarge, api.CodeBodyTooLarge, "request body too large")
	case errors.Is(err, unixsock.ErrBodyTimeout):
		Write(w, http.StatusRequestTimeout, api.CodeRequestTimeout, "request timeout")
	default:
		BadRequest(w)
	}
}
