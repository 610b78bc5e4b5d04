package issuer

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/superfly/macaroon"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/admintoken"
	"github.com/wicket-sh/wicket/internal/macaroonwire"
	"github.com/wicket-sh/wicket/internal/store"
)

// defaultAdminTokenTTL is a root admin token's lifetime when the operator
// names none.
const defaultAdminTokenTTL = 8760 * time.Hour

// adminKey is one remote admin token's root key: each minted admin token
// has its own, so listing them needs no other record and a token's key
// can be destroyed without touching the others.
type adminKey struct {
	tokenID string
	secret  macaroon.SigningKey
	info    api.AdminTokenInfo
}

// adminKeys maps the hex key id to the key.
type adminKeys map[string]*adminKey

// sealedAdminKey is what a KindAdminToken record seals: the label and the
// expiry are sealed with the key, so the store cannot relabel a token.
type sealedAdminKey struct {
	KeyID     []byte    `json:"kid"`
	Secret    []byte    `json:"secret"`
	Label     string    `json:"label"`
	ExpiresAt time.Time `json:"expires_at"`
}

// add unseals rec (plain is its opened blob) into m.
func (m *adminKeys) add(rec *store.SealedKey, plain []byte) error {
	var sk sealedAdminKey
	if err := json.Unmarshal(plain, &sk); err != nil || len(sk.Secret) != 32 || len(sk.KeyID) == 0 {
		return fmt.Errorf("admin token key %s is malformed", rec.ID)
	}
	if *m == nil {
		*m = adminKeys{}
	}
	(*m)[hex.EncodeToString(sk.KeyID)] = &adminKey{
		tokenID: rec.ID,
		secret:  macaroon.SigningKey(bytes.Clone(sk.Secret)),
		info:    api.AdminTokenInfo{TokenID: rec.ID, Label: sk.Label, CreatedAt: rec.CreatedAt, ExpiresAt: sk.ExpiresAt},
	}
	clear(sk.Secret)
	return nil
}

// byTokenID returns the key of the admin token id, if any.
func (m adminKeys) byTokenID(id string) *adminKey {
	for _, k := range m {
		if k.tokenID == id {
			return k
		}
	}
	return nil
}

// adminScope turns the socket's request into a token scope.
func adminScope(req api.AdminTokenRequest) (admintoken.Scope, error) {
	s := admintoken.Scope{Orgs: req.Orgs, Apps: req.Apps, Regions: req.Regions}
	for _, o := range req.Ops {
		s.Ops = append(s.Ops, admintoken.Op(o))
	}
	if req.MaxMachineTTL != "" {
		d, err := time.ParseDuration(req.MaxMachineTTL)
		if err != nil || d < time.Minute {
			return s, invalidf("max_machine_ttl: want a duration of at least 1m")
		}
		s.MaxMachineTTL = d
	}
	for i, c := range req.SourceAddrs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return s, invalidf("source_addrs[%d]: not a CIDR prefix", i)
		}
		s.SourceAddrs = append(s.SourceAddrs, p)
	}
	return s, nil
}

// MintAdminToken mints a root admin token for the remote admin API with a
// new root key of its own, sealed in the state. The token is returned once
// and not stored.
func (s *Issuer) MintAdminToken(ctx context.Context, req api.AdminTokenRequest) (*api.AdminTokenMinted, error) {
	if !printable(req.Label, 64) {
		return nil, invalidf("label: at most 64 printable characters")
	}
	ttl := defaultAdminTokenTTL
	if req.TTL != "" {
		d, err := time.ParseDuration(req.TTL)
		if err != nil || d < time.Minute || d > 10*defaultAdminTokenTTL {
			return nil, invalidf("ttl: want a duration between 1m and %s", 10*defaultAdminTokenTTL)
		}
		ttl = d
	}
	scope, err := adminScope(req)
	if err != nil {
		return nil, err
	}
	now := s.now()
	scope.NotBefore, scope.NotAfter = now.Add(-time.Minute), now.Add(ttl)
	key := macaroonwire.NewKey()
	tok, id, err := admintoken.Mint(key, scope)
	if err != nil {
		// Only the scope's values can fail here; the error names the
		// field, never its value.
		return nil, invalidf("%s", strings.TrimPrefix(err.Error(), "admintoken: mint: "))
	}
	plain, err := json.Marshal(sealedAdminKey{KeyID: key.ID, Secret: key.Secret, Label: req.Label, ExpiresAt: scope.NotAfter.UTC().Truncate(time.Second)})
	if err != nil {
		return nil, err
	}
	defer clear(plain)
	if err := s.putSealed(ctx, store.KindAdminToken, id, "HS256", "active", now, time.Time{}, time.Time{}, plain); err != nil {
		return nil, err
	}
	if err := s.refreshKeys(ctx); err != nil {
		return nil, err
	}
	return &api.AdminTokenMinted{Token: tok, TokenID: id, Label: req.Label, ExpiresAt: scope.NotAfter.UTC().Truncate(time.Second)}, nil
}

// AdminTokens lists the admin tokens minted, revoked ones included, oldest
// first; never the tokens.
func (s *Issuer) AdminTokens() []api.AdminTokenInfo {
	kr := s.keys.Load()
	out := []api.AdminTokenInfo{}
	for _, k := range kr.admin {
		info := k.info
		_, info.Revoked = kr.revoked[k.tokenID]
		out = append(out, info)
	}
	slices.SortFunc(out, func(a, b api.AdminTokenInfo) int {
		if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
			return c
		}
		return cmpString(a.TokenID, b.TokenID)
	})
	return out
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// RevokeAdminToken revokes an admin token and every copy attenuated from
// it, on every replica (the revocation travels like a machine token's).
func (s *Issuer) RevokeAdminToken(ctx context.Context, tokenID, reason string) error {
	k := s.keys.Load().admin.byTokenID(tokenID)
	if k == nil {
		return store.ErrNotFound
	}
	if err := s.store.Revoke(ctx, &store.Revocation{TokenID: tokenID, Reason: reason, RevokedAt: s.now(), ExpiresAt: k.info.ExpiresAt}); err != nil {
		return err
	}
	return s.refreshKeys(ctx)
}

// verifyAdminToken authenticates a remote admin request's token against
// the current key ring.
func (s *Issuer) verifyAdminToken(tok string, remote netip.Addr) (*admintoken.Verified, error) {
	kr := s.keys.Load()
	v := admintoken.Verifier{
		Keys: func(id []byte) (macaroon.SigningKey, bool) {
			k, ok := kr.admin[hex.EncodeToString(id)]
			if !ok {
				return nil, false
			}
			return k.secret, true
		},
		Revoked: func(id string) bool { _, ok := kr.revoked[id]; return ok },
	}
	ver, err := v.Verify(tok, s.now(), remote)
	if err != nil {
		return nil, err
	}
	// The key a token names must be the one minted with its id: a key
	// record cannot vouch for another token's id.
	if k := kr.admin[ver.KeyID]; k == nil || k.tokenID != ver.TokenID {
		return nil, fmt.Errorf("%w: key not minted for this token", admintoken.ErrInvalid)
	}
	return ver, nil
}
