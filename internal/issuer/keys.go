package issuer

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/superfly/macaroon"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/machinetoken"
	"github.com/wicket-sh/wicket/internal/oidc"
	"github.com/wicket-sh/wicket/internal/spiffe"
	"github.com/wicket-sh/wicket/internal/store"
)

// jwtKeys is one family of per-org JWT signing keys. There are two, with
// one implementation: the OIDC keys (kind oidc/<org>, published in the
// org's JWKS) and the JWT-SVID keys (kind spiffe-jwt/<org>, published only
// in the org's SPIFFE bundle). Each org has its own keys of each family,
// so a relying party that forgets to check "iss" (MinIO does not) still
// cannot be fooled by another org's token, and a relying party that
// trusts the org's OIDC issuer never verifies a JWT-SVID: its kid is in no
// JWKS. Both families share [oidc] prepublish and grace; each has its own
// schedule.
type jwtKeys struct {
	kind  string // store kind prefix: store.KindOIDC or store.KindSPIFFEJWT
	label string // in log lines: "signing key", "jwt-svid key"
	// rotateEvery is the family's schedule (0: only when asked).
	rotateEvery func(*config.Issuer) time.Duration
}

var (
	oidcFamily = &jwtKeys{kind: store.KindOIDC, label: "signing key",
		rotateEvery: func(c *config.Issuer) time.Duration { return c.OIDC.RotateEvery.Duration }}
	svidFamily = &jwtKeys{kind: store.KindSPIFFEJWT, label: "jwt-svid key",
		rotateEvery: func(c *config.Issuer) time.Duration { return c.SPIFFE.JWTRotateEvery.Duration }}
	jwtFamilies = []*jwtKeys{oidcFamily, svidFamily}
)

// storeKind is the store kind of org's keys of the family.
func (f *jwtKeys) storeKind(org string) string { return f.kind + "/" + org }

// orgKeys are one family's keys in a key ring: the keys per org and the
// snapshot for signing and publishing.
type orgKeys struct {
	keys map[string][]*oidc.Key  // org → keys
	sets map[string]*oidc.KeySet // org → snapshot for signing and JWKS
}

// of returns the family's keys in kr.
func (f *jwtKeys) of(kr *keyring) *orgKeys { return kr.jwt[f.kind] }

// oidcKind is the store kind of an org's OIDC signing keys.
func oidcKind(org string) string { return oidcFamily.storeKind(org) }

// keyring is an immutable snapshot of the unsealed keys and the revocation
// set; a reload builds a new one and swaps it in.
type keyring struct {
	macaroon map[string]macaroon.SigningKey // hex key id → secret
	mintKey  *machinetoken.Key              // newest macaroon key
	oidcKeys map[string][]*oidc.Key         // org → OIDC keys (jwt[store.KindOIDC].keys)
	oidcSets map[string]*oidc.KeySet        // org → OIDC snapshot for signing and JWKS
	jwt      map[string]*orgKeys            // family kind → its keys (oidcFamily, svidFamily)
	cas      map[string][]*spiffe.CA        // org → SPIFFE CAs (spiffe.go)
	revoked  map[string]struct{}
	meta     []api.KeyInfo // the keys list, without private material
	admin    adminKeys     // remote admin tokens' root keys
}

// machineVerifier verifies machine tokens against kr's keys and
// revocations.
func (kr *keyring) machineVerifier() machinetoken.Verifier {
	return machinetoken.Verifier{
		Location: tokenLocation,
		Keys: func(id []byte) (macaroon.SigningKey, bool) {
			k, ok := kr.macaroon[hex.EncodeToString(id)]
			return k, ok
		},
		Revoked: func(id string) bool { _, ok := kr.revoked[id]; return ok },
	}
}

// sealAD binds a sealed blob to its record, so one key's ciphertext cannot
// be swapped into another record.
func sealAD(kind, id string) []byte { return []byte("wicket-key\x00" + kind + "\x00" + id) }

