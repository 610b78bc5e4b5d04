package issuer

import (
	"fmt"
	"net"
	"net/http"
	"slices"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/admin"
	"github.com/wicket-sh/wicket/internal/admintoken"
	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/httpapi"
	"github.com/wicket-sh/wicket/internal/issuer/remoteadmin"
	"github.com/wicket-sh/wicket/internal/metrics"
	"github.com/wicket-sh/wicket/internal/unixsock"
	"github.com/wicket-sh/wicket/internal/version"
)

// remoteAPI is the remote admin API (config [remote_admin]) while the
// issuer runs: host orchestrators manage their machines with admin tokens.
type remoteAPI struct {
	srv  *remoteadmin.Server
	http *http.Server
	ln   net.Listener
}

// remoteHandler returns the remote admin API's handler: the machine
// commands of the admin socket, run for the token's holder, and a status.
func (s *Issuer) remoteHandler() *remoteadmin.Server {
	srv := remoteadmin.New(remoteadmin.Config{
		Verify: s.verifyAdminToken,
		Limits: func() remoteadmin.Limits {
			ra := s.cfg().RemoteAdmin // read per request: a reload applies at once
			return remoteadmin.Limits{Rate: ra.Rate, Burst: ra.Burst,
				Body: unixsock.BodyLimits{MaxBytes: ra.MaxBodyBytes, Timeout: ra.BodyTimeout.Duration}}
		},
		Logger: s.log.With("api", "remote_admin"),
		Now:    s.now,
	})
	s.machineRoutes(srv.Handle, func(r *http.Request) (caller, error) {
		v, l, ok := remoteadmin.Caller(r.Context())
		if !ok {
			// Not through remoteadmin.Server: no token was checked.
			return nil, fmt.Errorf("%w: request without a verified admin token", admintoken.ErrInvalid)
		}
		return holder{v: v, l: l}, nil
	})
	srv.Handle("GET /v1/status", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		v, _, ok := remoteadmin.Caller(r.Context())
		if !ok {
			httpapi.WriteError(w, r, s.log, adminError(admintoken.ErrInvalid))
			return
		}
		ver, _ := version.Get()
		admin.WriteJSON(w, http.StatusOK, api.RemoteStatus{Service: "issuer", Version: ver, AdminTokenID: v.TokenID, Scope: scopeView(v.Scope())})
	}))
	return srv
}

// scopeView is a token's effective scope as the API shows it: exactly
// what it can do. A token whose machine-token cap is 0 mints none, so it
// can neither mint nor register (which mints): its cap shows as "0s" and
// its operations without machine.add and token.mint, never as no cap.
func scopeView(sc admintoken.Scope) api.AdminScope {
	out := api.AdminScope{Orgs: sc.Orgs, Apps: sc.Apps, Regions: sc.Regions, ExpiresAt: sc.NotAfter}
	ops := sc.Ops
	if sc.MintsNone {
		if ops == nil {
			ops = admintoken.Ops()
		}
		ops = slices.DeleteFunc(slices.Clone(ops), func(o admintoken.Op) bool {
			return o == admintoken.OpMachineAdd || o == admintoken.OpTokenMint
		})
	}
	if ops != nil {
		out.Ops = []string{}
		for _, o := range ops {
			out.Ops = append(out.Ops, string(o))
		}
	}
	switch {
	case sc.MintsNone:
		out.MaxMachineTTL = "0s"
	case sc.MaxMachineTTL > 0:
		out.MaxMachineTTL = sc.MaxMachineTTL.String()
	}
	for _, p := range sc.SourceAddrs {
		out.SourceAddrs = append(out.SourceAddrs, p.String())
	}
	return out
}

