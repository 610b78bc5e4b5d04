package machinetoken

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/superfly/macaroon"
)

const testLoc = "https://issuer.wicket.test"

// testKey is made fresh for every run: no valid token is ever committed
// (the fuzz seeds minted with it are added at run time).
var testKey = NewKey()

var (
	t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC) // "now" in tests
	nb = t0.Add(-time.Hour)
	na = t0.Add(time.Hour)
)

func testClaims() Claims {
	return Claims{
		Org: "acme", App: "web", MachineID: "m-123",
		Features:  allFeatures,
		NotBefore: nb, NotAfter: na,
	}
}

func mint(t testing.TB, c Claims) (token, id string) {
	t.Helper()
	token, id, err := Mint(testKey, testLoc, c)
	if err != nil {
		t.Fatalf("Mint: %v", err)
	}
	return token, id
}

func testVerifier(keys ...Key) *Verifier {
	if len(keys) == 0 {
		keys = []Key{testKey}
	}
	return &Verifier{
		Location: testLoc,
		Keys: func(id []byte) (macaroon.SigningKey, bool) {
			for _, k := range keys {
				if bytes.Equal(k.ID, id) {
					return k.Secret, true
				}
			}
			return nil, false
		},
	}
}

func req(f Feature) Request { return Request{Now: t0, Feature: f} }

func TestMint_RejectsBadClaims(t *testing.T) {
	for _, tc := range []struct {
		name string
		k    Key
		edit func(*Claims)
	}{
		{"no org", testKey, func(c *Claims) { c.Org = "" }},
		{"no app", testKey, func(c *Claims) { c.App = "" }},
		{"no machine", testKey, func(c *Claims) { c.MachineID = "" }},
		{"no features", testKey, func(c *Claims) { c.Features = nil }},
		{"unknown feature", testKey, func(c *Claims) { c.Features = []Feature{"admin"} }},
		{"no end", testKey, func(c *Claims) { c.NotAfter = time.Time{} }},
		{"no window", testKey, func(c *Claims) { c.NotBefore, c.NotAfter = time.Time{}, time.Time{} }},
		{"ends before start", testKey, func(c *Claims) { c.NotBefore, c.NotAfter = na, nb }},
		{"bad prefix", testKey, func(c *Claims) { c.SourceAddrs = []netip.Prefix{{}} }},
		{"empty key id", Key{Secret: testKey.Secret}, func(*Claims) {}},
		{"short secret", Key{ID: testKey.ID, Secret: testKey.Secret[:16]}, func(*Claims) {}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := testClaims()
			tc.edit(&c)
			if tok, _, err := Mint(tc.k, testLoc, c); err == nil {
				t.Fatalf("Mint succeeded: %d-byte token", len(tok))
			}
		})
	}
}

func TestMint_TokenIDsAreUnique(t *testing.T) {
	_, id1 := mint(t, testClaims())
	_, id2 := mint(t, testClaims())
	if id1 == id2 || len(id1) != 32 {
		t.Fatalf("token ids %q, %q: want two distinct 32-char hex ids", id1, id2)
	}
}