// loadKeys reads every key and revocation from the store and unseals them.
func (s *Issuer) loadKeys(ctx context.Context) (*keyring, error) {
	keys, err := s.store.ListKeys(ctx, "")
	if err != nil {
		return nil, fmt.Errorf("list keys: %w", err)
	}
	kr := &keyring{
		macaroon: map[string]macaroon.SigningKey{},
		jwt:      map[string]*orgKeys{},
		cas:      map[string][]*spiffe.CA{},
		revoked:  map[string]struct{}{},
	}
	for _, f := range jwtFamilies {
		kr.jwt[f.kind] = &orgKeys{keys: map[string][]*oidc.Key{}, sets: map[string]*oidc.KeySet{}}
	}
	kr.oidcKeys, kr.oidcSets = oidcFamily.of(kr).keys, oidcFamily.of(kr).sets
	var newest time.Time
	now := s.now()
	for _, k := range keys {
		plain, err := s.sealer.Open(k.Sealed, sealAD(k.Kind, k.ID))
		if err != nil {
			// Wrong seal key or tampered state: refuse to run on it.
			return nil, fmt.Errorf("unseal %s key %s: %w", k.Kind, k.ID, err)
		}
		info := api.KeyInfo{Kind: k.Kind, ID: k.ID, Alg: k.Alg, State: k.State, CreatedAt: k.CreatedAt, ActivateAt: k.ActivateAt, RetiredAt: k.RetiredAt}
		switch {
		case k.Kind == store.KindMacaroon:
			id, err := hex.DecodeString(k.ID)
			if err != nil || len(plain) != 32 {
				return nil, fmt.Errorf("macaroon key %s is malformed", k.ID)
			}
			// Own copy: plain is wiped below.
			secret := macaroon.SigningKey(bytes.Clone(plain))
			kr.macaroon[k.ID] = secret
			if kr.mintKey == nil || !k.CreatedAt.Before(newest) {
				kr.mintKey = &machinetoken.Key{ID: id, Secret: secret}
				newest = k.CreatedAt
			}
			info.State = "active"
		case k.Kind == store.KindAdminToken:
			// Listed by GET /v1/admin-tokens, not with the signing keys.
			err := kr.admin.add(k, plain)
			clear(plain)
			if err != nil {
				return nil, err
			}
			continue
		case familyOf(k.Kind) != nil:
			f := familyOf(k.Kind)
			org := strings.TrimPrefix(k.Kind, f.kind+"/")
			priv, err := oidc.UnmarshalPrivate(plain)
			if err != nil {
				return nil, fmt.Errorf("%s key %s: %w", f.kind, k.ID, err)
			}
			ok := &oidc.Key{ID: k.ID, Alg: oidc.Alg(k.Alg), State: oidc.KeyState(k.State),
				CreatedAt: k.CreatedAt, ActivateAt: k.ActivateAt, RetiredAt: k.RetiredAt, Private: priv}
			fk := f.of(kr)
			fk.keys[org] = append(fk.keys[org], ok)
			info.Kind, info.Org, info.State = f.kind, org, string(ok.StateAt(now))
		case strings.HasPrefix(k.Kind, store.KindSPIFFECA+"/"):
			ca, err := caFromRecord(k, plain)
			if err != nil {
				return nil, err
			}
			org := strings.TrimPrefix(k.Kind, store.KindSPIFFECA+"/")
			kr.cas[org] = append(kr.cas[org], ca)
			info.Kind, info.Org, info.State = store.KindSPIFFECA, org, ca.StateAt(now)
		default:
			return nil, fmt.Errorf("unknown key kind %q", k.Kind)
		}
		clear(plain)
		kr.meta = append(kr.meta, info)
	}
	for _, f := range jwtFamilies {
		fk := f.of(kr)
		for org, ks := range fk.keys {
			set, err := oidc.NewKeySet(ks)
			if err != nil {
				return nil, fmt.Errorf("org %s %s keys: %w", org, f.kind, err)
			}
			fk.sets[org] = set
		}
	}
	revs, err := s.store.ListRevocations(ctx)
	if err != nil {
		return nil, fmt.Errorf("list revocations: %w", err)
	}
	for _, r := range revs {
		kr.revoked[r.TokenID] = struct{}{}
	}
	return kr, nil
}

