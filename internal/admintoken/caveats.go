package admintoken

import (
	"errors"
	"net/netip"
	"slices"
	"time"

	"github.com/superfly/macaroon"

	"github.com/wicket-sh/wicket/internal/macaroonwire"
)

// CaveatBase is the first of the admin tokens' caveat type numbers: in the
// library's user-defined range, 0x100 above machinetoken.CaveatBase, so the
// two sets never overlap. The numbers are wire format: never renumber or
// reuse one.
const CaveatBase = macaroon.CavMinUserDefined + 0x57_1D_00

// Caveat type numbers. The validity window is the library's own
// macaroon.CavValidityWindow.
const (
	CavOrgs          = CaveatBase + iota // []string: the orgs whose machines the token may see
	CavApps                              // []string: the apps
	CavRegions                           // []string: the regions
	CavOps                               // []string: the operations granted
	CavMaxMachineTTL                     // int64 seconds: the longest machine token it may mint
	CavSourceAddrs                       // []string: CIDR prefixes the token may be used from
)

func init() {
	macaroon.RegisterCaveatType(new(orgsCaveat))
	macaroon.RegisterCaveatType(new(appsCaveat))
	macaroon.RegisterCaveatType(new(regionsCaveat))
	macaroon.RegisterCaveatType(new(opsCaveat))
	macaroon.RegisterCaveatType(new(maxTTLCaveat))
	macaroon.RegisterCaveatType(new(sourceAddrsCaveat))
}

// Target is the machine an operation is about: the one it registers,
// changes, removes, reads or mints for.
type Target struct {
	Org, App, Region string
	// TTL is the lifetime of the machine token the operation mints; 0
	// when it mints none.
	TTL time.Duration
}

// mode is which caveats an access is checked against. The validity window
// and the source addresses apply in every mode.
type mode int

const (
	modeFull mode = iota // op on target: every caveat
	modeAuth             // the request before it is known what it asks: no scope caveat
	modeSees             // is target in scope, whatever the operations
	modeOp               // is op granted, whatever the target
)

// access is what a request looks like to caveats.
type access struct {
	now    time.Time
	remote netip.Addr
	mode   mode
	op     Op
	target Target
}

func (a *access) Now() time.Time  { return a.now }
func (a *access) Validate() error { return nil }

var (
	errOrg      = errors.New("org not granted")
	errApp      = errors.New("app not granted")
	errRegion   = errors.New("region not granted")
	errOp       = errors.New("operation not granted")
	errTTL      = errors.New("machine token ttl above the token's cap")
	errNoRemote = errors.New("source address unknown")
	errSource   = errors.New("source address not allowed")
)

// scoped is the shared body of the scope caveats' Prohibits: refuse an
// access we did not build; pass the modes the caveat does not apply in
// (isOp: an operations caveat); else ok decides.
func scoped(a macaroon.Access, isOp bool, ok func(*access) bool, fail error) error {
	wa, isOurs := a.(*access)
	if !isOurs {
		return macaroon.ErrInvalidAccess
	}
	switch {
	case wa.mode == modeAuth, wa.mode == modeSees && isOp, wa.mode == modeOp && !isOp:
		return nil
	case ok(wa):
		return nil
	}
	return fail
}

type orgsCaveat []string

func (c *orgsCaveat) CaveatType() macaroon.CaveatType { return CavOrgs }
func (c *orgsCaveat) Name() string                    { return "wicket.admin.Orgs" }
func (c *orgsCaveat) Prohibits(a macaroon.Access) error {
	return scoped(a, false, func(a *access) bool { return slices.Contains(*c, a.target.Org) }, errOrg)
}

type appsCaveat []string

func (c *appsCaveat) CaveatType() macaroon.CaveatType { return CavApps }
func (c *appsCaveat) Name() string                    { return "wicket.admin.Apps" }
func (c *appsCaveat) Prohibits(a macaroon.Access) error {
	return scoped(a, false, func(a *access) bool { return slices.Contains(*c, a.target.App) }, errApp)
}

type regionsCaveat []string

func (c *regionsCaveat) CaveatType() macaroon.CaveatType { return CavRegions }
func (c *regionsCaveat) Name() string                    { return "wicket.admin.Regions" }
func (c *regionsCaveat) Prohibits(a macaroon.Access) error {
	// A machine without a region is in no regions caveat.
	return scoped(a, false, func(a *access) bool { return slices.Contains(*c, a.target.Region) }, errRegion)
}

type opsCaveat []string

func (c *opsCaveat) CaveatType() macaroon.CaveatType { return CavOps }
func (c *opsCaveat) Name() string                    { return "wicket.admin.Ops" }
func (c *opsCaveat) Prohibits(a macaroon.Access) error {
	return scoped(a, true, func(a *access) bool { return slices.Contains(*c, string(a.op)) }, errOp)
}

type maxTTLCaveat int64

func (c *maxTTLCaveat) CaveatType() macaroon.CaveatType { return CavMaxMachineTTL }
func (c *maxTTLCaveat) Name() string                    { return "wicket.admin.MaxMachineTTL" }
func (c *maxTTLCaveat) Prohibits(a macaroon.Access) error {
	return scoped(a, false, func(a *access) bool { return a.target.TTL <= time.Duration(*c)*time.Second }, errTTL)
}

// sourceAddrsCaveat holds prefixes as strings so the wire format is plain
// msgpack; one that does not parse matches nothing. It applies to every
// access, the authentication step included.
type sourceAddrsCaveat []string

func (c *sourceAddrsCaveat) CaveatType() macaroon.CaveatType { return CavSourceAddrs }
func (c *sourceAddrsCaveat) Name() string                    { return "wicket.admin.SourceAddrs" }
func (c *sourceAddrsCaveat) Prohibits(a macaroon.Access) error {
	wa, ok := a.(*access)
	if !ok {
		return macaroon.ErrInvalidAccess
	}
	if !wa.remote.IsValid() {
		return errNoRemote
	}
	if !macaroonwire.AddrAllowed(*c, wa.remote) {
		return errSource
	}
	return nil
}
