package issuer

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/admin"
	"github.com/wicket-sh/wicket/internal/admintoken"
	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/httpapi"
	"github.com/wicket-sh/wicket/internal/machinetoken"
	"github.com/wicket-sh/wicket/internal/oidc"
	"github.com/wicket-sh/wicket/internal/store"
)

// viewOf is m as the admin API shows it.
func viewOf(m *store.Machine) api.MachineView {
	sa := m.SourceAddrs
	if sa == nil {
		sa = []string{}
	}
	return api.MachineView{Metadata: metadataOf(m), SourceAddrs: sa, Version: m.Version, CreatedAt: m.CreatedAt, UpdatedAt: m.UpdatedAt}
}

// validationError is a user mistake in an admin request; its text is safe
// to return because the admin socket's callers are the operators, and it
// never contains the values themselves, only which field is wrong.
type validationError struct{ msg string }

func (e validationError) Error() string { return e.msg }

func invalidf(format string, a ...any) error { return validationError{fmt.Sprintf(format, a...)} }

var (
	regionRE = regexp.MustCompile(`^[a-z0-9-]{0,32}$`)
	tagKeyRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)
	digestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)
)

func printable(s string, max int) bool {
	if len(s) > max || !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}

func validateMachine(m *store.Machine) error {
	switch {
	case !config.ValidName(m.Org):
		return invalidf("org: want lowercase letters, digits and '-', at most 63")
	case !config.ValidName(m.App):
		return invalidf("app: want lowercase letters, digits and '-', at most 63")
	case !config.ValidName(m.Name):
		return invalidf("name: want lowercase letters, digits and '-', at most 63")
	case !regionRE.MatchString(m.Region):
		return invalidf("region: want lowercase letters, digits and '-', at most 32")
	case !printable(m.Image, 512):
		return invalidf("image: at most 512 printable characters")
	case m.ImageDigest != "" && !digestRE.MatchString(m.ImageDigest):
		return invalidf("image_digest: want sha256:<64 hex>")
	case len(m.Tags) > 64:
		return invalidf("tags: at most 64")
	case len(m.SourceAddrs) > 32:
		return invalidf("source_addrs: at most 32")
	}
	if m.PrivateIP != "" {
		if _, err := netip.ParseAddr(m.PrivateIP); err != nil {
			return invalidf("private_ip: not an IP address")
		}
	}
	for k, v := range m.Tags {
		if !tagKeyRE.MatchString(k) {
			return invalidf("tags: keys are letters, digits, '.', '_', '-', at most 63")
		}
		if !printable(v, 1024) {
			return invalidf("tags: values are at most 1024 printable characters")
		}
	}
	for i, c := range m.SourceAddrs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return invalidf("source_addrs[%d]: not a CIDR prefix", i)
		}
		m.SourceAddrs[i] = p.Masked().String()
	}
	return nil
}

func newMachineID() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// AddMachine registers a machine and mints its first token.
func (s *Issuer) AddMachine(ctx context.Context, spec api.MachineSpec) (*store.Machine, *api.MintedToken, error) {
	ttl, err := s.tokenTTL(spec.TokenTTL)
	if err != nil {
		return nil, nil, err
	}
	return s.addMachine(ctx, spec, ttl)
}

// addMachine registers a machine and mints its first token for ttl.
func (s *Issuer) addMachine(ctx context.Context, spec api.MachineSpec, ttl time.Duration) (*store.Machine, *api.MintedToken, error) {
	m := &store.Machine{ID: newMachineID(), Name: spec.Name, Org: spec.Org, App: spec.App, Region: spec.Region,
		Image: spec.Image, ImageDigest: spec.ImageDigest, PrivateIP: spec.PrivateIP, Tags: spec.Tags, SourceAddrs: spec.SourceAddrs}
	if err := validateMachine(m); err != nil {
		return nil, nil, err
	}
	if err := s.store.CreateMachine(ctx, m); err != nil {
		if errors.Is(err, store.ErrExists) {
			return nil, nil, invalidf("a machine with this org, app and name already exists")
		}
		return nil, nil, err
	}
	if err := s.ensureOrgKeys(ctx, m.Org); err != nil {
		return nil, nil, err
	}
	tok, err := s.mint(m, ttl)
	if err != nil {
		return nil, nil, err
	}
	return m, tok, nil
}