// listenRemote opens the remote admin API's listener, or returns nil when
// none is configured. The config was validated: plaintext beyond loopback
// only with allow_plaintext.
func (s *Issuer) listenRemote(cfg *config.Issuer, lim unixsock.HTTPLimits) (*remoteAPI, error) {
	rc := cfg.RemoteAdmin
	if !rc.Enabled() {
		return nil, nil
	}
	ra := &remoteAPI{srv: s.remoteHandler()}
	ra.http = s.tcpServer(ra.srv, lim)
	if rc.TLSCert != "" {
		tc, err := remoteadmin.TLSConfig(rc.TLSCert, rc.TLSKey, rc.ClientCA)
		if err != nil {
			return nil, err
		}
		ra.http.TLSConfig = tc
	}
	ln, err := net.Listen("tcp", rc.Listen)
	if err != nil {
		return nil, fmt.Errorf("remote admin listen %s: %w", rc.Listen, err)
	}
	ra.ln = ln
	return ra, nil
}

// serve serves until the listener closes.
func (ra *remoteAPI) serve() error {
	if ra.http.TLSConfig != nil {
		return ra.http.ServeTLS(ra.ln, "", "")
	}
	return ra.http.Serve(ra.ln)
}

// RemoteAdminAddr returns the remote admin API's address once running, or
// nil when it is not configured.
func (s *Issuer) RemoteAdminAddr() net.Addr {
	if ra := s.remote.Load(); ra != nil {
		return ra.ln.Addr()
	}
	return nil
}

// remoteStatus is the remote admin API's part of the status document.
func (s *Issuer) remoteStatus() any {
	ra := s.remote.Load()
	if ra == nil {
		return map[string]any{"enabled": false}
	}
	st := ra.srv.Stats()
	return map[string]any{"enabled": true, "listen": ra.ln.Addr().String(), "tls": ra.http.TLSConfig != nil,
		"requests": st.Requests, "unauthorized": st.Unauthorized, "rate_limited": st.RateLimited}
}

// remoteMetrics are the remote admin API's counters.
func (s *Issuer) remoteMetrics() []metrics.Sample {
	ra := s.remote.Load()
	if ra == nil {
		return nil
	}
	st := ra.srv.Stats()
	c := func(name, help string, v uint64) metrics.Sample {
		return metrics.Sample{Name: name, Help: help, Type: metrics.Counter, Value: float64(v)}
	}
	return []metrics.Sample{
		c("wicket_remote_admin_requests_total", "Remote admin API requests.", st.Requests),
		c("wicket_remote_admin_unauthorized_total", "Remote admin API requests refused with 401.", st.Unauthorized),
		c("wicket_remote_admin_rate_limited_total", "Remote admin API requests refused with 429.", st.RateLimited),
	}
}

// adminTokenRoutes registers the admin socket's admin-token commands:
// mint a root token, list them, revoke one (and every copy of it).
func (s *Issuer) adminTokenRoutes(handle func(string, http.Handler), fail func(http.ResponseWriter, *http.Request, error)) {
	handle("POST /v1/admin-tokens", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body api.AdminTokenRequest
		if err := admin.ReadJSON(r, &body); err != nil {
			fail(w, r, invalidf("body: want a JSON admin token request"))
			return
		}
		tok, err := s.MintAdminToken(r.Context(), body)
		if err != nil {
			fail(w, r, err)
			return
		}
		admin.LogFrom(r.Context()).Info("admin token minted", "admin_token_id", tok.TokenID, "label", tok.Label, "expires_at", tok.ExpiresAt)
		admin.WriteJSON(w, http.StatusCreated, tok)
	}))
	handle("GET /v1/admin-tokens", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		admin.WriteJSON(w, http.StatusOK, api.AdminTokenList{AdminTokens: s.AdminTokens()})
	}))
	handle("POST /v1/admin-tokens/revocations", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body api.RevokeRequest
		if err := admin.ReadJSON(r, &body); err != nil || body.Token != "" {
			fail(w, r, invalidf("body: want {\"token_id\": \"…\", \"reason\": \"…\"}"))
			return
		}
		if !printable(body.Reason, 256) {
			fail(w, r, invalidf("reason: at most 256 printable characters"))
			return
		}
		if err := s.RevokeAdminToken(r.Context(), body.TokenID, body.Reason); err != nil {
			fail(w, r, err)
			return
		}
		admin.LogFrom(r.Context()).Info("admin token revoked", "admin_token_id", body.TokenID)
		admin.WriteJSON(w, http.StatusOK, api.TokenRevoked{Status: "revoked", TokenID: body.TokenID})
	}))
}
