package spiffe

import (
	"bytes"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"mime"
	"net/http"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/agent/feature"
	"github.com/wicket-sh/wicket/internal/agent/feature/spiffe/workloadapi"
	"github.com/wicket-sh/wicket/internal/httpapi"
	"github.com/wicket-sh/wicket/internal/unixsock"
)

// The guest HTTP API's SVID routes, for callers that would rather curl
// than speak gRPC: POST /v1/svids/x509 and POST /v1/svids/jwt. The core's
// guard has decided the policy for the route before the handler runs
// (the very routes the Workload API's calls are decided as), so a caller
// without identity got the 403 every denied route gets. The handler asks
// the policy once more for the admitting rule's svid_name (the guard's
// decision is not handed on: a request context per request would cost
// every route an allocation). Both answers come from the running policy;
// a reload between them means the handler's, the newer, decides: it may
// refuse, or admit under another rule with another svid_name, never more
// than the policy in force allows. The SVID comes from the Workload API's
// cache: both surfaces hand out the same SVID for an identity.

// Routes implements feature.Routes: nothing when the Workload API is not
// served ([spiffe] enabled = false, or no issuer), so the paths answer
// 404 as every guest API path no feature serves.
func (f *Feature) Routes(mux *http.ServeMux) {
	if f.srv == nil {
		return
	}
	log := f.host.Logger()
	mux.Handle("POST /v1/svids/x509", httpapi.Handle(log, f.handleX509))
	mux.Handle("POST /v1/svids/jwt", httpapi.Handle(log, f.handleJWT))
}

// workloadOf is the caller's workload name by the policy, for the route
// it called; ok false when the policy (reloaded meanwhile) refuses.
func (f *Feature) workloadOf(r *http.Request, p unixsock.Peer) (string, bool) {
	d, ok := f.host.Authorize(r.Context(), p, "api", r.Method, r.URL.Path)
	return d.SVIDName, ok
}

// body is the request body the core's guard buffered.
func body(r *http.Request) ([]byte, error) {
	if b, ok := unixsock.BufferedBody(r); ok {
		return b, nil
	}
	return io.ReadAll(r.Body)
}

// wantsPEM reports whether Accept names application/x-pem-file.
func wantsPEM(r *http.Request) bool {
	for _, v := range r.Header.Values("Accept") {
		for _, part := range strings.Split(v, ",") {
			if mt, _, err := mime.ParseMediaType(strings.TrimSpace(part)); err == nil && mt == api.PEMContentType {
				return true
			}
		}
	}
	return false
}

// svidError turns a cache error into the reply: 503 when the issuer is
// out of reach and nothing usable is cached. The cause (the SPIFFE ID
// and the issuer's answer, never a key) goes to the log only.
func svidError(err error) error {
	switch {
	case errors.Is(err, workloadapi.ErrBadAudience):
		return httpapi.BadRequestError(nil)
	case errors.Is(err, workloadapi.ErrUnavailable):
		return httpapi.UnavailableError("svid unavailable", err)
	}
	return httpapi.InternalError(err)
}

// PEM encodes ders as blocks of typ.
func appendPEM(b []byte, typ string, ders ...[]byte) []byte {
	for _, d := range ders {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: d})...)
	}
	return b
}

// audit logs the first hand-out of an SVID to a process over the guest
// API, as the Workload API logs its own (never the key or the token);
// repeats are not logged.
func (f *Feature) audit(p unixsock.Peer, kind string, id spiffeid.ID, extra ...any) {
	if !f.srv.FirstHandOut(p, "http", kind, id) {
		return
	}
	args := append([]any{"kind", kind, "spiffe_id", id.String(), "via", "http", "peer_uid", p.UID, "peer_gid", p.GID, "peer_pid", p.PID}, extra...)
	f.host.Logger().Info("svid served", args...)
}

// handleX509 answers the caller's X.509-SVID, its key and the bundle:
// JSON (api.X509SVIDGuestReply), or with Accept: application/x-pem-file
// the chain's CERTIFICATE blocks then the PRIVATE KEY block. The request
// has no body (an empty JSON object is accepted).
func (f *Feature) handleX509(w http.ResponseWriter, r *http.Request) error {
	p, _ := unixsock.PeerFromContext(r.Context())
	if f.host.RateLimited(w, p) {
		return nil
	}
	b, err := body(r)
	if err != nil {
		return httpapi.BadRequestError(nil)
	}
	if t := bytes.TrimSpace(b); len(t) > 0 && string(t) != "{}" {
		return httpapi.BadRequestError(nil)
	}
	name, ok := f.workloadOf(r, p)
	if !ok {
		unixsock.CloseAfterReply(w)
		return httpapi.NewError(http.StatusForbidden, api.CodeForbidden, "forbidden", nil)
	}
	svid, err := f.srv.X509SVIDFor(r.Context(), name)
	if err != nil {
		return svidError(err)
	}
	pemOut := wantsPEM(r)
	format := "json"
	if pemOut {
		format = "pem"
	}
	f.audit(p, "x509", svid.ID, "format", format, "expires_at", svid.ExpiresAt.UTC().Format(time.RFC3339))
	hdr := w.Header()
	httpapi.SetPrivateReply(hdr)
	if pemOut {
		hdr.Set("Content-Type", api.PEMContentType)
		out := appendPEM(nil, "CERTIFICATE", svid.Chain...)
		w.Write(appendPEM(out, "PRIVATE KEY", svid.Key))
		return nil
	}
	hdr.Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(api.X509SVIDGuestReply{
		SPIFFEID:    svid.ID.String(),
		X509SVID:    string(appendPEM(nil, "CERTIFICATE", svid.Chain...)),
		X509SVIDKey: string(appendPEM(nil, "PRIVATE KEY", svid.Key)),
		Bundle:      string(appendPEM(nil, "CERTIFICATE", svid.Bundle...)),
		ExpiresAt:   svid.ExpiresAt.UTC(),
	})
}

// handleJWT answers a JWT-SVID of the caller's identity for the
// audiences of the body (api.JWTSVIDGuestRequest, strict), with the
// Workload API's rules for them.
func (f *Feature) handleJWT(w http.ResponseWriter, r *http.Request) error {
	p, _ := unixsock.PeerFromContext(r.Context())
	if f.host.RateLimited(w, p) {
		return nil
	}
	b, err := body(r)
	if err != nil {
		return httpapi.BadRequestError(nil)
	}
	var req api.JWTSVIDGuestRequest
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if dec.Decode(&req) != nil || dec.More() {
		return httpapi.BadRequestError(nil)
	}
	if err := workloadapi.ValidAudience(req.Audience); err != nil {
		return httpapi.BadRequestError(nil)
	}
	name, ok := f.workloadOf(r, p)
	if !ok {
		unixsock.CloseAfterReply(w)
		return httpapi.NewError(http.StatusForbidden, api.CodeForbidden, "forbidden", nil)
	}
	sv, err := f.srv.JWTSVIDFor(r.Context(), name, req.Audience)
	if err != nil {
		return svidError(err)
	}
	f.audit(p, "jwt", sv.ID, "aud", strings.Join(req.Audience, ","), "expires_at", sv.ExpiresAt.UTC().Format(time.RFC3339))
	hdr := w.Header()
	httpapi.SetPrivateReply(hdr)
	hdr.Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(api.JWTSVIDReply{SPIFFEID: sv.ID.String(), Token: sv.Token, ExpiresAt: sv.ExpiresAt.UTC()})
}

var _ feature.Routes = (*Feature)(nil)
