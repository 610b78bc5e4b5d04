package machinetoken

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/superfly/macaroon"

	"github.com/wicket-sh/wicket/internal/macaroonwire"
)

// Request is what a token is being used for.
type Request struct {
	Now        time.Time  // zero means time.Now()
	RemoteAddr netip.Addr // zero means unknown: refused by tokens bound to source addresses
	Feature    Feature    // required
	App        string     // when set, the token must be for this app
	// Audience is what an OIDC request asks for; empty means the default
	// audience. Audience caveats refuse any audience they do not list.
	// A JWT-SVID request names its audiences here too.
	Audience []string
	// SPIFFEID is the SPIFFE ID an SVID request (FeatureSVID) asks for;
	// empty for a bundle read. SPIFFE ID caveats refuse any ID they do
	// not list.
	SPIFFEID string
	// SVIDKind is the kind of SVID request (FeatureSVID), set by the
	// issuer per endpoint. SVID-kind caveats refuse any kind they do not
	// list; a FeatureSVID request without one is refused by them.
	SVIDKind SVIDKind
}

// Verified is what a valid token says.
type Verified struct {
	TokenID, KeyID      string // hex; safe to log
	Org, App, MachineID string
	Features            []Feature // granted by every caveat, i.e. after attenuation
	NotAfter            time.Time // earliest end of all validity windows
	// Audiences, when not nil, are the only OIDC audiences the token may
	// get: those listed by every audience caveat (DefaultAudience names
	// the org's default).
	Audiences []string
	// SPIFFEIDs, when not nil, are the only SPIFFE IDs the token may get
	// SVIDs for: those listed by every SPIFFE ID caveat.
	SPIFFEIDs []string
	// SVIDKinds, when not nil, are the only kinds of SVID request the
	// token may make: those listed by every SVID-kinds caveat.
	SVIDKinds []SVIDKind
}

// Verifier checks tokens minted by one issuer. It holds no state of its own
// and is safe for concurrent use if Keys and Revoked are.
type Verifier struct {
	// Location must equal the location the token was minted for. The
	// library does not sign the location, so this sorts tokens rather than
	// authenticates them; keys do that.
	Location string
	// Keys returns the signing key for a key id (required).
	Keys func(keyID []byte) (macaroon.SigningKey, bool)
	// Revoked reports whether a token id is revoked; nil revokes nothing.
	Revoked func(tokenID string) bool
}

// Verify checks token against r and returns what it grants. Every failure
// due to the token or the request wraps ErrInvalid, and its reason never
// contains token bytes. The caller still checks that MachineID is
// registered: removing a machine revokes its tokens.
func (v *Verifier) Verify(token string, r Request) (*Verified, error) {
	if v.Keys == nil {
		return nil, errors.New("machinetoken: verifier has no keys")
	}
	auth, err := macaroonwire.Authenticate(token, v.Location, v.Keys, v.Revoked)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	cavs := auth.Caveats
	// From here on the nonce and caveats are authentic.
	out := &Verified{TokenID: auth.TokenID, KeyID: auth.KeyID}
	p, err := sortCaveats(cavs)
	if err != nil {
		return nil, err
	}
	if p.external {
		// Made for someone else's upstream: never good here, whatever
		// the request (Prohibits refuses it too).
		return nil, invalid("copy made for an external upstream")
	}
	out.Org, out.App, out.MachineID, out.NotAfter = p.org, p.app, p.machine, p.notAfter
	feats, auds, ids, kinds, windows := p.feats, p.auds, p.ids, p.kinds, p.windows
	switch {
	case out.Org == "" || out.App == "" || out.MachineID == "":
		return nil, invalid("not bound to a machine")
	case len(feats) == 0:
		return nil, invalid("no features caveat")
	case windows == 0:
		return nil, invalid("no validity window")
	case r.App != "" && r.App != out.App:
		return nil, invalid("app mismatch")
	}

	a := &access{
		now:      r.Now,
		org:      out.Org,
		app:      out.App,
		machine:  out.MachineID,
		feature:  r.Feature,
		remote:   r.RemoteAddr,
		audience: r.Audience,
		spiffeID: r.SPIFFEID,
		svidKind: r.SVIDKind,
	}
	if a.now.IsZero() {
		a.now = time.Now()
	}
	if err := cavs.Validate(a); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}

	for _, f := range allFeatures {
		if grantedByAll(feats, f) {
			out.Features = append(out.Features, f)
		}
	}
	out.Audiences = intersect(auds)
	out.SPIFFEIDs = intersect(ids)
	if len(kinds) > 0 {
		out.SVIDKinds = []SVIDKind{}
		for _, k := range allSVIDKinds {
			if grantedByAll(kinds, k) {
				out.SVIDKinds = append(out.SVIDKinds, k)
			}
		}
	}
	return out, nil
}

