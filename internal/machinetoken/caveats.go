package machinetoken

import (
	"errors"
	"net/netip"
	"slices"
	"time"

	"github.com/superfly/macaroon"

	"github.com/wicket-sh/wicket/internal/macaroonwire"
)

// CaveatBase is the first of wicket's caveat type numbers. It sits in the
// library's user-defined range at an arbitrary offset, away from the low
// numbers other users of that range (and the library's own tests) pick. The
// numbers are wire format: never renumber or reuse one.
const CaveatBase = macaroon.CavMinUserDefined + 0x57_1C_00

// Caveat type numbers. The validity window is the library's own
// macaroon.CavValidityWindow.
const (
	CavOrg         = CaveatBase + iota // string: organization
	CavApp                             // string: app
	CavMachine                         // string: machine id
	CavFeatures                        // []string: features granted
	CavSourceAddrs                     // []string: CIDR prefixes the token may be used from
	CavAudiences                       // []string: the only OIDC audiences the token may get
	CavExternal                        // string: the non-wicket upstream a copy was made for
	CavSPIFFEIDs                       // []string: the only SPIFFE IDs the token may get SVIDs for
	CavSVIDKinds                       // []string: the only kinds of SVID request (bundle, x509, jwt) the token may make
)

func init() {
	macaroon.RegisterCaveatType(new(orgCaveat))
	macaroon.RegisterCaveatType(new(appCaveat))
	macaroon.RegisterCaveatType(new(machineCaveat))
	macaroon.RegisterCaveatType(new(featuresCaveat))
	macaroon.RegisterCaveatType(new(sourceAddrsCaveat))
	macaroon.RegisterCaveatType(new(audiencesCaveat))
	macaroon.RegisterCaveatType(new(externalCaveat))
	macaroon.RegisterCaveatType(new(spiffeIDsCaveat))
	macaroon.RegisterCaveatType(new(svidKindsCaveat))
}

// access is what a request looks like to caveats. The identity fields are
// taken from the token's first caveat of each kind; every later caveat of
// that kind must agree, so appending a different org, app or machine can only
// make a token useless, never re-target it.
type access struct {
	now               time.Time
	org, app, machine string
	feature           Feature
	remote            netip.Addr
	audience          []string // asked for, OIDC and JWT-SVID; empty: the default audience (OIDC)
	spiffeID          string   // asked for, SVID issuance only
	svidKind          SVIDKind // asked for, FeatureSVID only
}

func (a *access) Now() time.Time  { return a.now }
func (a *access) Validate() error { return nil }

var (
	errOrg      = errors.New("org mismatch")
	errApp      = errors.New("app mismatch")
	errMachine  = errors.New("machine mismatch")
	errFeature  = errors.New("feature not granted")
	errNoRemote = errors.New("source address unknown")
	errSource   = errors.New("source address not allowed")
	errAudience = errors.New("audience not granted")
	errExternal = errors.New("copy made for an external upstream")
	errSPIFFEID = errors.New("spiffe id not granted")
	errSVIDKind = errors.New("svid kind not granted")
)

// check is the shared body of Prohibits: refuse an access we did not build.
func check(a macaroon.Access, ok func(*access) bool, fail error) error {
	wa, isOurs := a.(*access)
	if !isOurs {
		return macaroon.ErrInvalidAccess
	}
	if !ok(wa) {
		return fail
	}
	return nil
}

type orgCaveat string

func (c *orgCaveat) CaveatType() macaroon.CaveatType { return CavOrg }
func (c *orgCaveat) Name() string                    { return "wicket.Org" }
func (c *orgCaveat) Prohibits(a macaroon.Access) error {
	return check(a, func(a *access) bool { return string(*c) == a.org }, errOrg)
}

type appCaveat string

func (c *appCaveat) CaveatType() macaroon.CaveatType { return CavApp }
func (c *appCaveat) Name() string                    { return "wicket.App" }
func (c *appCaveat) Prohibits(a macaroon.Access) error {
	return check(a, func(a *access) bool { return string(*c) == a.app }, errApp)
}

type machineCaveat string

func (c *machineCaveat) CaveatType() macaroon.CaveatType { return CavMachine }
func (c *machineCaveat) Name() string                    { return "wicket.Machine" }
func (c *machineCaveat) Prohibits(a macaroon.Access) error {
	return check(a, func(a *access) bool { return string(*c) == a.machine }, errMachine)
}

type featuresCaveat []Feature

func (c *featuresCaveat) CaveatType() macaroon.CaveatType { return CavFeatures }
func (c *featuresCaveat) Name() string                    { return "wicket.Features" }
func (c *featuresCaveat) Prohibits(a macaroon.Access) error {
	// An empty or unknown requested feature is in no caveat: refused.
	return check(a, func(a *access) bool { return slices.Contains(*c, a.feature) }, errFeature)
}

