// Package macaroonwire is the wire handling every wicket macaroon shares
// (machine tokens, admin tokens): the Authorization header, the bounded and
// canonical decoding of "fm2_" tokens, and the validity window caveat.
//
// It holds no keys and knows no caveats: each token package registers its
// own caveats and refuses every caveat it does not understand. The errors
// here never contain token bytes, so callers may log them.
package macaroonwire

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"time"

	"github.com/superfly/macaroon"
)

// MaxTokenLen bounds the encoded tokens wicket will look at. A minted token
// is a few hundred bytes, an attenuated one a few more; anything near this
// size is an attack.
const MaxTokenLen = 16 << 10

// prefix is what macaroon.Macaroon.String puts before the base64; only
// that spelling is accepted.
const prefix = "fm2_"

// Reasons a token or header is refused; none quotes its input.
var (
	ErrScheme    = errors.New("unsupported authorization scheme")
	ErrEmpty     = errors.New("empty token")
	ErrTooLong   = errors.New("token too long")
	ErrMalformed = errors.New("malformed token")
	ErrPrefix    = errors.New("not a wicket macaroon")
)

// ParseHeader returns the token from an Authorization header value of the
// form "Bearer <token>" or "FlyV1 <token>" (scheme case-insensitive). It does
// not check the token itself.
func ParseHeader(h string) (string, error) {
	scheme, tok, ok := strings.Cut(strings.TrimSpace(h), " ")
	if !ok || !(strings.EqualFold(scheme, "Bearer") || strings.EqualFold(scheme, macaroon.AuthorizationSchemeFlyV1)) {
		return "", ErrScheme
	}
	tok = strings.TrimSpace(tok)
	switch {
	case tok == "":
		return "", ErrEmpty
	case len(tok) > MaxTokenLen:
		return "", ErrTooLong
	case strings.ContainsAny(tok, " \t,"):
		// One token only: wicket uses no third-party caveats, hence no
		// discharges.
		return "", ErrMalformed
	}
	return tok, nil
}

// Decode parses an encoded token without checking its signature. Library
// errors are dropped, not wrapped: some quote the bytes they choked on.
func Decode(token string) (*macaroon.Macaroon, error) {
	if len(token) > MaxTokenLen {
		return nil, ErrTooLong
	}
	b64, ok := strings.CutPrefix(token, prefix)
	if !ok {
		return nil, ErrPrefix
	}
	raw, err := base64.StdEncoding.Strict().DecodeString(b64)
	if err != nil || !WellFormed(raw) {
		return nil, ErrMalformed
	}
	m, err := decodeCanonical(raw)
	if err != nil {
		return nil, ErrMalformed
	}
	return m, nil
}

// decodeCanonical is the library's decoding of raw, kept only if it is
// raw's canonical encoding. The library signs the values it decoded,
// re-encoded, not the bytes it was given, so other encodings of the same
// values (a key id as str8 instead of bin8, say) would verify too; only
// the canonical one is accepted, so a token has exactly one spelling. A
// panic in the library's decoder is a malformed token too: its msgpack
// decoder panics on a map keyed by an array inside an unregistered
// caveat (found by FuzzVerify), and a caller's bytes must never crash a
// request.
func decodeCanonical(raw []byte) (m *macaroon.Macaroon, err error) {
	defer func() {
		if recover() != nil {
			m, err = nil, ErrMalformed
		}
	}()
	if m, err = macaroon.Decode(raw); err != nil {
		return nil, err
	}
	if enc, err := m.Encode(); err != nil || !bytes.Equal(enc, raw) {
		return nil, ErrMalformed
	}
	return m, nil
}

// Window returns the validity caveat for [nb, na], or nil when both are
// zero.
func Window(nb, na time.Time) (*macaroon.ValidityWindow, error) {
	switch {
	case na.IsZero() && nb.IsZero():
		return nil, nil
	case na.IsZero():
		return nil, errors.New("validity window without an end")
	case !nb.IsZero() && na.Before(nb):
		return nil, errors.New("validity window ends before it starts")
	}
	w := &macaroon.ValidityWindow{NotAfter: na.Unix()}
	if !nb.IsZero() {
		w.NotBefore = nb.Unix()
	}
	return w, nil
}

// Key is a root key: ID travels in every token in the clear and selects
// the key at verification; Secret never leaves the issuer.
type Key struct {
	ID     []byte
	Secret macaroon.SigningKey
}

// keyIDLen is the length of the random ids NewKey makes.
const keyIDLen = 16

// NewKey returns a key with a random 16-byte id and a random 32-byte secret.
func NewKey() Key {
	id := make([]byte, keyIDLen)
	rand.Read(id) // never fails (crypto/rand, Go ≥ 1.24)
	return Key{ID: id, Secret: macaroon.NewSigningKey()}
}

// Format prints only the key id, whatever the verb: a Key that reaches a log
// line or an error through fmt must not carry its secret with it. (fmt
// cannot call it for a Key held in an unexported field: don't print those.)
func (k Key) Format(f fmt.State, _ rune) { fmt.Fprintf(f, "Key{ID:%x}", k.ID) }

// LogValue keeps the secret out of slog output; the JSON handler would
// otherwise write it base64-encoded.
func (k Key) LogValue() slog.Value { return slog.StringValue(hex.EncodeToString(k.ID)) }

// Reasons Authenticate refuses a token that decoded; none quotes it.
var (
	ErrLocation   = errors.New("wrong location")
	ErrUnknownKey = errors.New("unknown key")
	ErrSignature  = errors.New("bad signature")
	ErrRevoked    = errors.New("revoked")
)

// Authentic is a token whose signature chain checked out: its nonce and
// caveats are the ones its key's holder and later attenuators wrote.
type Authentic struct {
	TokenID, KeyID string // hex; safe to log
	Caveats        *macaroon.CaveatSet
}

// Authenticate decodes token (Decode), checks that it was minted for
// location, finds its key with keys, verifies the signature chain and
// refuses a revoked token id (revoked may be nil). It checks no caveat:
// the caller walks Caveats, refuses every type it does not know, and
// validates the rest against the request.
func Authenticate(token, location string, keys func(keyID []byte) (macaroon.SigningKey, bool), revoked func(tokenID string) bool) (*Authentic, error) {
	m, err := Decode(token)
	if err != nil {
		return nil, err
	}
	// The library does not sign the location, so this sorts tokens (a
	// machine token is not an admin token) rather than authenticates
	// them; the keys do that.
	if m.Location != location {
		return nil, ErrLocation
	}
	key, ok := keys(m.Nonce.KID)
	if !ok {
		return nil, ErrUnknownKey
	}
	// The library's error is dropped: for some caveats it quotes their bytes.
	cavs, err := m.Verify(key, nil, nil)
	if err != nil {
		return nil, ErrSignature
	}
	a := &Authentic{TokenID: hex.EncodeToString(m.Nonce.Rnd), KeyID: hex.EncodeToString(m.Nonce.KID), Caveats: cavs}
	if revoked != nil && revoked(a.TokenID) {
		return nil, ErrRevoked
	}
	return a, nil
}

// AddrAllowed reports whether ip is in one of prefixes, the value of a
// source-address caveat. A prefix that does not parse matches nothing, and
// an unknown (zero) address is in no prefix.
func AddrAllowed(prefixes []string, ip netip.Addr) bool {
	if !ip.IsValid() {
		return false
	}
	// A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d, which an
	// IPv4 prefix does not contain.
	ip = ip.Unmap()
	for _, s := range prefixes {
		if p, err := netip.ParsePrefix(s); err == nil && p.Contains(ip) {
			return true
		}
	}
	return false
}
