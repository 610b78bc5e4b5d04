package machinetoken

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/superfly/macaroon"
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
	m, err := decode(token)
	if err != nil {
		return nil, err
	}
	if m.Location != v.Location {
		return nil, invalid("wrong location")
	}
	key, ok := v.Keys(m.Nonce.KID)
	if !ok {
		return nil, invalid("unknown key")
	}
	// The library's error is dropped: for some caveats it quotes their bytes.
	cavs, err := m.Verify(key, nil, nil)
	if err != nil {
		return nil, invalid("bad signature")
	}
	// From here on the nonce and caveats are authentic.
	out := &Verified{
		TokenID: hex.EncodeToString(m.Nonce.Rnd),
		KeyID:   hex.EncodeToString(m.Nonce.KID),
	}
	if v.Revoked != nil && v.Revoked(out.TokenID) {
		return nil, invalid("revoked")
	}

	var (
		feats   []featuresCaveat
		auds    []audiencesCaveat
		ids     []spiffeIDsCaveat
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
		case *spiffeIDsCaveat:
			ids = append(ids, *c) // checked against r.SPIFFEID by Validate below
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
		spiffeID: r.SPIFFEID,
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
