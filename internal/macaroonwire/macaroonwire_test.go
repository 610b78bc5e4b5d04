package macaroonwire

import (
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/superfly/macaroon"
)

// minted returns a real token with a validity window caveat.
func minted(t *testing.T) string {
	t.Helper()
	m, err := macaroon.New([]byte("kid"), "wicket-test", macaroon.NewSigningKey())
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Add(&macaroon.ValidityWindow{NotBefore: 1, NotAfter: time.Now().Add(time.Hour).Unix()}); err != nil {
		t.Fatal(err)
	}
	s, err := m.String()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func mintedRaw(t *testing.T) []byte {
	t.Helper()
	raw, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(minted(t), prefix))
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func TestDecode_CanonicalBoundedOnly(t *testing.T) {
	tok := minted(t)
	if _, err := Decode(tok); err != nil {
		t.Fatalf("Decode(minted) = %v", err)
	}
	for _, tc := range []struct {
		name string
		in   string
		want error
	}{
		{"too long", prefix + strings.Repeat("A", MaxTokenLen), ErrTooLong},
		{"no prefix", strings.TrimPrefix(tok, prefix), ErrPrefix},
		{"not base64", tok + "!", ErrMalformed},
		{"trailing byte", prefix + base64.StdEncoding.EncodeToString(append(mintedRaw(t), 0x01)), ErrMalformed},
		{"length bomb", prefix + base64.StdEncoding.EncodeToString([]byte{0xdd, 0xff, 0xff, 0xff, 0xff, 0x01}), ErrMalformed},
	} {
		if _, err := Decode(tc.in); !errors.Is(err, tc.want) {
			t.Errorf("%s: Decode = %v, want %v", tc.name, err, tc.want)
		}
	}
}

func TestParseHeader(t *testing.T) {
	tok := minted(t)
	for _, h := range []string{"Bearer " + tok, "FlyV1 " + tok, "bearer  " + tok + " "} {
		if got, err := ParseHeader(h); err != nil || got != tok {
			t.Errorf("ParseHeader(%.12q) = %v", h, err)
		}
	}
	for h, want := range map[string]error{
		"":                          ErrScheme,
		"Basic " + tok:              ErrScheme,
		"Bearer ":                   ErrScheme,
		"Bearer " + tok + "," + tok: ErrMalformed,
		"Bearer " + strings.Repeat("A", MaxTokenLen+1): ErrTooLong,
	} {
		if _, err := ParseHeader(h); !errors.Is(err, want) {
			t.Errorf("ParseHeader(%.12q) = %v, want %v", h, err, want)
		}
	}
}

func TestWellFormed(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []byte
		want bool
	}{
		{"minted token", mintedRaw(t), true},
		{"fixint", []byte{0x01}, true},
		{"nested", []byte{0x92, 0x91, 0xa1, 'x', 0x81, 0xc0, 0xcd, 0x01, 0x02}, true},
		{"str32 exact", []byte{0xdb, 0, 0, 0, 1, 'x'}, true},
		{"fixext4", []byte{0xd6, 1, 0, 0, 0, 0}, true},
		{"empty", nil, false},
		{"trailing", []byte{0x01, 0x02}, false},
		{"unused code", []byte{0xc1}, false},
		{"short array", []byte{0x92, 0x01}, false},
		{"array32 bomb", []byte{0xdd, 0xff, 0xff, 0xff, 0xff, 0x01}, false},
		{"map32 bomb", []byte{0xdf, 0x7f, 0xff, 0xff, 0xff, 0x01, 0x01}, false},
		{"bin32 bomb", []byte{0xc6, 0xff, 0xff, 0xff, 0xff}, false},
		{"ext32 bomb", []byte{0xc9, 0xff, 0xff, 0xff, 0xff, 0x01}, false},
		{"truncated length", []byte{0xdb, 0, 0}, false},
		{"truncated uint64", []byte{0xcf, 0, 0}, false},
	} {
		if got := WellFormed(tc.in); got != tc.want {
			t.Errorf("%s: WellFormed = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// A token whose caveat holds a map keyed by an array makes the library's
// msgpack decoder panic; Decode refuses it as malformed instead (the
// input FuzzVerify found, internal/machinetoken/testdata/fuzz/FuzzVerify).
func TestDecode_LibraryPanicIsMalformed(t *testing.T) {
	const tok = "fm2_lJPEEEqCPH4gjb5nqgS8h5UjAy7EEH38BbL3drHvj5T8Ny18mdrCumh0dHBzOi8vaXNzdWVyLndpY2tldC50ZXN03AAUzwABAAAAVxwApGFjbWXPAAEAAABXHAGjd2VizwABAAAAVxwCpm0tZnV6es8AAQAAAFccA5SobWV0YWRhdGGkb2lkY6Vwcm94eaRzdmlkBJIAzvSGVwAEks5w3VUgznDdVW0070007ZSC702RpA00007P00000000002Rom00000000000000kdkk000000000000000000000000000000000000000000000000000000000000kZN0707ZIA000000000000000000000000000000000000000000"
	if _, err := Decode(tok); !errors.Is(err, ErrMalformed) {
		t.Fatalf("Decode = %v, want ErrMalformed", err)
	}
}