// refreshKeys reloads the key ring from the store.
func (s *Issuer) refreshKeys(ctx context.Context) error {
	s.keyMu.Lock()
	defer s.keyMu.Unlock()
	kr, err := s.loadKeys(ctx)
	if err != nil {
		return err
	}
	s.keys.Store(kr)
	return nil
}

func (s *Issuer) putSealed(ctx context.Context, kind, id, alg, state string, created, activate, retired time.Time, plain []byte) error {
	sealed, err := s.sealer.Seal(plain, sealAD(kind, id))
	if err != nil {
		return fmt.Errorf("seal key: %w", err)
	}
	return s.store.PutKey(ctx, &store.SealedKey{ID: id, Kind: kind, Alg: alg, State: state,
		CreatedAt: created, ActivateAt: activate, RetiredAt: retired, Sealed: sealed})
}

// familyOf returns the JWT key family a store kind ("oidc/<org>",
// "spiffe-jwt/<org>") belongs to, or nil.
func familyOf(kind string) *jwtKeys {
	for _, f := range jwtFamilies {
		if strings.HasPrefix(kind, f.kind+"/") {
			return f
		}
	}
	return nil
}

func (s *Issuer) putJWTKey(ctx context.Context, f *jwtKeys, org string, k *oidc.Key) error {
	der, err := k.MarshalPrivate()
	if err != nil {
		return err
	}
	defer clear(der)
	return s.putSealed(ctx, f.storeKind(org), k.ID, string(k.Alg), string(k.State), k.CreatedAt, k.ActivateAt, k.RetiredAt, der)
}

// AddMacaroonKey creates a new macaroon root key; new machine tokens are
// minted with it, older tokens keep verifying with theirs.
func (s *Issuer) AddMacaroonKey(ctx context.Context) (string, error) {
	k := machinetoken.NewKey()
	id := hex.EncodeToString(k.ID)
	if err := s.putSealed(ctx, store.KindMacaroon, id, "HS256", "active", s.now(), time.Time{}, time.Time{}, k.Secret); err != nil {
		return "", err
	}
	return id, s.refreshKeys(ctx)
}

// ensureOrgKeys gives a new org its first OIDC signing key.
func (s *Issuer) ensureOrgKeys(ctx context.Context, org string) error {
	return s.ensureJWTKeys(ctx, oidcFamily, org)
}

// ensureJWTKeys gives an org its first key of the family, active at once:
// no relying party can know the org's issuer (or bundle) before it
// exists, so there is nothing to pre-publish to.
func (s *Issuer) ensureJWTKeys(ctx context.Context, f *jwtKeys, org string) error {
	return s.ensureOrg(ctx, func(kr *keyring) bool { _, ok := f.of(kr).sets[org]; return ok }, func() error {
		k, err := oidc.GenerateKey(oidc.Alg(s.cfg().OIDC.Alg), s.now(), 0)
		if err != nil {
			return err
		}
		if err := s.putJWTKey(ctx, f, org, k); err != nil {
			return err
		}
		s.log.Info("created org "+f.label, "org", org, "kid", k.ID, "alg", k.Alg)
		return nil
	})
}

// ensureOrg runs create once when has says the key ring lacks something
// an org needs (its first signing key, its first CA), and reloads the ring.
func (s *Issuer) ensureOrg(ctx context.Context, has func(*keyring) bool, create func() error) error {
	if has(s.keys.Load()) {
		return nil
	}
	s.rotateMu.Lock()
	defer s.rotateMu.Unlock()
	if has(s.keys.Load()) {
		return nil
	}
	// Another replica may have created it a moment ago, before its watch
	// event arrived here: look in the store before adding a second one.
	if err := s.refreshKeys(ctx); err != nil {
		return err
	}
	if has(s.keys.Load()) {
		return nil
	}
	if err := create(); err != nil {
		return err
	}
	return s.refreshKeys(ctx)
}

