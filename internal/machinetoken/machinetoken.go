// Package machinetoken mints, attenuates and verifies machine tokens:
// macaroons (github.com/superfly/macaroon) that bind a bearer to one
// registered machine (org, app, machine id), a set of features, a validity
// window and optionally the machine's source addresses.
//
// Anyone holding a token can narrow it offline with [Attenuate]; only the
// issuer, holding the [Key], can mint or verify one. A token is written as
// the library writes it: "fm2_" and the standard, padded base64 of the
// msgpack-encoded macaroon. Errors from parsing and
// verification wrap [ErrInvalid] and never contain token bytes or key
// material, so callers may log them.
package machinetoken

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/superfly/macaroon"

	"github.com/wicket-sh/wicket/internal/macaroonwire"
)

// MaxTokenLen bounds the encoded tokens this package will look at. A minted
// token is a few hundred bytes; anything near this size is an attack.
const MaxTokenLen = macaroonwire.MaxTokenLen

// tokenPrefix is how every token this package mints begins.
const tokenPrefix = "fm2_"

// ErrInvalid is wrapped by every error about a token or an Authorization
// header that cannot be used.
var ErrInvalid = errors.New("machinetoken: invalid token")

func invalid(reason string) error { return fmt.Errorf("%w: %s", ErrInvalid, reason) }

// Feature names one thing a machine token may be used for.
type Feature string

// The features a token can grant.
const (
	FeatureMetadata Feature = "metadata"
	FeatureOIDC     Feature = "oidc"
	FeatureProxy    Feature = "proxy"
	// FeatureSVID is SPIFFE: X.509- and JWT-SVIDs and the org's trust
	// bundles. Tokens minted before it existed do not grant it.
	FeatureSVID Feature = "svid"
)

// SVIDKind is one kind of SVID request (FeatureSVID): what an SVID-kinds
// caveat lists and what the issuer names per endpoint.
type SVIDKind string

// The kinds of SVID request.
const (
	SVIDBundle SVIDKind = "bundle" // GET /v1/svids/bundle: the trust domain, the machine's ID, the bundle
	SVIDX509   SVIDKind = "x509"   // POST /v1/svids/x509
	SVIDJWT    SVIDKind = "jwt"    // POST /v1/svids/jwt
)

// allSVIDKinds is the canonical order of SVID kinds in caveats and results.
var allSVIDKinds = []SVIDKind{SVIDBundle, SVIDX509, SVIDJWT}

func knownSVIDKind(k SVIDKind) bool { return slices.Contains(allSVIDKinds, k) }

// allFeatures is the canonical order of features in caveats and results.
var allFeatures = []Feature{FeatureMetadata, FeatureOIDC, FeatureProxy, FeatureSVID}

// AllFeatures returns every feature a token can grant, in canonical order
// (what a new machine token is minted with).
func AllFeatures() []Feature { return slices.Clone(allFeatures) }

// Claims is what a freshly minted token grants.
type Claims struct {
	Org, App, MachineID string
	Features            []Feature // at least one
	// NotBefore may be zero (no lower bound); NotAfter is required.
	NotBefore, NotAfter time.Time
	// SourceAddrs, when not empty, are the only networks the token may be
	// used from.
	SourceAddrs []netip.Prefix
}

// Key is an issuer signing key (macaroonwire.Key: its secret never
// reaches a log line).
type Key = macaroonwire.Key

// NewKey returns a key with a random 16-byte id and a random 32-byte secret.
func NewKey() Key { return macaroonwire.NewKey() }

