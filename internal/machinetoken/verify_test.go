package machinetoken

import (
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/superfly/macaroon"
)

// foreignCaveat stands for a caveat type some other package registered: the
// library would evaluate it, and it allows everything.
type foreignCaveat struct{}

func init() { macaroon.RegisterCaveatType(&foreignCaveat{}) }

func (*foreignCaveat) CaveatType() macaroon.CaveatType { return macaroon.CavMaxUserDefined - 0x57 }
func (*foreignCaveat) Name() string                    { return "wicket.test.Foreign" }
func (*foreignCaveat) Prohibits(macaroon.Access) error { return nil }

// craft signs a token with testKey carrying exactly cavs: shapes Mint refuses
// to make but a leaked key, a bug or a future version could.
func craft(t testing.TB, cavs ...macaroon.Caveat) string {
	t.Helper()
	m, err := macaroon.New(testKey.ID, testLoc, testKey.Secret)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Add(cavs...); err != nil {
		t.Fatal(err)
	}
	tok, err := m.String()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// appendCaveats does what any holder can: add caveats without the key.
func appendCaveats(t testing.TB, tok string, cavs ...macaroon.Caveat) string {
	t.Helper()
	m, err := decode(tok)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Add(cavs...); err != nil {
		t.Fatal(err)
	}
	out, err := m.String()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func rawToken(b []byte) string { return tokenPrefix + base64.StdEncoding.EncodeToString(b) }

func rawBytes(t testing.TB, tok string) []byte {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(tok, tokenPrefix))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// assertNoLeak fails if msg quotes any 16 characters of tok.
func assertNoLeak(t testing.TB, msg, tok string) {
	t.Helper()
	const n = 16
	for i := 0; i+n <= len(tok); i++ {
		if strings.Contains(msg, tok[i:i+n]) {
			t.Fatalf("error %q quotes the token", msg)
		}
	}
}

func TestVerify_OK(t *testing.T) {
	c := testClaims()
	c.SourceAddrs = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8::/32")}
	tok, id := mint(t, c)
	want := &Verified{
		TokenID: id, KeyID: hex.EncodeToString(testKey.ID),
		Org: "acme", App: "web", MachineID: "m-123",
		Features: allFeatures, NotAfter: na,
	}
	for _, tc := range []struct {
		name string
		r    Request
	}{
		{"ipv4", Request{Now: t0, Feature: FeatureOIDC, RemoteAddr: netip.MustParseAddr("10.1.2.3")}},
		{"ipv4 mapped in ipv6", Request{Now: t0, Feature: FeatureOIDC, RemoteAddr: netip.MustParseAddr("::ffff:10.1.2.3")}},
		{"ipv6", Request{Now: t0, Feature: FeatureOIDC, RemoteAddr: netip.MustParseAddr("2001:db8::7")}},
		{"app pinned", Request{Now: t0, Feature: FeatureProxy, App: "web", RemoteAddr: netip.MustParseAddr("10.0.0.1")}},
		{"first second of window", Request{Now: nb, Feature: FeatureMetadata, RemoteAddr: netip.MustParseAddr("10.0.0.1")}},
		{"last second of window", Request{Now: na, Feature: FeatureMetadata, RemoteAddr: netip.MustParseAddr("10.0.0.1")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := testVerifier().Verify(tok, tc.r)
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("Verified (-want +got):\n%s", diff)
			}
		})
	}
}

func TestVerify_NowDefaultsToClock(t *testing.T) {
	c := testClaims()
	c.NotBefore, c.NotAfter = time.Now().Add(-time.Minute), time.Now().Add(time.Minute)
	tok, _ := mint(t, c)
	if _, err := testVerifier().Verify(tok, Request{Feature: FeatureOIDC}); err != nil {
		t.Fatal(err)
	}
}

func TestVerify_Refused(t *testing.T) {
	tok, id := mint(t, testClaims())
	addrClaims := testClaims()
	addrClaims.SourceAddrs = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	addrTok, _ := mint(t, addrClaims)
	metaClaims := testClaims()
	metaClaims.Features = []Feature{FeatureMetadata}
	metaTok, _ := mint(t, metaClaims)

	org, app, machine := ptr(orgCaveat("acme")), ptr(appCaveat("web")), ptr(machineCaveat("m-123"))
	feats := &featuresCaveat{FeatureMetadata, FeatureOIDC}
	win := &macaroon.ValidityWindow{NotBefore: nb.Unix(), NotAfter: na.Unix()}
	otherKey := Key{ID: testKey.ID, Secret: NewKey().Secret}
	unknownKey := NewKey()
	revoked := testVerifier()
	revoked.Revoked = func(got string) bool { return got == id }
	otherLoc := testVerifier()
	otherLoc.Location = "https://elsewhere.test"
	third := func() string {
		m, _ := decode(tok)
		if err := m.Add3P(macaroon.NewEncryptionKey(), "https://3p.test"); err != nil {
			t.Fatal(err)
		}
		s, _ := m.String()
		return s
	}()

	for _, tc := range []struct {
		name  string
		token string
		v     *Verifier
		r     Request
	}{
		{"wrong key, same id", tok, testVerifier(otherKey), req(FeatureOIDC)},
		{"unknown key id", tok, testVerifier(unknownKey), req(FeatureOIDC)},
		{"wrong location", tok, otherLoc, req(FeatureOIDC)},
		{"revoked", tok, revoked, req(FeatureOIDC)},
		{"expired", tok, nil, Request{Now: na.Add(time.Second), Feature: FeatureOIDC}},
		{"not yet valid", tok, nil, Request{Now: nb.Add(-time.Second), Feature: FeatureOIDC}},
		{"wrong source address", addrTok, nil, Request{Now: t0, Feature: FeatureOIDC, RemoteAddr: netip.MustParseAddr("192.168.1.1")}},
		{"ipv6 source for ipv4 prefix", addrTok, nil, Request{Now: t0, Feature: FeatureOIDC, RemoteAddr: netip.MustParseAddr("2001:db8::1")}},
		{"unknown source address", addrTok, nil, req(FeatureOIDC)},
		{"feature not granted", metaTok, nil, req(FeatureOIDC)},
		{"no feature requested", tok, nil, req("")},
		{"unknown feature requested", tok, nil, req("admin")},
		{"app mismatch", tok, nil, Request{Now: t0, Feature: FeatureOIDC, App: "db"}},
		{"empty", "", nil, req(FeatureOIDC)},
		{"prefix only", tokenPrefix, nil, req(FeatureOIDC)},
		{"not base64", tokenPrefix + "!!!!", nil, req(FeatureOIDC)},
		{"no prefix", strings.TrimPrefix(tok, tokenPrefix), nil, req(FeatureOIDC)},
		{"header not stripped", "Bearer " + tok, nil, req(FeatureOIDC)},
		{"huge", tokenPrefix + strings.Repeat("A", MaxTokenLen), nil, req(FeatureOIDC)},
		{"empty msgpack array", rawToken([]byte{0x90}), nil, req(FeatureOIDC)},
		{"length bomb", rawToken([]byte{0x94, 0x93, 0xc4, 0x00, 0xc4, 0x00, 0xc2, 0xa0, 0xdd, 0xff, 0xff, 0xff, 0xfe}), nil, req(FeatureOIDC)},
		{"trailing byte", rawToken(append(rawBytes(t, tok), 0)), nil, req(FeatureOIDC)},
		{"two tokens", tok + "," + tok, nil, req(FeatureOIDC)},
		// Caveats a holder can append: each must only take access away.
		{"later wrong org", appendCaveats(t, tok, ptr(orgCaveat("evil"))), nil, req(FeatureOIDC)},
		{"later wrong app", appendCaveats(t, tok, ptr(appCaveat("db"))), nil, Request{Now: t0, Feature: FeatureOIDC, App: "db"}},
		{"later wrong machine", appendCaveats(t, tok, ptr(machineCaveat("m-999"))), nil, req(FeatureOIDC)},
		{"later empty source list", appendCaveats(t, tok, &sourceAddrsCaveat{}), nil, Request{Now: t0, Feature: FeatureOIDC, RemoteAddr: netip.MustParseAddr("10.0.0.1")}},
		{"unregistered caveat", appendCaveats(t, tok, &macaroon.UnregisteredCaveat{Type: CaveatBase + 0xff, RawMsgpack: []byte{0xa1, 'x'}}), nil, req(FeatureOIDC)},
		{"foreign caveat", appendCaveats(t, tok, &foreignCaveat{}), nil, req(FeatureOIDC)},
		{"third-party caveat", third, nil, req(FeatureOIDC)},
		// Shapes only a key holder could sign; refused all the same.
		{"no identity", craft(t, feats, win), nil, req(FeatureOIDC)},
		{"no machine", craft(t, org, app, feats, win), nil, req(FeatureOIDC)},
		{"empty org", craft(t, ptr(orgCaveat("")), app, machine, feats, win), nil, req(FeatureOIDC)},
		{"no features", craft(t, org, app, machine, win), nil, req(FeatureOIDC)},
		{"no window", craft(t, org, app, machine, feats), nil, req(FeatureOIDC)},
		{"two orgs", craft(t, org, ptr(orgCaveat("other")), app, machine, feats, win), nil, req(FeatureOIDC)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := tc.v
			if v == nil {
				v = testVerifier()
			}
			got, err := v.Verify(tc.token, tc.r)
			if !errors.Is(err, ErrInvalid) || got != nil {
				t.Fatalf("Verify = %+v, %v; want ErrInvalid", got, err)
			}
			t.Log(err)
			assertNoLeak(t, err.Error(), tc.token)
			assertNoLeak(t, err.Error(), tok)
		})
	}
}