// RotateOrgKey publishes a new OIDC signing key for org that starts
// signing after the configured prepublish delay; the current key is
// retired at that moment and stays in the JWKS for the grace period.
func (s *Issuer) RotateOrgKey(ctx context.Context, org string, alg oidc.Alg) (*api.KeyInfo, error) {
	return s.rotateJWTKey(ctx, oidcFamily, org, alg)
}

// RotateOrgJWTSVIDKey is RotateOrgKey for the org's JWT-SVID keys, which
// are published in its SPIFFE bundle (the same prepublish and grace).
func (s *Issuer) RotateOrgJWTSVIDKey(ctx context.Context, org string, alg oidc.Alg) (*api.KeyInfo, error) {
	return s.rotateJWTKey(ctx, svidFamily, org, alg)
}

func (s *Issuer) rotateJWTKey(ctx context.Context, f *jwtKeys, org string, alg oidc.Alg) (*api.KeyInfo, error) {
	s.rotateMu.Lock()
	defer s.rotateMu.Unlock()
	cfg := s.cfg()
	if alg == "" {
		alg = oidc.Alg(cfg.OIDC.Alg)
	}
	keys, ok := f.of(s.keys.Load()).keys[org]
	if !ok {
		return nil, errUnknownOrg
	}
	next, newKey, err := oidc.Rotate(keys, alg, s.now(), cfg.OIDC.Prepublish.Duration)
	if err != nil {
		return nil, err
	}
	for _, k := range next {
		if err := s.putJWTKey(ctx, f, org, k); err != nil {
			return nil, err
		}
	}
	if err := s.refreshKeys(ctx); err != nil {
		return nil, err
	}
	s.log.Info("rotated org "+f.label, "org", org, "kid", newKey.ID, "alg", newKey.Alg, "activate_at", newKey.ActivateAt)
	return &api.KeyInfo{Kind: f.kind, Org: org, ID: newKey.ID, Alg: string(newKey.Alg), State: string(newKey.StateAt(s.now())),
		CreatedAt: newKey.CreatedAt, ActivateAt: newKey.ActivateAt}, nil
}

// maintainKeys prunes keys retired longer than the grace period and, when
// configured, rotates keys that have been active for rotate_every.
func (s *Issuer) maintainKeys(ctx context.Context) error {
	cfg := s.cfg()
	now := s.now()
	kr := s.keys.Load()
	changed := false
	for _, f := range jwtFamilies {
		for org, keys := range f.of(kr).keys {
			kept := oidc.Prune(keys, now, cfg.OIDC.Grace.Duration)
			for _, k := range keys {
				if !slices.ContainsFunc(kept, func(x *oidc.Key) bool { return x.ID == k.ID }) {
					if err := s.store.DeleteKey(ctx, f.storeKind(org), k.ID); err != nil {
						return fmt.Errorf("prune key %s: %w", k.ID, err)
					}
					s.log.Info("pruned retired "+f.label, "org", org, "kid", k.ID)
					changed = true
				}
			}
			if every := f.rotateEvery(cfg); every > 0 {
				newest := time.Time{}
				for _, k := range kept {
					if k.CreatedAt.After(newest) {
						newest = k.CreatedAt
					}
				}
				if now.Sub(newest) >= every {
					if _, err := s.rotateJWTKey(ctx, f, org, ""); err != nil {
						return fmt.Errorf("scheduled %s rotation for %s: %w", f.kind, org, err)
					}
				}
			}
		}
	}
	caChanged, err := s.maintainCAs(ctx, now)
	if err != nil {
		return err
	}
	if changed || caChanged {
		return s.refreshKeys(ctx)
	}
	return nil
}