// sourceAddrsCaveat holds prefixes as strings so the wire format is plain
// msgpack; one that does not parse matches nothing.
type sourceAddrsCaveat []string

func (c *sourceAddrsCaveat) CaveatType() macaroon.CaveatType { return CavSourceAddrs }
func (c *sourceAddrsCaveat) Name() string                    { return "wicket.SourceAddrs" }
func (c *sourceAddrsCaveat) Prohibits(a macaroon.Access) error {
	wa, ok := a.(*access)
	if !ok {
		return macaroon.ErrInvalidAccess
	}
	if !wa.remote.IsValid() {
		return errNoRemote
	}
	if macaroonwire.AddrAllowed(*c, wa.remote) {
		return nil
	}
	return errSource
}

// DefaultAudience is how an audiences caveat names the default audience of
// an OIDC request that asks for none (the org's issuer URL): the agent does
// not know the URL the issuer calls itself by, so it names the default
// instead of spelling it out.
const DefaultAudience = ""

// audiencesCaveat limits a token to minting OIDC tokens and JWT-SVIDs for
// these audiences: every audience a request asks for must be listed, so
// several such caveats intersect. It refuses every other request: a copy
// bound to an audience is good for that audience's tokens and nothing
// else, so an X.509-SVID (which has no audience) is refused too.
type audiencesCaveat []string

func (c *audiencesCaveat) CaveatType() macaroon.CaveatType { return CavAudiences }
func (c *audiencesCaveat) Name() string                    { return "wicket.Audiences" }
func (c *audiencesCaveat) Prohibits(a macaroon.Access) error {
	return check(a, func(a *access) bool {
		switch {
		case a.feature == FeatureSVID && len(a.audience) == 0:
			// An X.509-SVID, or a JWT-SVID without an audience (which
			// the issuer refuses anyway): not what the copy is for.
			return false
		case a.feature != FeatureOIDC && a.feature != FeatureSVID:
			return false
		}
		if len(a.audience) == 0 {
			return slices.Contains(*c, DefaultAudience)
		}
		for _, aud := range a.audience {
			if aud == DefaultAudience || !slices.Contains(*c, aud) {
				return false
			}
		}
		return true
	}, errAudience)
}

// externalCaveat marks a copy the agent sent to an upstream that is not
// the issuer (a proxy route with its own upstream): wicket refuses it
// everywhere, so a copy that upstream leaks or reflects is worth nothing
// to the issuer. The value names the upstream's origin, for the log.
type externalCaveat string

func (c *externalCaveat) CaveatType() macaroon.CaveatType { return CavExternal }
func (c *externalCaveat) Name() string                    { return "wicket.External" }
func (c *externalCaveat) Prohibits(a macaroon.Access) error {
	return check(a, func(*access) bool { return false }, errExternal)
}

// spiffeIDsCaveat limits a token to SVIDs (X.509 or JWT) for these SPIFFE
// IDs: the ID a request asks for must be listed, so several such caveats
// intersect. It refuses every other request (other features, and an SVID
// request that names no ID): a copy the agent made for one workload's SVID
// buys, captured, an SVID for that workload and nothing else.
type spiffeIDsCaveat []string

func (c *spiffeIDsCaveat) CaveatType() macaroon.CaveatType { return CavSPIFFEIDs }
func (c *spiffeIDsCaveat) Name() string                    { return "wicket.SPIFFEIDs" }
func (c *spiffeIDsCaveat) Prohibits(a macaroon.Access) error {
	return check(a, func(a *access) bool {
		return a.feature == FeatureSVID && a.spiffeID != "" && slices.Contains(*c, a.spiffeID)
	}, errSPIFFEID)
}

// svidKindsCaveat limits a token to these kinds of SVID request: the kind
// a request makes must be listed, so several such caveats intersect. It
// refuses every other feature and an SVID request of no known kind. The
// agent binds each copy to the one kind it was made for, so a captured
// bundle copy buys no SVID and an X.509 copy no JWT-SVID. A token without
// the caveat (every token minted before it existed) keeps every kind.
type svidKindsCaveat []SVIDKind

func (c *svidKindsCaveat) CaveatType() macaroon.CaveatType { return CavSVIDKinds }
func (c *svidKindsCaveat) Name() string                    { return "wicket.SVIDKinds" }
func (c *svidKindsCaveat) Prohibits(a macaroon.Access) error {
	return check(a, func(a *access) bool {
		return a.feature == FeatureSVID && knownSVIDKind(a.svidKind) && slices.Contains(*c, a.svidKind)
	}, errSVIDKind)
}