func (s *Issuer) tokenTTL(v string) (time.Duration, error) {
	cfg := s.cfg().MachineTokens
	if v == "" {
		return cfg.DefaultTTL.Duration, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < time.Minute || d > cfg.MaxTTL.Duration {
		return 0, invalidf("token_ttl: want a duration between 1m and %s", cfg.MaxTTL.Duration)
	}
	return d, nil
}

func (s *Issuer) mint(m *store.Machine, ttl time.Duration) (*api.MintedToken, error) {
	var addrs []netip.Prefix
	for _, c := range m.SourceAddrs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return nil, fmt.Errorf("machine %s source address: %w", m.ID, err)
		}
		addrs = append(addrs, p)
	}
	now := s.now()
	key := s.keys.Load().mintKey
	tok, id, err := machinetoken.Mint(*key, tokenLocation, machinetoken.Claims{
		Org: m.Org, App: m.App, MachineID: m.ID,
		Features:  machinetoken.AllFeatures(),
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(ttl), SourceAddrs: addrs,
	})
	if err != nil {
		return nil, err
	}
	s.machineTokensMinted.Add(1)
	s.log.Info("machine token minted", "machine_id", m.ID, "token_id", id, "expires_at", now.Add(ttl).UTC().Format(time.RFC3339))
	return &api.MintedToken{Token: tok, TokenID: id, ExpiresAt: now.Add(ttl).UTC().Truncate(time.Second)}, nil
}

// UpdateMachine changes a machine's metadata; long polls on it wake up.
func (s *Issuer) UpdateMachine(ctx context.Context, id string, u api.MachineUpdate) (*store.Machine, error) {
	return s.updateMachine(ctx, id, u, nil)
}

// updateMachine is UpdateMachine; check, when set, is asked about the
// machine as it is and as it would become, inside the store's
// read-modify-write, so a concurrent change cannot slip past it.
func (s *Issuer) updateMachine(ctx context.Context, id string, u api.MachineUpdate, check func(old, next *store.Machine) error) (*store.Machine, error) {
	var verr error
	m, err := s.store.UpdateMachine(ctx, id, u.ExpectVersion, func(m *store.Machine) error {
		old := m.Clone()
		for _, f := range []struct {
			dst *string
			src *string
		}{{&m.Region, u.Region}, {&m.Image, u.Image}, {&m.ImageDigest, u.ImageDigest}, {&m.PrivateIP, u.PrivateIP}} {
			if f.src != nil {
				*f.dst = *f.src
			}
		}
		if m.Tags == nil {
			m.Tags = map[string]string{}
		}
		for k, v := range u.SetTags {
			m.Tags[k] = v
		}
		for _, k := range u.RemoveTags {
			delete(m.Tags, k)
		}
		if u.SourceAddrs != nil {
			m.SourceAddrs = slices.Clone(*u.SourceAddrs)
		}
		verr = validateMachine(m)
		if verr == nil && check != nil {
			verr = check(old, m)
		}
		return verr
	})
	if verr != nil {
		return nil, verr
	}
	return m, err
}

// RemoveMachine deletes a machine: its tokens stop working at once, because
// every verification looks the machine up.
func (s *Issuer) RemoveMachine(ctx context.Context, id string) error {
	return s.removeMachine(ctx, id, nil)
}

// removeMachine is RemoveMachine; check, when set, is asked about the
// machine as it is inside the store's deletion, so a concurrent change
// (a move out of the caller's scope) cannot slip past it.
func (s *Issuer) removeMachine(ctx context.Context, id string, check func(*store.Machine) error) error {
	return s.store.DeleteMachine(ctx, id, check)
}

// RevokeToken revokes a machine token (and all its attenuated copies) by id.
func (s *Issuer) RevokeToken(ctx context.Context, tokenID, reason string) error {
	if len(tokenID) != 32 {
		return invalidf("token id: want the 32 hex characters printed at mint time")
	}
	if _, err := hex.DecodeString(tokenID); err != nil {
		return invalidf("token id: want the 32 hex characters printed at mint time")
	}
	if err := s.store.Revoke(ctx, &store.Revocation{TokenID: tokenID, Reason: reason, RevokedAt: s.now()}); err != nil {
		return err
	}
	// Apply now rather than when the watch fires, so the caller's next
	// request already sees the revocation.
	return s.refreshKeys(ctx)
}

// adminError is what an admin command's caller is told of err.
func adminError(err error) *httpapi.Error {
	var ve validationError
	switch {
	case errors.As(err, &ve):
		// Its text names the field, never the value (validationError).
		return httpapi.NewError(http.StatusBadRequest, api.CodeBadRequest, ve.msg, err)
	case errors.Is(err, admintoken.ErrInvalid):
		return httpapi.NewError(http.StatusUnauthorized, api.CodeUnauthorized, "unauthorized", err)
	case errors.Is(err, admintoken.ErrForbidden):
		// A valid admin token whose scope does not grant the request.
		return httpapi.NewError(http.StatusForbidden, api.CodeForbidden, "forbidden", err)
	case errors.Is(err, store.ErrNotFound), errors.Is(err, errUnknownOrg):
		return httpapi.NotFoundError(nil)
	case errors.Is(err, store.ErrConflict):
		return httpapi.NewError(http.StatusConflict, api.CodeConflict, "version conflict", nil)
	case unavailable(err):
		// Retrying later helps, unlike a 500; which members failed and
		// why is for the log, not the caller.
		return httpapi.UnavailableError("state store unavailable", err)
	}
	return httpapi.InternalError(err)
}