// TestVerify_TamperedBytes flips every bit pattern in every byte of a token:
// no change may survive (the library signs re-encoded caveats, so a change
// that decodes to the same values would).
func TestVerify_TamperedBytes(t *testing.T) {
	c := testClaims()
	c.SourceAddrs = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	tok, _ := mint(t, c)
	tok, err := Attenuate(tok, nb, na.Add(-time.Minute), []Feature{FeatureOIDC})
	if err != nil {
		t.Fatal(err)
	}
	v := testVerifier()
	r := Request{Now: t0, Feature: FeatureOIDC, RemoteAddr: netip.MustParseAddr("10.0.0.1")}
	if _, err := v.Verify(tok, r); err != nil {
		t.Fatal(err)
	}
	raw := rawBytes(t, tok)
	for i := range raw {
		for x := 1; x < 256; x++ {
			b := append([]byte(nil), raw...)
			b[i] ^= byte(x)
			bad := rawToken(b)
			if _, err := v.Verify(bad, r); !errors.Is(err, ErrInvalid) {
				t.Fatalf("byte %d ^ %#x: Verify = %v, want ErrInvalid", i, x, err)
			}
		}
	}
}

// TestVerify_TamperedString changes every character of the encoded token.
func TestVerify_TamperedString(t *testing.T) {
	tok, _ := mint(t, testClaims())
	v := testVerifier()
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=_ "
	for i := range len(tok) {
		for _, ch := range alphabet {
			if byte(ch) == tok[i] {
				continue
			}
			bad := tok[:i] + string(ch) + tok[i+1:]
			if _, err := v.Verify(bad, req(FeatureOIDC)); !errors.Is(err, ErrInvalid) {
				t.Fatalf("char %d -> %q: Verify = %v, want ErrInvalid", i, ch, err)
			}
		}
	}
	for _, bad := range []string{tok[:len(tok)-1], tok[:len(tok)/2], tok + "A", tok + "=="} {
		if _, err := v.Verify(bad, req(FeatureOIDC)); !errors.Is(err, ErrInvalid) {
			t.Fatalf("truncated/extended: Verify = %v, want ErrInvalid", err)
		}
	}
}

