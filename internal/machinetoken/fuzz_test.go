package machinetoken

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// fuzzReq is what FuzzVerify asks of every input; the seed tokens minted
// at run time grant it.
var fuzzReq = Request{Now: t0, Feature: FeatureOIDC, RemoteAddr: netip.MustParseAddr("10.0.0.1")}

// FuzzVerify feeds arbitrary Authorization headers (and the raw strings) to
// ParseHeader, Verify and Attenuate: nothing may panic, every error wraps
// ErrInvalid without quoting the input, and nothing but the seed machine's
// genuine tokens may verify.
func FuzzVerify(f *testing.F) {
	v := testVerifier()
	// Valid tokens as seeds, minted now with this run's key: committing
	// one would put a machine token in the repository.
	tok, _, err := Mint(testKey, testLoc, Claims{Org: "acme", App: "web", MachineID: "m-fuzz",
		Features: allFeatures, NotAfter: time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC)})
	if err != nil {
		f.Fatal(err)
	}
	f.Add("FlyV1 " + tok)
	narrow, err := Restrict(tok, t0, time.Minute, []Feature{FeatureOIDC})
	if err != nil {
		f.Fatal(err)
	}
	f.Add("Bearer " + narrow)
	// The agent's OIDC copy (audience caveat) and a proxy copy for an
	// external upstream, so the fuzzer mutates those caveats' encodings.
	bound, err := RestrictScope(tok, t0, time.Minute, Scope{Features: []Feature{FeatureOIDC}, Audiences: []string{DefaultAudience}})
	if err != nil {
		f.Fatal(err)
	}
	f.Add("FlyV1 " + bound)
	ext, err := RestrictScope(tok, t0, time.Minute, Scope{Features: []Feature{FeatureProxy}, External: "https://api.example"})
	if err != nil {
		f.Fatal(err)
	}
	f.Add("FlyV1 " + ext)
	// The agent's JWT-SVID copy: SVID kind, SPIFFE ID and audience caveats.
	svid, err := RestrictScope(tok, t0, time.Minute, Scope{Features: []Feature{FeatureSVID}, SVIDKinds: []SVIDKind{SVIDJWT},
		SPIFFEIDs: []string{"spiffe://acme.test/app/web/machine/m"}, Audiences: []string{"db"}})
	if err != nil {
		f.Fatal(err)
	}
	f.Add("FlyV1 " + svid)
	f.Fuzz(func(t *testing.T, h string) {
		tok, err := ParseHeader(h)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("ParseHeader error does not wrap ErrInvalid: %v", err)
			}
			tok = h
		}
		got, err := v.Verify(tok, fuzzReq)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Verify error does not wrap ErrInvalid: %v", err)
			}
			if len(tok) >= 24 && strings.Contains(err.Error(), tok[len(tok)-24:]) {
				t.Fatalf("error quotes the token: %v", err)
			}
			return
		}
		if got.MachineID != "m-fuzz" || !strings.HasPrefix(tok, tokenPrefix) {
			t.Fatalf("unexpected token verified: %+v", got)
		}
		// A verified token can be narrowed, and narrowing never widens.
		narrow, err := Attenuate(tok, t0.Add(-time.Hour), t0.Add(time.Hour), []Feature{FeatureOIDC, FeatureProxy})
		if err != nil {
			t.Fatalf("Attenuate of a valid token: %v", err)
		}
		got2, err := v.Verify(narrow, fuzzReq)
		if err != nil {
			t.Fatalf("Verify of narrowed token: %v", err)
		}
		if len(got2.Features) > len(got.Features) || got2.NotAfter.After(got.NotAfter) {
			t.Fatalf("attenuation widened %+v to %+v", got, got2)
		}
	})
}

// TestCaveatNumbers_Stable guards the wire format: tokens already issued
// carry these caveat type numbers, and would stop verifying (or, worse,
// mean something else) if they changed.
func TestCaveatNumbers_Stable(t *testing.T) {
	base := uint64(1<<48 + 0x571C00)
	for name, got := range map[string]uint64{
		"org": uint64(CavOrg), "app": uint64(CavApp), "machine": uint64(CavMachine),
		"features": uint64(CavFeatures), "source_addrs": uint64(CavSourceAddrs),
		"audiences": uint64(CavAudiences), "external": uint64(CavExternal),
		"spiffe_ids": uint64(CavSPIFFEIDs), "svid_kinds": uint64(CavSVIDKinds),
	} {
		want := base + map[string]uint64{"org": 0, "app": 1, "machine": 2, "features": 3, "source_addrs": 4,
			"audiences": 5, "external": 6, "spiffe_ids": 7, "svid_kinds": 8}[name]
		if got != want {
			t.Errorf("caveat %s = %#x, want %#x", name, got, want)
		}
	}
	if !strings.HasPrefix(mustMint(t), tokenPrefix) {
		t.Errorf("tokens no longer start with %q", tokenPrefix)
	}
}

func mustMint(t *testing.T) string {
	tok, _ := mint(t, testClaims())
	return tok
}