// Mint returns a token for the machine described by c, signed with k, and the
// token's id: a random nonce, hex encoded, safe to log and the handle for
// revocation. location names the issuer (normally its URL); verifiers
// refuse tokens for another location.
func Mint(k Key, location string, c Claims) (token, tokenID string, err error) {
	switch {
	case len(k.ID) == 0:
		return "", "", errors.New("machinetoken: mint: empty key id")
	case len(k.Secret) < sha256.Size:
		return "", "", fmt.Errorf("machinetoken: mint: key secret shorter than %d bytes", sha256.Size)
	case c.Org == "" || c.App == "" || c.MachineID == "":
		// A token must be bound to its machine; Verify refuses one that isn't.
		return "", "", errors.New("machinetoken: mint: org, app and machine id are required")
	case len(c.Features) == 0:
		return "", "", errors.New("machinetoken: mint: no features")
	}
	feats, err := canonicalFeatures(c.Features)
	if err != nil {
		return "", "", fmt.Errorf("machinetoken: mint: %w", err)
	}
	win, err := window(c.NotBefore, c.NotAfter)
	if err != nil {
		return "", "", fmt.Errorf("machinetoken: mint: %w", err)
	}
	if win == nil {
		return "", "", errors.New("machinetoken: mint: NotAfter is required")
	}
	cavs := []macaroon.Caveat{
		ptr(orgCaveat(c.Org)),
		ptr(appCaveat(c.App)),
		ptr(machineCaveat(c.MachineID)),
		&feats,
		win,
	}
	if len(c.SourceAddrs) > 0 {
		addrs := make(sourceAddrsCaveat, len(c.SourceAddrs))
		for i, p := range c.SourceAddrs {
			if !p.IsValid() {
				return "", "", errors.New("machinetoken: mint: invalid source prefix")
			}
			addrs[i] = p.Masked().String()
		}
		cavs = append(cavs, &addrs)
	}

	m, err := macaroon.New(k.ID, location, k.Secret)
	if err != nil {
		return "", "", fmt.Errorf("machinetoken: mint: %w", err)
	}
	if err := m.Add(cavs...); err != nil {
		return "", "", fmt.Errorf("machinetoken: mint: %w", err)
	}
	if token, err = m.String(); err != nil {
		return "", "", fmt.Errorf("machinetoken: mint: %w", err)
	}
	return token, hex.EncodeToString(m.Nonce.Rnd), nil
}

// Attenuate narrows a token without the key: the result is valid only inside
// [notBefore, notAfter] (when notAfter is not zero; a zero notBefore leaves
// the start alone) and only for features (when not empty). Caveats are only
// ever added and all must hold, so asking for a wider window or more
// features than the token has changes nothing.
func Attenuate(token string, notBefore, notAfter time.Time, features []Feature) (string, error) {
	return AttenuateScope(token, notBefore, notAfter, Scope{Features: features})
}

// Scope is what an attenuation narrows besides the validity window. The
// zero value narrows nothing.
type Scope struct {
	// Features, when not empty, are the only features left.
	Features []Feature
	// Audiences, when not nil, are the only audiences OIDC tokens may be
	// minted for (DefaultAudience names the org's default), and the copy
	// is refused for every other feature. Several attenuations intersect.
	Audiences []string
	// External, when not empty, names the origin of an upstream that is
	// not the issuer: the copy is refused by wicket on every endpoint.
	External string
	// SPIFFEIDs, when not nil, are the only SPIFFE IDs SVIDs may be issued
	// for, and the copy is refused for everything else (bundle reads
	// included). Several attenuations intersect.
	SPIFFEIDs []string
	// SVIDKinds, when not empty, are the only kinds of SVID request left
	// (the bundle read, X.509-SVIDs, JWT-SVIDs), and the copy is refused
	// for every other feature. Several attenuations intersect.
	SVIDKinds []SVIDKind
}

