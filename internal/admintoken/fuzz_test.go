package admintoken

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/wicket-sh/wicket/internal/macaroonwire"
)

// FuzzVerify feeds arbitrary Authorization headers to ParseHeader, Verify
// and Attenuate: nothing may panic, every error wraps ErrInvalid without
// quoting the input, and only tokens made from the seed's root verify.
func FuzzVerify(f *testing.F) {
	v := verifier()
	// Seeds minted at run time with this run's key: committing one would
	// put an admin token in the repository.
	tok, id, err := Mint(testKey, Scope{NotAfter: time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC)})
	if err != nil {
		f.Fatal(err)
	}
	f.Add("Bearer " + tok)
	narrow, err := Attenuate(tok, Scope{Orgs: []string{"acme"}, Regions: []string{"fra"}, Ops: []Op{OpMachineAdd}, MaxMachineTTL: time.Hour})
	if err != nil {
		f.Fatal(err)
	}
	f.Add("FlyV1 " + narrow)
	f.Add("Bearer fm2_")
	f.Fuzz(func(t *testing.T, h string) {
		tok, err := ParseHeader(h)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("ParseHeader error does not wrap ErrInvalid: %v", err)
			}
			tok = h
		}
		got, err := v.Verify(tok, t0, inNet)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Verify error does not wrap ErrInvalid: %v", err)
			}
			if len(tok) >= 24 && strings.Contains(err.Error(), tok[len(tok)-24:]) {
				t.Fatalf("error quotes the token: %v", err)
			}
		} else {
			if got.TokenID != id || !strings.HasPrefix(tok, "fm2_") {
				t.Fatalf("a token not made from the seed verified: %s", got.TokenID)
			}
			got.Allow(OpMachineAdd, Target{Org: "acme", Region: "fra"})
			got.Scope()
		}
		if len(tok) <= macaroonwire.MaxTokenLen {
			Attenuate(tok, Scope{Orgs: []string{"acme"}})
		}
	})
}
