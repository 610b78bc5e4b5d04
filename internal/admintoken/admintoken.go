// Package admintoken mints, attenuates and verifies the issuer's remote
// admin tokens: macaroons (github.com/superfly/macaroon) that let a host
// orchestrator manage machines over the issuer's remote admin API.
//
// The issuer mints a root token (a validity window, and whatever scope the
// operator asked for at mint). Its holder narrows it offline with
// [Attenuate] to orgs, apps, regions, operations, the longest machine token
// it may mint, a shorter window and source addresses. Caveats are only ever
// added and every one must hold, so a copy can never do more than the token
// it was made from. Several caveats of one kind intersect.
//
// Admin tokens are told apart from machine tokens by their location
// ([Location]), their keys (one root key per minted admin token) and their
// caveat numbers: each verifier refuses the other's caveats. Errors wrap
// [ErrInvalid] (authentication: the caller gets 401) or [ErrForbidden]
// (the scope: 403) and never contain token bytes or key material.
package admintoken

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/superfly/macaroon"

	"github.com/wicket-sh/wicket/internal/macaroonwire"
)

// Location is the macaroon location of admin tokens; machine tokens use
// another, so neither verifier accepts the other's tokens.
const Location = "wicket-admin"

var (
	// ErrInvalid is wrapped by every error about a token that cannot be
	// used at all: malformed, tampered, unknown key, revoked, expired,
	// used from an address it does not allow.
	ErrInvalid = errors.New("admintoken: invalid token")
	// ErrForbidden is wrapped by every refusal of a valid token's scope:
	// an operation, org, app, region or TTL it does not grant.
	ErrForbidden = errors.New("admintoken: outside the token's scope")
)

func invalid(err error) error { return fmt.Errorf("%w: %w", ErrInvalid, err) }

// Op names one remote admin operation.
type Op string

// The operations a token can grant.
const (
	OpMachineAdd    Op = "machine.add"
	OpMachineUpdate Op = "machine.update"
	OpMachineRemove Op = "machine.remove"
	OpMachineGet    Op = "machine.get" // get one machine and list them
	OpTokenMint     Op = "token.mint"
	OpTokenRevoke   Op = "token.revoke"
)

// Ops returns every operation, in canonical order.
func Ops() []Op {
	return []Op{OpMachineAdd, OpMachineUpdate, OpMachineRemove, OpMachineGet, OpTokenMint, OpTokenRevoke}
}

func opNames() string {
	var b strings.Builder
	for i, o := range Ops() {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(string(o))
	}
	return b.String()
}

// Scope is what a token is narrowed to. Empty fields narrow nothing.
type Scope struct {
	Orgs, Apps, Regions []string
	Ops                 []Op
	// MaxMachineTTL, when positive, is the longest machine token the
	// holder may mint (at registration or later).
	MaxMachineTTL time.Duration
	// MintsNone caps machine tokens at 0: the holder may mint none, and so
	// register no machine (registration mints one). Verified.Scope sets
	// it for a cap caveat of 0 or less, whatever other caps say, and
	// leaves MaxMachineTTL 0; Attenuate adds such a caveat.
	MintsNone bool
	// NotBefore and NotAfter narrow the validity window (NotAfter zero:
	// unchanged; NotBefore zero: no lower bound added).
	NotBefore, NotAfter time.Time
	// SourceAddrs, when not empty, are the only networks the token may be
	// used from.
	SourceAddrs []netip.Prefix
}

