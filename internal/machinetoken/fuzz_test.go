package machinetoken

import (
	"errors"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// fuzzReq is what FuzzVerify asks of every input; the committed seed tokens
// grant it.
var fuzzReq = Request{Now: t0, Feature: FeatureOIDC, RemoteAddr: netip.MustParseAddr("10.0.0.1")}

// FuzzVerify feeds arbitrary Authorization headers (and the raw strings) to
// ParseHeader, Verify and Attenuate: nothing may panic, every error wraps
// ErrInvalid without quoting the input, and nothing but the seed machine's
// genuine tokens may verify.
func FuzzVerify(f *testing.F) {
	v := testVerifier()
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

// TestSeedToken_StillVerifies guards the wire format: a token minted by an
// earlier build (the committed fuzz seed) must verify with this one.
func TestSeedToken_StillVerifies(t *testing.T) {
	b, err := os.ReadFile("testdata/fuzz/FuzzVerify/valid_flyv1")
	if err != nil {
		t.Fatal(err)
	}
	_, quoted, _ := strings.Cut(strings.TrimSpace(string(b)), "\nstring(")
	h, err := strconv.Unquote(strings.TrimSuffix(quoted, ")"))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := ParseHeader(h)
	if err != nil {
		t.Fatal(err)
	}
	got, err := testVerifier().Verify(tok, fuzzReq)
	if err != nil {
		t.Fatal(err)
	}
	want := &Verified{
		TokenID: "bfbd050dee4af94a0757afa1d8eb658f", KeyID: "7769636b65742d746573742d6b657931",
		Org: "acme", App: "web", MachineID: "m-fuzz",
		Features: allFeatures, NotAfter: time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC),
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Verified (-want +got):\n%s", diff)
	}
}