func BenchmarkVerify(b *testing.B) {
	c := testClaims()
	c.SourceAddrs = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	tok, _ := mint(b, c)
	tok, err := Restrict(tok, t0, time.Minute, []Feature{FeatureOIDC})
	if err != nil {
		b.Fatal(err)
	}
	v := testVerifier()
	r := Request{Now: t0, Feature: FeatureOIDC, RemoteAddr: netip.MustParseAddr("10.0.0.1")}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(tok, r); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRestrict(b *testing.B) {
	tok, _ := mint(b, testClaims())
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Restrict(tok, t0, time.Minute, nil); err != nil {
			b.Fatal(err)
		}
	}
}

func TestIdentify_SignatureOnly(t *testing.T) {
	c := testClaims()
	tok, id := mint(t, c)
	v := testVerifier()
	v.Revoked = func(string) bool { return true } // Identify ignores revocation
	got, err := v.Identify(tok)
	if err != nil {
		t.Fatal(err)
	}
	if got.TokenID != id || got.Org != c.Org || got.App != c.App || got.MachineID != c.MachineID {
		t.Fatalf("Identify = %+v", got)
	}
	bad := rawBytes(t, tok)
	bad[len(bad)-1] ^= 1
	if _, err := v.Identify(rawToken(bad)); !errors.Is(err, ErrInvalid) {
		t.Fatalf("tampered: Identify = %v, want ErrInvalid", err)
	}
}
