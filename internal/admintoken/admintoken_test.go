package admintoken

import (
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/superfly/macaroon"

	"github.com/wicket-sh/wicket/internal/macaroonwire"
	"github.com/wicket-sh/wicket/internal/machinetoken"
)

var (
	t0      = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	testKey = macaroonwire.NewKey()
	inNet   = netip.MustParseAddr("10.0.0.7")
	outNet  = netip.MustParseAddr("192.0.2.1")
)

func verifier(revoked ...string) *Verifier {
	return &Verifier{
		Keys: func(id []byte) (macaroon.SigningKey, bool) {
			if string(id) == string(testKey.ID) {
				return testKey.Secret, true
			}
			return nil, false
		},
		Revoked: func(id string) bool {
			for _, r := range revoked {
				if r == id {
					return true
				}
			}
			return false
		},
	}
}

func root(t *testing.T) (string, string) {
	t.Helper()
	tok, id, err := Mint(testKey, Scope{NotAfter: t0.Add(1000 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	return tok, id
}

// fra is the example: acme, region fra, add and mint, 24h cap.
func fra(t *testing.T, tok string) string {
	t.Helper()
	out, err := Attenuate(tok, Scope{Orgs: []string{"acme"}, Regions: []string{"fra"},
		Ops: []Op{OpMachineAdd, OpTokenMint}, MaxMachineTTL: 24 * time.Hour,
		NotAfter: t0.Add(720 * time.Hour), SourceAddrs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")}})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestScope_NarrowsAndRefuses(t *testing.T) {
	tok, id := root(t)
	v, err := verifier().Verify(fra(t, tok), t0, inNet)
	if err != nil {
		t.Fatal(err)
	}
	if v.TokenID != id {
		t.Fatalf("attenuated copy has id %s, want the root's %s", v.TokenID, id)
	}
	ok := Target{Org: "acme", App: "web", Region: "fra", TTL: 24 * time.Hour}
	for _, op := range []Op{OpMachineAdd, OpTokenMint} {
		if err := v.Allow(op, ok); err != nil {
			t.Errorf("Allow(%s, in scope) = %v", op, err)
		}
	}
	for name, tc := range map[string]struct {
		op Op
		t  Target
	}{
		"region ord":     {OpMachineAdd, Target{Org: "acme", App: "web", Region: "ord"}},
		"org other":      {OpMachineAdd, Target{Org: "other", App: "web", Region: "fra"}},
		"no region":      {OpMachineAdd, Target{Org: "acme", App: "web"}},
		"machine.remove": {OpMachineRemove, Target{Org: "acme", App: "web", Region: "fra"}},
		"ttl above cap":  {OpTokenMint, Target{Org: "acme", App: "web", Region: "fra", TTL: 25 * time.Hour}},
		"unknown op":     {Op("machine.*"), ok},
	} {
		if err := v.Allow(tc.op, tc.t); !errors.Is(err, ErrForbidden) {
			t.Errorf("%s: Allow = %v, want ErrForbidden", name, err)
		}
	}
	if v.AllowOp(OpMachineAdd) != nil || !errors.Is(v.AllowOp(OpMachineGet), ErrForbidden) {
		t.Error("AllowOp does not follow the operations caveat")
	}
	if !v.Sees(Target{Org: "acme", App: "db", Region: "fra"}) || v.Sees(Target{Org: "acme", Region: "ord"}) {
		t.Error("Sees does not follow the org and region caveats")
	}
	s := v.Scope()
	if strings.Join(s.Orgs, ",") != "acme" || s.Apps != nil || s.MaxMachineTTL != 24*time.Hour || !s.NotAfter.Equal(t0.Add(720*time.Hour)) {
		t.Errorf("Scope = %+v", s)
	}
}

func TestAttenuate_CannotWiden(t *testing.T) {
	tok, _ := root(t)
	narrow := fra(t, tok)
	// Appending a wider scope intersects: still acme and fra only.
	wide, err := Attenuate(narrow, Scope{Orgs: []string{"acme", "other"}, Regions: []string{"fra", "ord"}, Ops: Ops(), MaxMachineTTL: 1000 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	v, err := verifier().Verify(wide, t0, inNet)
	if err != nil {
		t.Fatal(err)
	}
	for _, tg := range []Target{{Org: "other", App: "web", Region: "fra"}, {Org: "acme", App: "web", Region: "ord"}, {Org: "acme", App: "web", Region: "fra", TTL: 48 * time.Hour}} {
		if err := v.Allow(OpMachineAdd, tg); !errors.Is(err, ErrForbidden) {
			t.Errorf("widened copy: Allow(%+v) = %v, want ErrForbidden", tg, err)
		}
	}
	if err := v.Allow(OpMachineRemove, Target{Org: "acme", App: "web", Region: "fra"}); !errors.Is(err, ErrForbidden) {
		t.Errorf("widened copy grants machine.remove: %v", err)
	}

	// Removing the last caveat (re-encoding without it) breaks the chain.
	m, err := macaroonwire.Decode(narrow)
	if err != nil {
		t.Fatal(err)
	}
	m.UnsafeCaveats.Caveats = m.UnsafeCaveats.Caveats[:len(m.UnsafeCaveats.Caveats)-1]
	cut, err := m.String()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := verifier().Verify(cut, t0, inNet); !errors.Is(err, ErrInvalid) {
		t.Errorf("caveat removed: Verify = %v, want ErrInvalid", err)
	}
	// Flipping any byte of the encoding fails.
	raw, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(narrow, "fm2_"))
	for i := range raw {
		b := append([]byte(nil), raw...)
		b[i] ^= 0x01
		if _, err := verifier().Verify("fm2_"+base64.StdEncoding.EncodeToString(b), t0, inNet); err == nil {
			t.Fatalf("byte %d flipped: still verifies", i)
		}
	}
}

func TestVerify_Refusals(t *testing.T) {
	tok, id := root(t)
	narrow := fra(t, tok)
	mt, _, err := machinetoken.Mint(testKey, "wicket", machinetoken.Claims{Org: "acme", App: "web", MachineID: "m1",
		Features: []machinetoken.Feature{machinetoken.FeatureMetadata}, NotAfter: t0.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		v      *Verifier
		tok    string
		now    time.Time
		remote netip.Addr
	}{
		"expired":            {verifier(), tok, t0.Add(1001 * time.Hour), inNet},
		"copy expired":       {verifier(), narrow, t0.Add(721 * time.Hour), inNet},
		"revoked":            {verifier(id), narrow, t0, inNet},
		"outside cidr":       {verifier(), narrow, t0, outNet},
		"unknown remote":     {verifier(), narrow, t0, netip.Addr{}},
		"machine token":      {verifier(), mt, t0, inNet},
		"empty":              {verifier(), "", t0, inNet},
		"other key, same id": {&Verifier{Keys: func([]byte) (macaroon.SigningKey, bool) { return macaroon.NewSigningKey(), true }}, tok, t0, inNet},
	} {
		if _, err := tc.v.Verify(tc.tok, tc.now, tc.remote); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Verify = %v, want ErrInvalid", name, err)
		} else if len(tc.tok) > 24 && strings.Contains(err.Error(), tc.tok[len(tc.tok)-24:]) {
			t.Errorf("%s: error quotes the token", name)
		}
	}
	// An admin token is not a machine token either.
	mv := machinetoken.Verifier{Location: "wicket", Keys: verifier().Keys}
	if _, err := mv.Verify(tok, machinetoken.Request{Now: t0, Feature: machinetoken.FeatureMetadata}); err == nil {
		t.Error("machine token verifier accepted an admin token")
	}
	if hex.EncodeToString(testKey.ID) == id {
		t.Error("token id is the key id")
	}
}

func TestAttenuate_RefusesNonsense(t *testing.T) {
	tok, _ := root(t)
	for name, s := range map[string]Scope{
		"unknown op":                   {Ops: []Op{"machine.delete"}},
		"bad org":                      {Orgs: []string{"Acme!"}},
		"window ends before it starts": {NotBefore: t0, NotAfter: t0.Add(-time.Second)},
		"tiny ttl cap":                 {MaxMachineTTL: time.Millisecond},
		"nothing":                      {},
	} {
		if _, err := Attenuate(tok, s); err == nil {
			t.Errorf("%s: Attenuate succeeded", name)
		}
	}
	if _, err := Attenuate("fm2_AAAA", Scope{Orgs: []string{"acme"}}); !errors.Is(err, ErrInvalid) {
		t.Errorf("garbage: %v", err)
	}
}

// The caveat numbers are wire format.
func TestCaveatNumbers_Stable(t *testing.T) {
	got := []macaroon.CaveatType{CavOrgs, CavApps, CavRegions, CavOps, CavMaxMachineTTL, CavSourceAddrs}
	for i, c := range got {
		if want := macaroon.CavMinUserDefined + 0x57_1D_00 + macaroon.CaveatType(i); c != want {
			t.Errorf("caveat %d = %#x, want %#x", i, c, want)
		}
	}
	if CaveatBase <= machinetoken.CavExternal {
		t.Error("admin caveat numbers overlap the machine token's")
	}
}

// capped appends a raw machine-TTL caveat of secs seconds (0 included, as
// a holder can with the macaroon library) to tok.
func capped(t *testing.T, tok string, secs int64) string {
	t.Helper()
	m, err := macaroonwire.Decode(tok)
	if err != nil {
		t.Fatal(err)
	}
	c := maxTTLCaveat(secs)
	if err := m.Add(&c); err != nil {
		t.Fatal(err)
	}
	out, err := m.String()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// The effective scope states the machine-token cap exactly: the smallest
// of every cap caveat, and a cap of 0 (which nothing can be minted
// under) as minting nothing, never as "no cap" nor as a later, larger
// caveat's cap. Attenuating with MintsNone makes such a token.
func TestScope_MachineTTLCapExact(t *testing.T) {
	base, _ := root(t)
	none, err := Attenuate(base, Scope{MintsNone: true})
	if err != nil {
		t.Fatal(err)
	}
	day := int64(24 * 3600)
	for _, tc := range []struct {
		name      string
		tok       string
		cap       time.Duration
		mintsNone bool
	}{
		{"no cap", base, 0, false},
		{"one cap", capped(t, base, day), 24 * time.Hour, false},
		{"two caps", capped(t, capped(t, base, day), day/2), 12 * time.Hour, false},
		{"cap 0", capped(t, base, 0), 0, true},
		{"cap 0 then 24h", capped(t, capped(t, base, 0), day), 0, true},
		{"24h then cap 0", capped(t, capped(t, base, day), 0), 0, true},
		{"negative cap", capped(t, base, -5), 0, true},
		{"attenuated MintsNone", none, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, err := verifier().Verify(tc.tok, t0, inNet)
			if err != nil {
				t.Fatal(err)
			}
			sc := v.Scope()
			if sc.MaxMachineTTL != tc.cap || sc.MintsNone != tc.mintsNone {
				t.Errorf("Scope cap %v mints-none %v, want %v %v", sc.MaxMachineTTL, sc.MintsNone, tc.cap, tc.mintsNone)
			}
			// What the scope says is what Allow does.
			err = v.Allow(OpTokenMint, Target{Org: "acme", App: "web", Region: "fra", TTL: time.Hour})
			if tc.mintsNone != (err != nil) {
				t.Errorf("Allow(mint 1h) = %v, scope says mints-none %v", err, tc.mintsNone)
			}
		})
	}
}