// nameRE is the syntax of org, app and region names (the issuer's own
// validation is the same or narrower): a caveat on anything else could
// never match, so it is a mistake to refuse at attenuation.
var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// caveats returns s as caveats, refusing values that could never match.
func (s Scope) caveats() ([]macaroon.Caveat, error) {
	var cavs []macaroon.Caveat
	win, err := macaroonwire.Window(s.NotBefore, s.NotAfter)
	if err != nil {
		return nil, err
	}
	if win != nil {
		cavs = append(cavs, win)
	}
	for _, l := range []struct {
		name string
		vals []string
		cav  func([]string) macaroon.Caveat
	}{
		{"org", s.Orgs, func(v []string) macaroon.Caveat { c := orgsCaveat(v); return &c }},
		{"app", s.Apps, func(v []string) macaroon.Caveat { c := appsCaveat(v); return &c }},
		{"region", s.Regions, func(v []string) macaroon.Caveat { c := regionsCaveat(v); return &c }},
	} {
		if len(l.vals) == 0 {
			continue
		}
		for _, v := range l.vals {
			if !nameRE.MatchString(v) {
				return nil, fmt.Errorf("%s: want lowercase letters, digits and '-', at most 63", l.name)
			}
		}
		cavs = append(cavs, l.cav(sortedUnique(l.vals)))
	}
	if len(s.Ops) > 0 {
		ops := opsCaveat{}
		for _, o := range Ops() {
			if slices.Contains(s.Ops, o) {
				ops = append(ops, string(o))
			}
		}
		for _, o := range s.Ops {
			if !slices.Contains(Ops(), o) {
				// A typo must not silently grant nothing (or be mistaken
				// for a grant): refuse it.
				return nil, fmt.Errorf("ops: unknown operation; want %s", opNames())
			}
		}
		cavs = append(cavs, &ops)
	}
	if s.MaxMachineTTL < 0 || (s.MaxMachineTTL > 0 && s.MaxMachineTTL < time.Second) {
		return nil, errors.New("max machine token ttl: want at least 1s")
	}
	if s.MaxMachineTTL > 0 {
		c := maxTTLCaveat(int64(s.MaxMachineTTL / time.Second))
		cavs = append(cavs, &c)
	}
	if s.MintsNone {
		c := maxTTLCaveat(0)
		cavs = append(cavs, &c)
	}
	if len(s.SourceAddrs) > 0 {
		addrs := make(sourceAddrsCaveat, len(s.SourceAddrs))
		for i, p := range s.SourceAddrs {
			if !p.IsValid() {
				return nil, errors.New("invalid source prefix")
			}
			addrs[i] = p.Masked().String()
		}
		cavs = append(cavs, &addrs)
	}
	return cavs, nil
}

func sortedUnique(vs []string) []string {
	out := slices.Clone(vs)
	slices.Sort(out)
	return slices.Compact(out)
}

// Mint returns a new admin token signed with k and its id (hex, safe to
// log, the handle for listing and revocation). The token is valid in
// [s.NotBefore, s.NotAfter] (NotAfter required) and narrowed to the rest
// of s.
func Mint(k macaroonwire.Key, s Scope) (token, tokenID string, err error) {
	switch {
	case len(k.ID) == 0:
		return "", "", errors.New("admintoken: mint: empty key id")
	case len(k.Secret) < 32:
		return "", "", errors.New("admintoken: mint: key secret shorter than 32 bytes")
	case s.NotAfter.IsZero():
		return "", "", errors.New("admintoken: mint: NotAfter is required")
	}
	cavs, err := s.caveats()
	if err != nil {
		return "", "", fmt.Errorf("admintoken: mint: %w", err)
	}
	m, err := macaroon.New(k.ID, Location, k.Secret)
	if err != nil {
		return "", "", fmt.Errorf("admintoken: mint: %w", err)
	}
	if err := m.Add(cavs...); err != nil {
		return "", "", fmt.Errorf("admintoken: mint: %w", err)
	}
	if token, err = m.String(); err != nil {
		return "", "", fmt.Errorf("admintoken: mint: %w", err)
	}
	return token, fmt.Sprintf("%x", m.Nonce.Rnd), nil
}

// Attenuate narrows token offline: the copy is good only inside s as well
// as inside everything token already allowed. It needs no key and does not
// check the signature (the issuer does); asking for more than the token has
// changes nothing.
func Attenuate(token string, s Scope) (string, error) {
	m, err := macaroonwire.Decode(token)
	if err != nil {
		return "", invalid(err)
	}
	if m.Location != Location {
		return "", invalid(macaroonwire.ErrLocation)
	}
	cavs, err := s.caveats()
	if err != nil {
		return "", fmt.Errorf("admintoken: attenuate: %w", err)
	}
	if len(cavs) == 0 {
		return "", errors.New("admintoken: attenuate: nothing to narrow")
	}
	if err := m.Add(cavs...); err != nil {
		return "", fmt.Errorf("admintoken: attenuate: %w", err)
	}
	out, err := m.String()
	if err != nil {
		return "", fmt.Errorf("admintoken: attenuate: %w", err)
	}
	return out, nil
}

// ParseHeader returns the token from an Authorization header value
// ("Bearer <token>" or "FlyV1 <token>"); errors wrap ErrInvalid.
func ParseHeader(h string) (string, error) {
	tok, err := macaroonwire.ParseHeader(h)
	if err != nil {
		return "", invalid(err)
	}
	return tok, nil
}
