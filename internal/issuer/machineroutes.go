package issuer

import (
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/admin"
	"github.com/wicket-sh/wicket/internal/admintoken"
	"github.com/wicket-sh/wicket/internal/httpapi"
	"github.com/wicket-sh/wicket/internal/store"
)

// caller is who a machine command runs for: the admin socket's operator,
// or the holder of a remote admin token. Every command asks it before it
// acts, so one set of handlers serves both with the same bodies, codes and
// results, and the scope checks cannot be left out of one of them.
type caller interface {
	// allowOp: nil if op is granted on some machine at all (else 403).
	allowOp(op admintoken.Op) error
	// allow: nil if op is granted on t (else 403).
	allow(op admintoken.Op, t admintoken.Target) error
	// sees: whether m is in scope; a machine out of scope is not found.
	sees(m *store.Machine) bool
	// ttlCap is the longest machine token it may mint; 0: no cap of its own.
	ttlCap() time.Duration
	// revokesByID: whether a token id alone is enough to revoke (the
	// operator); a scoped holder must show the token, so the issuer can
	// check whose machine it belongs to.
	revokesByID() bool
	// log is the request's audit logger.
	log() *slog.Logger
}

// operator is the admin socket's caller: its peer credentials (and admin
// token, if configured) were checked by the socket; it may do everything.
type operator struct{ l *slog.Logger }

func (operator) allowOp(admintoken.Op) error                  { return nil }
func (operator) allow(admintoken.Op, admintoken.Target) error { return nil }
func (operator) sees(*store.Machine) bool                     { return true }
func (operator) ttlCap() time.Duration                        { return 0 }
func (operator) revokesByID() bool                            { return true }
func (o operator) log() *slog.Logger                          { return o.l }

// holder is a remote admin token's caller: every question is answered by
// its caveats, all of them checked again on each (admintoken.Verified).
type holder struct {
	v *admintoken.Verified
	l *slog.Logger
}

func target(m *store.Machine, ttl time.Duration) admintoken.Target {
	return admintoken.Target{Org: m.Org, App: m.App, Region: m.Region, TTL: ttl}
}

func (h holder) allowOp(op admintoken.Op) error                    { return h.v.AllowOp(op) }
func (h holder) allow(op admintoken.Op, t admintoken.Target) error { return h.v.Allow(op, t) }
func (h holder) sees(m *store.Machine) bool                        { return h.v.Sees(target(m, 0)) }
func (h holder) ttlCap() time.Duration                             { return h.v.Scope().MaxMachineTTL }
func (holder) revokesByID() bool                                   { return false }
func (h holder) log() *slog.Logger                                 { return h.l }

// tokenTTLFor is the machine token lifetime c asked for: v parsed
// (tokenTTL), or, when empty, the default cut to c's cap (an empty TTL
// means "the longest I may have by default", never a refusal).
func (s *Issuer) tokenTTLFor(c caller, v string) (time.Duration, error) {
	d, err := s.tokenTTL(v)
	if err != nil {
		return 0, err
	}
	if cp := c.ttlCap(); v == "" && cp > 0 && d > cp {
		d = cp
	}
	return d, nil
}