// registerAdmin adds the issuer's commands to its admin socket: the
// machine and token commands the remote admin API shares (for the
// socket's operator, who may do everything), then the keys and admin
// tokens, which only the socket has.
func (s *Issuer) registerAdmin(a *admin.Server) {
	s.machineRoutes(a.Handle, func(r *http.Request) (caller, error) {
		return operator{admin.LogFrom(r.Context())}, nil
	})
	fail := func(w http.ResponseWriter, r *http.Request, err error) {
		// The request's audit logger already names the peer and command.
		httpapi.WriteError(w, r, admin.LogFrom(r.Context()), adminError(err))
	}
	s.adminTokenRoutes(a.Handle, fail)
	a.Handle("GET /v1/keys", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		keys := s.keys.Load().meta
		if keys == nil {
			keys = []api.KeyInfo{}
		}
		admin.WriteJSON(w, http.StatusOK, api.KeyList{Keys: keys})
	}))
	a.Handle("POST /v1/keys/rotate", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body api.RotateRequest
		if err := admin.ReadJSON(r, &body); err != nil {
			fail(w, r, invalidf("body: want {\"org\": \"…\"}"))
			return
		}
		switch body.Kind {
		case "macaroon":
			id, err := s.AddMacaroonKey(r.Context())
			if err != nil {
				fail(w, r, err)
				return
			}
			admin.LogFrom(r.Context()).Info("machine token key rotated", "key_id", id)
			admin.WriteJSON(w, http.StatusOK, api.MacaroonKeyRotated{ID: id, Kind: "macaroon"})
		case "", "oidc":
			if body.Alg != "" && body.Alg != "RS256" && body.Alg != "ES256" {
				fail(w, r, invalidf("alg: want RS256 or ES256"))
				return
			}
			if !config.ValidName(body.Org) {
				fail(w, r, invalidf("org: required"))
				return
			}
			k, err := s.RotateOrgKey(r.Context(), body.Org, oidc.Alg(body.Alg))
			if err != nil {
				fail(w, r, err)
				return
			}
			admin.WriteJSON(w, http.StatusOK, k)
		case store.KindSPIFFEJWT:
			if body.Alg != "" && body.Alg != "RS256" && body.Alg != "ES256" {
				fail(w, r, invalidf("alg: want RS256 or ES256"))
				return
			}
			if !config.ValidName(body.Org) {
				fail(w, r, invalidf("org: required"))
				return
			}
			k, err := s.RotateOrgJWTSVIDKey(r.Context(), body.Org, oidc.Alg(body.Alg))
			if err != nil {
				fail(w, r, err)
				return
			}
			admin.WriteJSON(w, http.StatusOK, k)
		case store.KindSPIFFECA:
			if !config.ValidName(body.Org) {
				fail(w, r, invalidf("org: required"))
				return
			}
			k, err := s.RotateOrgCA(r.Context(), body.Org)
			if err != nil {
				fail(w, r, err)
				return
			}
			admin.WriteJSON(w, http.StatusOK, k)
		default:
			fail(w, r, invalidf("kind: want oidc, spiffe-jwt, spiffe-ca or macaroon"))
		}
	}))
}

// findMachine accepts a machine id or "org/app/name".
func (s *Issuer) findMachine(ctx context.Context, ref string) (*store.Machine, error) {
	if m, err := s.store.GetMachine(ctx, ref); err == nil || !errors.Is(err, store.ErrNotFound) {
		return m, err
	}
	if ni, ok := s.store.(store.NameIndex); ok {
		// Org, app and name never contain '/' (validated at registration),
		// so the reference splits one way only.
		org, rest, _ := strings.Cut(ref, "/")
		app, name, ok := strings.Cut(rest, "/")
		if !ok || strings.Contains(name, "/") {
			return nil, store.ErrNotFound
		}
		return ni.GetMachineByName(ctx, org, app, name)
	}
	ms, err := s.store.ListMachines(ctx)
	if err != nil {
		return nil, err
	}
	for _, m := range ms {
		if m.Org+"/"+m.App+"/"+m.Name == ref {
			return m, nil
		}
	}
	return nil, store.ErrNotFound
}

// EnsureMachine returns the machine org/app/name, registering it from spec
// when absent (dev mode: the same machine across restarts).
func (s *Issuer) EnsureMachine(ctx context.Context, spec api.MachineSpec) (*store.Machine, error) {
	if m, err := s.findMachine(ctx, spec.Org+"/"+spec.App+"/"+spec.Name); err == nil {
		return m, nil
	} else if !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	m, _, err := s.AddMachine(ctx, spec)
	return m, err
}

// MintToken mints a new machine token for the machine id (or org/app/name).
func (s *Issuer) MintToken(ctx context.Context, ref string, ttl time.Duration) (*api.MintedToken, error) {
	m, err := s.findMachine(ctx, ref)
	if err != nil {
		return nil, err
	}
	return s.mint(m, ttl)
}