func TestAttenuate(t *testing.T) {
	full, _ := mint(t, testClaims())
	v := testVerifier()
	at := func(tok string, nb, na time.Time, fs ...Feature) string {
		t.Helper()
		out, err := Attenuate(tok, nb, na, fs)
		if err != nil {
			t.Fatalf("Attenuate: %v", err)
		}
		return out
	}
	oidcOnly := at(full, time.Time{}, time.Time{}, FeatureOIDC)
	short := at(full, t0, t0.Add(time.Minute))
	// Widening: a longer window and every feature, on an already narrow token.
	widened := at(oidcOnly, nb.Add(-24*time.Hour), na.Add(24*time.Hour), allFeatures...)
	twoSteps := at(at(full, time.Time{}, time.Time{}, FeatureMetadata, FeatureOIDC), time.Time{}, time.Time{}, FeatureOIDC, FeatureProxy)

	for _, tc := range []struct {
		name      string
		token     string
		r         Request
		wantOK    bool
		wantFeats []Feature
		wantEnd   time.Time
	}{
		{"full token, metadata", full, req(FeatureMetadata), true, allFeatures, na},
		{"narrowed to oidc, oidc", oidcOnly, req(FeatureOIDC), true, []Feature{FeatureOIDC}, na},
		{"narrowed to oidc, metadata", oidcOnly, req(FeatureMetadata), false, nil, time.Time{}},
		{"short window, inside", short, req(FeatureProxy), true, allFeatures, t0.Add(time.Minute)},
		{"short window, after it", short, Request{Now: t0.Add(2 * time.Minute), Feature: FeatureProxy}, false, nil, time.Time{}},
		{"full token, after short window", full, Request{Now: t0.Add(2 * time.Minute), Feature: FeatureProxy}, true, allFeatures, na},
		{"short window, before it", short, Request{Now: t0.Add(-time.Second), Feature: FeatureProxy}, false, nil, time.Time{}},
		{"widened, oidc", widened, req(FeatureOIDC), true, []Feature{FeatureOIDC}, na},
		{"widened, metadata", widened, req(FeatureMetadata), false, nil, time.Time{}},
		{"widened, after original end", widened, Request{Now: na.Add(time.Hour), Feature: FeatureOIDC}, false, nil, time.Time{}},
		{"widened, before original start", widened, Request{Now: nb.Add(-time.Hour), Feature: FeatureOIDC}, false, nil, time.Time{}},
		{"two feature caveats intersect, oidc", twoSteps, req(FeatureOIDC), true, []Feature{FeatureOIDC}, na},
		{"two feature caveats intersect, metadata", twoSteps, req(FeatureMetadata), false, nil, time.Time{}},
		{"two feature caveats intersect, proxy", twoSteps, req(FeatureProxy), false, nil, time.Time{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := v.Verify(tc.token, tc.r)
			if !tc.wantOK {
				if !errors.Is(err, ErrInvalid) {
					t.Fatalf("Verify = %v, want ErrInvalid", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if diff := cmp.Diff(tc.wantFeats, got.Features); diff != "" {
				t.Errorf("Features (-want +got):\n%s", diff)
			}
			if !got.NotAfter.Equal(tc.wantEnd) {
				t.Errorf("NotAfter = %v, want %v", got.NotAfter, tc.wantEnd)
			}
		})
	}
}

func TestAttenuate_KeepsTokenID(t *testing.T) {
	full, id := mint(t, testClaims())
	narrow, err := Attenuate(full, time.Time{}, na.Add(-time.Minute), []Feature{FeatureOIDC})
	if err != nil {
		t.Fatal(err)
	}
	got, err := testVerifier().Verify(narrow, req(FeatureOIDC))
	if err != nil {
		t.Fatal(err)
	}
	// Revoking the root revokes every copy derived from it.
	if got.TokenID != id {
		t.Errorf("TokenID = %q, want %q", got.TokenID, id)
	}
}

func TestAttenuate_Errors(t *testing.T) {
	full, _ := mint(t, testClaims())
	for _, tc := range []struct {
		name   string
		token  string
		nb, na time.Time
		fs     []Feature
	}{
		{"unknown feature", full, time.Time{}, time.Time{}, []Feature{"root"}},
		{"start without end", full, t0, time.Time{}, nil},
		{"end before start", full, t0, t0.Add(-time.Second), nil},
		{"garbage", "fm2_@@@", time.Time{}, na, nil},
		{"empty", "", time.Time{}, na, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Attenuate(tc.token, tc.nb, tc.na, tc.fs); err == nil {
				t.Fatal("Attenuate succeeded")
			}
		})
	}
}

func TestRestrict(t *testing.T) {
	full, _ := mint(t, testClaims())
	tok, err := Restrict(full, t0, time.Minute, []Feature{FeatureMetadata})
	if err != nil {
		t.Fatal(err)
	}
	v := testVerifier()
	for _, tc := range []struct {
		name   string
		now    time.Time
		f      Feature
		wantOK bool
	}{
		{"now", t0, FeatureMetadata, true},
		{"verifier clock 4s behind", t0.Add(-4 * time.Second), FeatureMetadata, true},
		{"verifier clock 10s behind", t0.Add(-10 * time.Second), FeatureMetadata, false},
		{"at ttl", t0.Add(time.Minute), FeatureMetadata, true},
		{"after ttl", t0.Add(time.Minute + time.Second), FeatureMetadata, false},
		{"other feature", t0, FeatureOIDC, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := v.Verify(tok, Request{Now: tc.now, Feature: tc.f})
			if (err == nil) != tc.wantOK {
				t.Fatalf("Verify = %v, want ok=%v", err, tc.wantOK)
			}
		})
	}
	if _, err := Restrict(full, t0, 0, nil); err == nil {
		t.Error("Restrict with zero ttl succeeded")
	}
}

func TestParseHeader(t *testing.T) {
	for _, tc := range []struct {
		in, want string // want "" = error
	}{
		{"Bearer fm2_abc", "fm2_abc"},
		{"bearer fm2_abc", "fm2_abc"},
		{"FlyV1 fm2_abc", "fm2_abc"},
		{"FLYV1 fm2_abc", "fm2_abc"},
		{"  FlyV1   fm2_abc  ", "fm2_abc"},
		{"Basic fm2_abc", ""},
		{"fm2_abc", ""},
		{"Bearer", ""},
		{"Bearer ", ""},
		{"", ""},
		{"Bearer fm2_a,fm2_b", ""},
		{"Bearer fm2_a fm2_b", ""},
		{"Bearer " + strings.Repeat("A", MaxTokenLen+1), ""},
	} {
		got, err := ParseHeader(tc.in)
		if tc.want == "" {
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("ParseHeader(%.20q) = %.20q, %v; want ErrInvalid", tc.in, got, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseHeader(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

// TestKey_SecretNeverPrinted guards the rule that a key is logged only by id.
func TestKey_SecretNeverPrinted(t *testing.T) {
	k := NewKey()
	var buf bytes.Buffer
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("key", "key", k)
	slog.New(slog.NewTextHandler(&buf, nil)).Info("key", "key", k)
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%d", "%x", "%q"} {
		fmt.Fprintf(&buf, verb+"\n", k)
	}
	out := buf.String()
	for _, enc := range []string{
		hex.EncodeToString(k.Secret),
		base64.StdEncoding.EncodeToString(k.Secret),
		strings.Trim(fmt.Sprint([]byte(k.Secret[:4])), "[]"),
	} {
		if strings.Contains(out, enc) {
			t.Fatalf("secret printed:\n%s", out)
		}
	}
	if !strings.Contains(out, hex.EncodeToString(k.ID)) {
		t.Errorf("key id not printed:\n%s", out)
	}
}

// An audience caveat lets a copy mint OIDC tokens for the audiences it
// lists and nothing else; several intersect.
func TestAudienceCaveat_BindsAudience(t *testing.T) {
	full, _ := mint(t, testClaims())
	v := testVerifier()
	scoped := func(tok string, auds ...string) string {
		t.Helper()
		out, err := AttenuateScope(tok, time.Time{}, time.Time{}, Scope{Audiences: auds})
		if err != nil {
			t.Fatalf("AttenuateScope: %v", err)
		}
		return out
	}
	sts := scoped(full, "sts.amazonaws.com")
	def := scoped(full, DefaultAudience)
	both := scoped(full, "a", "b")
	narrowed := scoped(both, "b", "c") // ∩ = {b}
	oidc := func(aud ...string) Request { return Request{Now: t0, Feature: FeatureOIDC, Audience: aud} }
	for _, tc := range []struct {
		name     string
		token    string
		r        Request
		ok       bool
		wantAuds []string
	}{
		{"listed audience", sts, oidc("sts.amazonaws.com"), true, []string{"sts.amazonaws.com"}},
		{"other audience", sts, oidc("https://attacker.example"), false, nil},
		{"listed plus another", sts, oidc("sts.amazonaws.com", "https://attacker.example"), false, nil},
		{"default asked, not listed", sts, oidc(), false, nil},
		{"default listed, default asked", def, oidc(), true, []string{DefaultAudience}},
		{"default listed, explicit asked", def, oidc("https://attacker.example"), false, nil},
		{"empty string asked is not the default", sts, oidc(""), false, nil},
		{"both listed, both asked", both, oidc("a", "b"), true, []string{"a", "b"}},
		{"intersection keeps b", narrowed, oidc("b"), true, []string{"b"}},
		{"intersection drops a", narrowed, oidc("a"), false, nil},
		{"intersection drops c", narrowed, oidc("c"), false, nil},
		{"metadata refused", sts, Request{Now: t0, Feature: FeatureMetadata}, false, nil},
		{"proxy refused", sts, Request{Now: t0, Feature: FeatureProxy}, false, nil},
		{"jwt-svid, listed audience", sts, Request{Now: t0, Feature: FeatureSVID, Audience: []string{"sts.amazonaws.com"}}, true, []string{"sts.amazonaws.com"}},
		{"jwt-svid, other audience", sts, Request{Now: t0, Feature: FeatureSVID, Audience: []string{"db"}}, false, nil},
		{"x509-svid (no audience) refused", sts, Request{Now: t0, Feature: FeatureSVID, SPIFFEID: "spiffe://acme.test/app/web/machine/m"}, false, nil},
		{"unbound token, any audience", full, oidc("https://attacker.example"), true, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := v.Verify(tc.token, tc.r)
			if !tc.ok {
				if !errors.Is(err, ErrInvalid) {
					t.Fatalf("Verify = %v, want ErrInvalid", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if diff := cmp.Diff(tc.wantAuds, got.Audiences); diff != "" {
				t.Errorf("Audiences (-want +got):\n%s", diff)
			}
		})
	}
}

// A SPIFFE ID caveat lets a copy get SVIDs for the IDs it lists and
// nothing else; several intersect.
func TestSPIFFEIDsCaveat_BindsID(t *testing.T) {
	full, _ := mint(t, testClaims())
	v := testVerifier()
	const me, other = "spiffe://acme.test/app/web/machine/m", "spiffe://acme.test/app/web/workload/db"
	scoped := func(tok string, ids ...string) string {
		t.Helper()
		out, err := AttenuateScope(tok, time.Time{}, time.Time{}, Scope{SPIFFEIDs: ids})
		if err != nil {
			t.Fatalf("AttenuateScope: %v", err)
		}
		return out
	}
	mine := scoped(full, me)
	both := scoped(full, me, other)
	narrowed := scoped(both, other) // ∩ = {other}
	svid := func(id string) Request { return Request{Now: t0, Feature: FeatureSVID, SPIFFEID: id} }
	for _, tc := range []struct {
		name    string
		token   string
		r       Request
		ok      bool
		wantIDs []string
	}{
		{"listed id", mine, svid(me), true, []string{me}},
		{"other id", mine, svid(other), false, nil},
		{"no id asked (bundle read)", mine, svid(""), false, nil},
		{"intersection keeps other", narrowed, svid(other), true, []string{other}},
		{"intersection drops me", narrowed, svid(me), false, nil},
		{"oidc refused", mine, Request{Now: t0, Feature: FeatureOIDC}, false, nil},
		{"metadata refused", mine, Request{Now: t0, Feature: FeatureMetadata}, false, nil},
		{"proxy refused", mine, Request{Now: t0, Feature: FeatureProxy}, false, nil},
		{"unbound token, any id", full, svid(other), true, nil},
		{"unbound token, bundle read", full, svid(""), true, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := v.Verify(tc.token, tc.r)
			if !tc.ok {
				if !errors.Is(err, ErrInvalid) {
					t.Fatalf("Verify = %v, want ErrInvalid", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if diff := cmp.Diff(tc.wantIDs, got.SPIFFEIDs); diff != "" {
				t.Errorf("SPIFFEIDs (-want +got):\n%s", diff)
			}
		})
	}
	// A token minted without the svid feature gets no SVID whatever it lists.
	c := testClaims()
	c.Features = []Feature{FeatureMetadata, FeatureOIDC, FeatureProxy}
	old, _ := mint(t, c)
	if _, err := v.Verify(scoped(old, me), svid(me)); !errors.Is(err, ErrInvalid) {
		t.Errorf("token without the svid feature: Verify = %v, want ErrInvalid", err)
	}
}

// An SVID-kinds caveat lets a copy make only the kinds of SVID request it
// lists (the bundle read, X.509-SVIDs, JWT-SVIDs); several intersect, and
// a token without one (minted before the caveat existed) keeps every kind.
func TestSVIDKindsCaveat_BindsKind(t *testing.T) {
	full, _ := mint(t, testClaims())
	v := testVerifier()
	const me = "spiffe://acme.test/app/web/machine/m"
	scoped := func(tok string, s Scope) string {
		t.Helper()
		out, err := AttenuateScope(tok, time.Time{}, time.Time{}, s)
		if err != nil {
			t.Fatalf("AttenuateScope: %v", err)
		}
		return out
	}
	kinds := func(ks ...SVIDKind) Scope { return Scope{SVIDKinds: ks} }
	bundle := scoped(full, kinds(SVIDBundle))
	x509 := scoped(full, kinds(SVIDX509))
	jwt := scoped(full, kinds(SVIDJWT))
	x509OrJWT := scoped(full, kinds(SVIDX509, SVIDJWT))
	narrowed := scoped(x509OrJWT, kinds(SVIDJWT, SVIDBundle)) // ∩ = {jwt}
	q := func(k SVIDKind, id string, aud ...string) Request {
		return Request{Now: t0, Feature: FeatureSVID, SVIDKind: k, SPIFFEID: id, Audience: aud}
	}
	for _, tc := range []struct {
		name      string
		token     string
		r         Request
		ok        bool
		wantKinds []SVIDKind
	}{
		{"bundle copy, bundle", bundle, q(SVIDBundle, ""), true, []SVIDKind{SVIDBundle}},
		{"bundle copy, x509", bundle, q(SVIDX509, me), false, nil},
		{"bundle copy, jwt", bundle, q(SVIDJWT, me, "db"), false, nil},
		{"x509 copy, x509", x509, q(SVIDX509, me), true, []SVIDKind{SVIDX509}},
		{"x509 copy, jwt", x509, q(SVIDJWT, me, "db"), false, nil},
		{"x509 copy, bundle", x509, q(SVIDBundle, ""), false, nil},
		{"jwt copy, jwt", jwt, q(SVIDJWT, me, "db"), true, []SVIDKind{SVIDJWT}},
		{"jwt copy, x509", jwt, q(SVIDX509, me), false, nil},
		{"no kind asked", x509OrJWT, q("", me), false, nil},
		{"unknown kind asked", x509OrJWT, q("wit", me), false, nil},
		{"intersection keeps jwt", narrowed, q(SVIDJWT, me, "db"), true, []SVIDKind{SVIDJWT}},
		{"intersection drops x509", narrowed, q(SVIDX509, me), false, nil},
		{"intersection drops bundle", narrowed, q(SVIDBundle, ""), false, nil},
		{"oidc refused", x509OrJWT, Request{Now: t0, Feature: FeatureOIDC}, false, nil},
		{"metadata refused", bundle, Request{Now: t0, Feature: FeatureMetadata}, false, nil},
		{"old token, x509", full, q(SVIDX509, me), true, nil},
		{"old token, jwt", full, q(SVIDJWT, me, "db"), true, nil},
		{"old token, bundle", full, q(SVIDBundle, ""), true, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := v.Verify(tc.token, tc.r)
			if !tc.ok {
				if !errors.Is(err, ErrInvalid) {
					t.Fatalf("Verify = %v, want ErrInvalid", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if diff := cmp.Diff(tc.wantKinds, got.SVIDKinds); diff != "" {
				t.Errorf("SVIDKinds (-want +got):\n%s", diff)
			}
		})
	}
	// The agent's copies: kind, ID and (JWT) audiences together.
	x509Copy := scoped(full, Scope{Features: []Feature{FeatureSVID}, SVIDKinds: []SVIDKind{SVIDX509}, SPIFFEIDs: []string{me}})
	if _, err := v.Verify(x509Copy, q(SVIDJWT, me, "db")); !errors.Is(err, ErrInvalid) {
		t.Errorf("x509 copy for a jwt-svid of its id: Verify = %v, want ErrInvalid", err)
	}
	if _, err := v.Verify(x509Copy, q(SVIDX509, me)); err != nil {
		t.Errorf("x509 copy for its own x509-svid: %v", err)
	}
	if _, err := AttenuateScope(full, time.Time{}, time.Time{}, kinds("wit")); err == nil {
		t.Error("attenuating to an unknown svid kind succeeded")
	}
}

// A copy made for an external upstream is refused for every feature.
func TestExternalCaveat_RefusedEverywhere(t *testing.T) {
	full, _ := mint(t, testClaims())
	ext, err := RestrictScope(full, t0, time.Minute, Scope{Features: []Feature{FeatureProxy}, External: "https://api.example"})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range allFeatures {
		_, err := testVerifier().Verify(ext, Request{Now: t0, Feature: f, App: "web"})
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Verify = %v, want ErrInvalid", f, err)
		}
	}
	// The same copy without the caveat verifies: the caveat is the reason.
	plain, _ := Restrict(full, t0, time.Minute, []Feature{FeatureProxy})
	if _, err := testVerifier().Verify(plain, Request{Now: t0, Feature: FeatureProxy}); err != nil {
		t.Fatalf("plain copy: %v", err)
	}
}