// machineRoutes registers the machine and machine-token commands with
// handle; callerOf says who each request runs for (an error: refused).
func (s *Issuer) machineRoutes(handle func(string, http.Handler), callerOf func(*http.Request) (caller, error)) {
	route := func(pattern string, h func(w http.ResponseWriter, r *http.Request, c caller) error) {
		handle(pattern, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			c, err := callerOf(r)
			if err == nil {
				err = h(w, r, c)
			}
			if err != nil {
				logger := s.log
				if c != nil {
					logger = c.log()
				}
				httpapi.WriteError(w, r, logger, adminError(err))
			}
		}))
	}
	route("POST /v1/machines", func(w http.ResponseWriter, r *http.Request, c caller) error {
		var spec api.MachineSpec
		if err := admin.ReadJSON(r, &spec); err != nil {
			return invalidf("body: want a JSON machine spec")
		}
		if err := c.allowOp(admintoken.OpMachineAdd); err != nil {
			return err
		}
		ttl, err := s.tokenTTLFor(c, spec.TokenTTL)
		if err != nil {
			return err
		}
		if err := c.allow(admintoken.OpMachineAdd, admintoken.Target{Org: spec.Org, App: spec.App, Region: spec.Region, TTL: ttl}); err != nil {
			return err
		}
		m, tok, err := s.addMachine(r.Context(), spec, ttl)
		if err != nil {
			return err
		}
		c.log().Info("machine added", "machine_id", m.ID, "org", m.Org, "app", m.App, "name", m.Name, "token_id", tok.TokenID)
		admin.WriteJSON(w, http.StatusCreated, api.MachineAdded{Machine: viewOf(m), Token: tok})
		return nil
	})
	route("GET /v1/machines", func(w http.ResponseWriter, r *http.Request, c caller) error {
		if err := c.allowOp(admintoken.OpMachineGet); err != nil {
			return err
		}
		ms, err := s.store.ListMachines(r.Context())
		if err != nil {
			return err
		}
		out := make([]api.MachineView, 0, len(ms))
		for _, m := range ms {
			if c.sees(m) {
				out = append(out, viewOf(m))
			}
		}
		admin.WriteJSON(w, http.StatusOK, api.MachineList{Machines: out})
		return nil
	})
	// find returns the machine ref names if c may see it (else not found).
	find := func(r *http.Request, c caller, ref string) (*store.Machine, error) {
		m, err := s.findMachine(r.Context(), ref)
		if err != nil {
			return nil, err
		}
		if !c.sees(m) {
			return nil, store.ErrNotFound
		}
		return m, nil
	}
	route("GET /v1/machines/{id}", func(w http.ResponseWriter, r *http.Request, c caller) error {
		if err := c.allowOp(admintoken.OpMachineGet); err != nil {
			return err
		}
		m, err := find(r, c, r.PathValue("id"))
		if err != nil {
			return err
		}
		admin.WriteJSON(w, http.StatusOK, viewOf(m))
		return nil
	})
	route("PATCH /v1/machines/{id}", func(w http.ResponseWriter, r *http.Request, c caller) error {
		var u api.MachineUpdate
		if err := admin.ReadJSON(r, &u); err != nil {
			return invalidf("body: want a JSON machine update")
		}
		if err := c.allowOp(admintoken.OpMachineUpdate); err != nil {
			return err
		}
		m, err := find(r, c, r.PathValue("id"))
		if err != nil {
			return err
		}
		m, err = s.updateMachine(r.Context(), m.ID, u, func(old, next *store.Machine) error {
			if !c.sees(old) {
				return store.ErrNotFound
			}
			// Moving a machine (its region) out of scope is refused.
			return c.allow(admintoken.OpMachineUpdate, target(next, 0))
		})
		if err != nil {
			return err
		}
		c.log().Info("machine updated", "machine_id", m.ID, "version", m.Version)
		admin.WriteJSON(w, http.StatusOK, viewOf(m))
		return nil
	})
	route("DELETE /v1/machines/{id}", func(w http.ResponseWriter, r *http.Request, c caller) error {
		if err := c.allowOp(admintoken.OpMachineRemove); err != nil {
			return err
		}
		m, err := find(r, c, r.PathValue("id"))
		if err != nil {
			return err
		}
		if err := c.allow(admintoken.OpMachineRemove, target(m, 0)); err != nil {
			return err
		}
		// Asked again on the record the store deletes: a machine moved
		// out of scope since the lookup is not removed.
		err = s.removeMachine(r.Context(), m.ID, func(cur *store.Machine) error {
			if !c.sees(cur) {
				return store.ErrNotFound
			}
			return c.allow(admintoken.OpMachineRemove, target(cur, 0))
		})
		if err != nil {
			return err
		}
		c.log().Info("machine removed", "machine_id", m.ID)
		admin.WriteJSON(w, http.StatusOK, api.MachineRemoved{MachineID: m.ID, Status: "removed"})
		return nil
	})
	route("POST /v1/machines/{id}/tokens", func(w http.ResponseWriter, r *http.Request, c caller) error {
		var body api.MintRequest
		if err := admin.ReadJSON(r, &body); err != nil {
			return invalidf("body: want {\"ttl\": \"720h\"}")
		}
		if err := c.allowOp(admintoken.OpTokenMint); err != nil {
			return err
		}
		ttl, err := s.tokenTTLFor(c, body.TTL)
		if err != nil {
			return err
		}
		m, tok, err := s.mintInScope(r, c, find, r.PathValue("id"), ttl)
		if err != nil {
			return err
		}
		c.log().Info("machine token minted", "machine_id", m.ID, "token_id", tok.TokenID)
		admin.WriteJSON(w, http.StatusCreated, tok)
		return nil
	})
	route("POST /v1/revocations", func(w http.ResponseWriter, r *http.Request, c caller) error {
		var body api.RevokeRequest
		if err := admin.ReadJSON(r, &body); err != nil {
			return invalidf("body: want {\"token_id\": \"…\"}")
		}
		if !printable(body.Reason, 256) {
			return invalidf("reason: at most 256 printable characters")
		}
		if err := c.allowOp(admintoken.OpTokenRevoke); err != nil {
			return err
		}
		id := body.TokenID
		switch {
		case body.Token != "":
			m, tid, err := s.tokenMachine(r, body.Token)
			if err != nil {
				return err
			}
			if id != "" && id != tid {
				return invalidf("token_id: not the id of token")
			}
			if !c.sees(m) {
				return store.ErrNotFound
			}
			if err := c.allow(admintoken.OpTokenRevoke, target(m, 0)); err != nil {
				return err
			}
			id = tid
		case !c.revokesByID():
			return invalidf("token: the remote admin API revokes a machine token by the token itself")
		}
		if err := s.RevokeToken(r.Context(), id, body.Reason); err != nil {
			return err
		}
		c.log().Info("machine token revoked", "token_id", id)
		admin.WriteJSON(w, http.StatusOK, api.TokenRevoked{Status: "revoked", TokenID: id})
		return nil
	})
}