// AttenuateScope is [Attenuate] with the caveats of s.
func AttenuateScope(token string, notBefore, notAfter time.Time, s Scope) (string, error) {
	m, err := decode(token)
	if err != nil {
		return "", err
	}
	var cavs []macaroon.Caveat
	win, err := window(notBefore, notAfter)
	if err != nil {
		return "", fmt.Errorf("machinetoken: attenuate: %w", err)
	}
	if win != nil {
		cavs = append(cavs, win)
	}
	if len(s.Features) > 0 {
		feats, err := canonicalFeatures(s.Features)
		if err != nil {
			return "", fmt.Errorf("machinetoken: attenuate: %w", err)
		}
		cavs = append(cavs, &feats)
	}
	if s.Audiences != nil {
		auds := audiencesCaveat(slices.Clone(s.Audiences))
		cavs = append(cavs, &auds)
	}
	if s.External != "" {
		cavs = append(cavs, ptr(externalCaveat(s.External)))
	}
	if s.SPIFFEIDs != nil {
		ids := spiffeIDsCaveat(slices.Clone(s.SPIFFEIDs))
		cavs = append(cavs, &ids)
	}
	if len(s.SVIDKinds) > 0 {
		kinds, err := canonicalSVIDKinds(s.SVIDKinds)
		if err != nil {
			return "", fmt.Errorf("machinetoken: attenuate: %w", err)
		}
		cavs = append(cavs, &kinds)
	}
	if err := m.Add(cavs...); err != nil {
		return "", fmt.Errorf("machinetoken: attenuate: %w", err)
	}
	out, err := m.String()
	if err != nil {
		return "", fmt.Errorf("machinetoken: attenuate: %w", err)
	}
	return out, nil
}

// restrictSkew is how far before now a restricted copy becomes valid, so a
// verifier whose clock is slightly behind ours still accepts it.
const restrictSkew = 5 * time.Second

// Restrict returns the short-lived copy of token the agent sends with one
// request: valid from now-5s to now+ttl and only for features (all of the
// token's features when empty). A copy captured upstream expires with ttl.
func Restrict(token string, now time.Time, ttl time.Duration, features []Feature) (string, error) {
	return RestrictScope(token, now, ttl, Scope{Features: features})
}

// RestrictScope is [Restrict] with the caveats of s.
func RestrictScope(token string, now time.Time, ttl time.Duration, s Scope) (string, error) {
	if ttl <= 0 {
		return "", errors.New("machinetoken: restrict: ttl must be positive")
	}
	return AttenuateScope(token, now.Add(-restrictSkew), now.Add(ttl), s)
}

// ParseHeader returns the token from an Authorization header value of the
// form "Bearer <token>" or "FlyV1 <token>" (scheme case-insensitive). It does
// not check the token itself; Verify does.
func ParseHeader(h string) (string, error) {
	tok, err := macaroonwire.ParseHeader(h)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return tok, nil
}

// decode parses an encoded token without checking its signature
// (macaroonwire.Decode: bounded, canonical encoding only).
func decode(token string) (*macaroon.Macaroon, error) {
	m, err := macaroonwire.Decode(token)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return m, nil
}

// window returns the validity caveat for [nb, na], or nil when both are zero.
func window(nb, na time.Time) (*macaroon.ValidityWindow, error) { return macaroonwire.Window(nb, na) }

// canonicalFeatures sorts and deduplicates fs, refusing unknown features so a
// typo cannot mint a token that silently grants nothing.
func canonicalFeatures(fs []Feature) (featuresCaveat, error) {
	for _, f := range fs {
		if !known(f) {
			return nil, fmt.Errorf("unknown feature %q", f)
		}
	}
	var out featuresCaveat
	for _, f := range allFeatures {
		if slices.Contains(fs, f) {
			out = append(out, f)
		}
	}
	return out, nil
}

// canonicalSVIDKinds sorts and deduplicates ks, refusing unknown kinds.
func canonicalSVIDKinds(ks []SVIDKind) (svidKindsCaveat, error) {
	for _, k := range ks {
		if !knownSVIDKind(k) {
			return nil, fmt.Errorf("unknown svid kind %q", k)
		}
	}
	var out svidKindsCaveat
	for _, k := range allSVIDKinds {
		if slices.Contains(ks, k) {
			out = append(out, k)
		}
	}
	return out, nil
}

func known(f Feature) bool { return slices.Contains(allFeatures, f) }

func ptr[T any](v T) *T { return &v }
