package admintoken

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/superfly/macaroon"

	"github.com/wicket-sh/wicket/internal/macaroonwire"
)

// Verifier checks admin tokens. It holds no state of its own and is safe
// for concurrent use if Keys and Revoked are.
type Verifier struct {
	// Keys returns the root key for a key id (required).
	Keys func(keyID []byte) (macaroon.SigningKey, bool)
	// Revoked reports whether a token id is revoked; nil revokes nothing.
	Revoked func(tokenID string) bool
}

// Verified is a token that authenticated for one request: its signature
// chain, validity window, revocation and source addresses checked. What
// it may do is asked with Allow and Sees, which check every caveat again.
type Verified struct {
	TokenID, KeyID string    // hex; safe to log
	NotAfter       time.Time // earliest end of all validity windows

	cavs   *macaroon.CaveatSet
	now    time.Time
	remote netip.Addr
}

// Verify authenticates token for a request made at now from remote (the
// zero address: unknown, refused by tokens bound to source addresses).
// Every failure wraps ErrInvalid and never contains token bytes.
func (v *Verifier) Verify(token string, now time.Time, remote netip.Addr) (*Verified, error) {
	if v.Keys == nil {
		return nil, errors.New("admintoken: verifier has no keys")
	}
	auth, err := macaroonwire.Authenticate(token, Location, v.Keys, v.Revoked)
	if err != nil {
		return nil, invalid(err)
	}
	out := &Verified{TokenID: auth.TokenID, KeyID: auth.KeyID, cavs: auth.Caveats, now: now, remote: remote}
	windows := 0
	for _, c := range auth.Caveats.Caveats {
		switch c := c.(type) {
		case *macaroon.ValidityWindow:
			if na := time.Unix(c.NotAfter, 0).UTC(); windows == 0 || na.Before(out.NotAfter) {
				out.NotAfter = na
			}
			windows++
		case *orgsCaveat, *appsCaveat, *regionsCaveat, *opsCaveat, *maxTTLCaveat, *sourceAddrsCaveat:
		default:
			// Only caveats we understand may pass: a machine token's
			// caveats, an attestation or another package's registered
			// type would be let through by the library.
			return nil, invalid(errors.New("unsupported caveat"))
		}
	}
	if windows == 0 {
		return nil, invalid(errors.New("no validity window"))
	}
	if err := auth.Caveats.Validate(&access{now: now, remote: remote, mode: modeAuth}); err != nil {
		return nil, invalid(err)
	}
	return out, nil
}

// Allow reports whether the token grants op on t: nil, or an error
// wrapping ErrForbidden (ErrInvalid if the token stopped being valid
// meanwhile, which cannot happen within one request's clock).
func (v *Verified) Allow(op Op, t Target) error {
	if !slices.Contains(Ops(), op) {
		return fmt.Errorf("%w: unknown operation", ErrForbidden)
	}
	return v.check(&access{now: v.now, remote: v.remote, op: op, target: t})
}

// Sees reports whether a machine of t's org, app and region is in the
// token's scope, whatever the operations it grants: a machine it does not
// see is not found, not forbidden.
func (v *Verified) Sees(t Target) bool {
	t.TTL = 0
	return v.check(&access{now: v.now, remote: v.remote, mode: modeSees, target: t}) == nil
}

// AllowOp reports whether the token grants op on some target at all (nil,
// or an error wrapping ErrForbidden): a listing needs machine.get before
// it is filtered with Sees.
func (v *Verified) AllowOp(op Op) error {
	if !slices.Contains(Ops(), op) {
		return fmt.Errorf("%w: unknown operation", ErrForbidden)
	}
	return v.check(&access{now: v.now, remote: v.remote, mode: modeOp, op: op})
}

func (v *Verified) check(a *access) error {
	if err := v.cavs.Validate(a); err != nil {
		if errors.Is(err, errNoRemote) || errors.Is(err, errSource) {
			return invalid(err)
		}
		return fmt.Errorf("%w: %w", ErrForbidden, err)
	}
	return nil
}

// Scope is the token's effective scope: each list the intersection of its
// caveats of that kind (nil: no such caveat, anything goes), the smallest
// TTL cap (MintsNone when it is 0 or less: MaxMachineTTL 0 would read as
// no cap at all) and the window's end.
func (v *Verified) Scope() Scope {
	var s Scope
	var orgs, apps, regions, ops, addrs [][]string
	hasCap := false
	for _, c := range v.cavs.Caveats {
		switch c := c.(type) {
		case *orgsCaveat:
			orgs = append(orgs, *c)
		case *appsCaveat:
			apps = append(apps, *c)
		case *regionsCaveat:
			regions = append(regions, *c)
		case *opsCaveat:
			ops = append(ops, *c)
		case *sourceAddrsCaveat:
			addrs = append(addrs, *c)
		case *maxTTLCaveat:
			if d := time.Duration(*c) * time.Second; !hasCap || d < s.MaxMachineTTL {
				s.MaxMachineTTL, hasCap = d, true
			}
		}
	}
	if hasCap && s.MaxMachineTTL <= 0 {
		// Every machine token has a positive life: none passes this cap.
		s.MaxMachineTTL, s.MintsNone = 0, true
	}
	s.Orgs, s.Apps, s.Regions = intersect(orgs), intersect(apps), intersect(regions)
	for _, o := range intersect(ops) {
		s.Ops = append(s.Ops, Op(o))
	}
	if ops != nil && s.Ops == nil {
		s.Ops = []Op{}
	}
	// Source prefixes of several caveats do not intersect as strings;
	// each caveat must admit the address, so show the first caveat's.
	if len(addrs) > 0 {
		for _, a := range addrs[0] {
			if p, err := netip.ParsePrefix(a); err == nil {
				s.SourceAddrs = append(s.SourceAddrs, p)
			}
		}
	}
	s.NotAfter = v.NotAfter
	return s
}

// intersect returns the values in every list (nil for no lists).
func intersect(lists [][]string) []string {
	if len(lists) == 0 {
		return nil
	}
	out := []string{}
	for _, x := range lists[0] {
		in := true
		for _, l := range lists[1:] {
			in = in && slices.Contains(l, x)
		}
		if in && !slices.Contains(out, x) {
			out = append(out, x)
		}
	}
	return out
}