// mintAttempts bounds mintInScope's rounds when the machine keeps changing.
const mintAttempts = 3

// mintInScope mints a machine token for the machine ref names, if c may
// mint for it. Minting writes nothing to the store, so there is no
// read-modify-write to check inside; instead the scope check and the
// token's claims come from one read of the machine, and the machine is
// read again once the token exists: if it changed in between (moved out
// of scope, say, or removed), the token, which has reached nobody, is
// dropped and the round starts over on
// the new record (and revoked, so not even its bytes in this process's
// memory are worth anything). So a token is handed out only for a
// machine that was in scope, unchanged, from the check until after the
// mint. Both reads must be the store's own: a clustered store that
// cannot reach its backend answers reads from its last copy, which would
// prove nothing, so a mint is refused (503) while it is out of reach.
func (s *Issuer) mintInScope(r *http.Request, c caller, find func(*http.Request, caller, string) (*store.Machine, error), ref string, ttl time.Duration) (*store.Machine, *api.MintedToken, error) {
	if h, ok := s.store.(store.Health); ok && !h.Reachable() {
		return nil, nil, fmt.Errorf("token mint: %w (its cached copy cannot prove the machine unchanged)", store.ErrUnavailable)
	}
	for range mintAttempts {
		m, err := find(r, c, ref)
		if err != nil {
			return nil, nil, err
		}
		if err := c.allow(admintoken.OpTokenMint, target(m, ttl)); err != nil {
			return nil, nil, err
		}
		tok, err := s.mint(m, ttl)
		if err != nil {
			return nil, nil, err
		}
		now, err := s.store.GetMachine(r.Context(), m.ID)
		if err != nil {
			return nil, nil, err
		}
		if now.Version == m.Version && now.CreatedAt.Equal(m.CreatedAt) {
			return m, tok, nil
		}
		c.log().Info("machine changed while minting; token dropped", "machine_id", m.ID, "token_id", tok.TokenID)
		if err := s.RevokeToken(r.Context(), tok.TokenID, "dropped: the machine changed while it was minted"); err != nil {
			return nil, nil, err
		}
	}
	return nil, nil, store.ErrConflict
}

// tokenMachine returns the registered machine a machine token (or any copy
// of it) was minted for, and the token's id. Only the signature is checked:
// an expired or revoked token still names its machine.
func (s *Issuer) tokenMachine(r *http.Request, tok string) (*store.Machine, string, error) {
	v := s.keys.Load().machineVerifier()
	id, err := v.Identify(tok)
	if err != nil {
		return nil, "", invalidf("token: not a machine token of this issuer")
	}
	m, err := s.store.GetMachine(r.Context(), id.MachineID)
	if err != nil {
		return nil, "", err
	}
	if m.Org != id.Org || m.App != id.App {
		return nil, "", store.ErrNotFound
	}
	return m, id.TokenID, nil
}
