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
	Audience []string
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

	var (
		feats   []featuresCaveat
		auds    []audiencesCaveat
		windows int
	)
	for _, c := range cavs.Caveats {
		switch c := c.(type) {
		case *orgCaveat:
			setOnce(&out.Org, string(*c))
		case *appCaveat:
			setOnce(&out.App, string(*c))
		case *machineCaveat:
			setOnce(&out.MachineID, string(*c))
		case *featuresCaveat:
			feats = append(feats, *c)
		case *macaroon.ValidityWindow:
			if na := time.Unix(c.NotAfter, 0).UTC(); windows == 0 || na.Before(out.NotAfter) {
				out.NotAfter = na
			}
			windows++
		case *sourceAddrsCaveat:
			// checked against r.RemoteAddr by Validate below
		case *audiencesCaveat:
			auds = append(auds, *c) // checked against r.Audience by Validate below
		case *externalCaveat:
			// Made for someone else's upstream: never good here, whatever
			// the request (Prohibits refuses it too).
			return nil, invalid("copy made for an external upstream")
		default:
			// Only caveats we understand may pass: the library would let an
			// attestation or another package's registered type through.
			return nil, invalid("unsupported caveat")
		}
	}
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
	if len(auds) > 0 {
		out.Audiences = []string{}
		for _, a := range auds[0] {
			if !slices.Contains(out.Audiences, a) && grantedByAll(auds[1:], a) {
				out.Audiences = append(out.Audiences, a)
			}
		}
	}
	return out, nil
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
	id := &Identity{TokenID: auth.TokenID}
	for _, c := range auth.Caveats.Caveats {
		switch c := c.(type) {
		case *orgCaveat:
			setOnce(&id.Org, string(*c))
		case *appCaveat:
			setOnce(&id.App, string(*c))
		case *machineCaveat:
			setOnce(&id.MachineID, string(*c))
		case *featuresCaveat, *macaroon.ValidityWindow, *sourceAddrsCaveat, *audiencesCaveat, *externalCaveat:
		default:
			return nil, invalid("unsupported caveat")
		}
	}
	if id.Org == "" || id.App == "" || id.MachineID == "" {
		return nil, invalid("not bound to a machine")
	}
	return id, nil
}