// intersect returns the values every caveat in cs lists, in the first
// caveat's order, or nil when there is no caveat.
func intersect[S ~[]string](cs []S) []string {
	if len(cs) == 0 {
		return nil
	}
	out := []string{}
	for _, v := range cs[0] {
		if !slices.Contains(out, v) && grantedByAll(cs[1:], v) {
			out = append(out, v)
		}
	}
	return out
}

// setOnce keeps the first value; later caveats are checked against it.
func setOnce(dst *string, v string) {
	if *dst == "" {
		*dst = v
	}
}

// grantedByAll reports whether every caveat in cs lists v.
func grantedByAll[S ~[]T, T comparable](cs []S, v T) bool {
	for _, c := range cs {
		if !slices.Contains(c, v) {
			return false
		}
	}
	return true
}

// Identity is whose a token is, as its authentic caveats say.
type Identity struct {
	TokenID, Org, App, MachineID string
}

// Identify checks token's signature chain and returns whose it is, without
// checking its validity window, revocation or any request: revoking a
// token needs to know its machine, even for a token that no longer works.
// A token with a caveat this package does not know is refused, as by
// Verify.
func (v *Verifier) Identify(token string) (*Identity, error) {
	if v.Keys == nil {
		return nil, errors.New("machinetoken: verifier has no keys")
	}
	auth, err := macaroonwire.Authenticate(token, v.Location, v.Keys, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	p, err := sortCaveats(auth.Caveats)
	if err != nil {
		return nil, err
	}
	id := &Identity{TokenID: auth.TokenID, Org: p.org, App: p.app, MachineID: p.machine}
	if id.Org == "" || id.App == "" || id.MachineID == "" {
		return nil, invalid("not bound to a machine")
	}
	return id, nil
}

// sorted is an authentic token's caveats, by kind.
type sorted struct {
	org, app, machine string // from the first caveat of each kind
	feats             []featuresCaveat
	auds              []audiencesCaveat
	ids               []spiffeIDsCaveat
	kinds             []svidKindsCaveat
	windows           int
	notAfter          time.Time // earliest end of all validity windows
	external          bool
}

// sortCaveats sorts cavs by kind and refuses any type this package does
// not know: the library would let an attestation or another package's
// registered type (an admin token's, say) through. Verify and Identify
// both read a token through it.
func sortCaveats(cavs *macaroon.CaveatSet) (*sorted, error) {
	p := &sorted{}
	for _, c := range cavs.Caveats {
		switch c := c.(type) {
		case *orgCaveat:
			setOnce(&p.org, string(*c))
		case *appCaveat:
			setOnce(&p.app, string(*c))
		case *machineCaveat:
			setOnce(&p.machine, string(*c))
		case *featuresCaveat:
			p.feats = append(p.feats, *c)
		case *macaroon.ValidityWindow:
			if na := time.Unix(c.NotAfter, 0).UTC(); p.windows == 0 || na.Before(p.notAfter) {
				p.notAfter = na
			}
			p.windows++
		case *sourceAddrsCaveat:
			// checked against the request's address by Validate
		case *audiencesCaveat:
			p.auds = append(p.auds, *c) // checked against the request's audiences by Validate
		case *spiffeIDsCaveat:
			p.ids = append(p.ids, *c) // checked against the request's SPIFFE ID by Validate
		case *svidKindsCaveat:
			p.kinds = append(p.kinds, *c) // checked against the request's kind by Validate
		case *externalCaveat:
			p.external = true
		default:
			return nil, invalid("unsupported caveat")
		}
	}
	return p, nil
}
