package oidc

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"unicode/utf8"

	"github.com/go-jose/go-jose/v4/jwt"
)

// The compact JWS of a wicket token is built here rather than by go-jose:
// the protected header is encoded once per key ([jwsKey]), the claims are
// appended into one buffer in the order and encoding json.Marshal gives
// wireClaims (TestAppendClaims_SameAsJSONMarshal and its fuzz target hold
// them byte for byte), and the signature is the standard library's. What
// go-jose did on every token besides the signature itself (header
// marshalling, two base64 passes of the payload, big.Int conversions, some
// thirty allocations) was a fifth of an ES256 mint. Verification stays
// with go-jose and go-oidc, in the tests and at every relying party.

// jwsKey is a key ready to sign: its protected header as base64url, and
// the private key.
type jwsKey struct {
	header []byte // base64url of {"alg":…,"kid":…,"typ":"JWT"}
	alg    Alg
	priv   crypto.Signer
}

// jwsHeader is the protected header; field order as go-jose writes it.
type jwsHeader struct {
	Alg string `json:"alg"`
	Kid string `json:"kid"`
	Typ string `json:"typ"`
}

func newJWSKey(k *Key) (*jwsKey, error) {
	if err := k.checkPrivate(); err != nil {
		return nil, err
	}
	h, err := json.Marshal(jwsHeader{Alg: string(k.Alg), Kid: k.ID, Typ: "JWT"})
	if err != nil {
		return nil, fmt.Errorf("oidc: header for key %s: %w", k.ID, err)
	}
	return &jwsKey{header: base64.RawURLEncoding.AppendEncode(nil, h), alg: k.Alg, priv: k.Private}, nil
}

// es256SigLen is the JWS encoding of a P-256 signature: r and s, 32 bytes
// each, big-endian (RFC 7518 §3.4).
const es256SigLen = 64

// sign returns header.payload.signature for the JSON payload.
func (j *jwsKey) sign(payload []byte) (string, error) {
	enc := base64.RawURLEncoding
	sigLen := es256SigLen
	if p, ok := j.priv.(*rsa.PrivateKey); ok {
		sigLen = p.Size()
	}
	out := make([]byte, 0, len(j.header)+1+enc.EncodedLen(len(payload))+1+enc.EncodedLen(sigLen))
	out = append(out, j.header...)
	out = append(out, '.')
	out = enc.AppendEncode(out, payload)
	digest := sha256.Sum256(out)
	var sig []byte
	switch p := j.priv.(type) {
	case *ecdsa.PrivateKey:
		der, err := ecdsa.SignASN1(rand.Reader, p, digest[:])
		if err != nil {
			return "", err
		}
		var rs [es256SigLen]byte
		if !derToRS(der, rs[:]) {
			return "", errors.New("malformed ECDSA signature")
		}
		sig = rs[:]
	case *rsa.PrivateKey:
		s, err := rsa.SignPKCS1v15(rand.Reader, p, crypto.SHA256, digest[:])
		if err != nil {
			return "", err
		}
		sig = s
	default:
		return "", fmt.Errorf("unsupported private key type %T", j.priv)
	}
	out = append(out, '.')
	out = enc.AppendEncode(out, sig)
	return string(out), nil
}

// derToRS writes the ASN.1 DER ECDSA signature SEQUENCE { r, s INTEGER }
// into rs as r||s, each left-padded to half of rs. It accepts only the
// short-form lengths a P-256 signature has, positive integers and nothing
// after the sequence.
func derToRS(der, rs []byte) bool {
	if len(der) < 2 || der[0] != 0x30 || int(der[1]) != len(der)-2 || der[1] >= 0x80 {
		return false
	}
	rest := der[2:]
	half := len(rs) / 2
	for i := range 2 {
		if len(rest) < 2 || rest[0] != 0x02 || rest[1] >= 0x80 || int(rest[1]) > len(rest)-2 {
			return false
		}
		n := int(rest[1])
		v := rest[2 : 2+n]
		rest = rest[2+n:]
		if n == 0 || v[0]&0x80 != 0 {
			return false // empty or negative
		}
		for len(v) > 1 && v[0] == 0 {
			v = v[1:]
		}
		if len(v) > half {
			return false
		}
		copy(rs[i*half+half-len(v):(i+1)*half], v)
	}
	return len(rest) == 0
}

// appendClaims appends w as json.Marshal encodes it.
func appendClaims(b []byte, w *wireClaims) []byte {
	b = append(b, `{"iss":`...)
	b = appendJSONString(b, w.Issuer)
	b = append(b, `,"sub":`...)
	b = appendJSONString(b, w.Subject)
	b = append(b, `,"aud":`...)
	switch {
	case len(w.Audience) == 1:
		b = appendAudience(b, w.Audience[0])
	case w.Audience == nil:
		b = append(b, "null"...)
	default:
		b = append(b, '[')
		for i, a := range w.Audience {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendAudience(b, a)
		}
		b = append(b, ']')
	}
	b = append(b, `,"exp":`...)
	b = appendNumericDate(b, w.Expiry)
	b = append(b, `,"nbf":`...)
	b = appendNumericDate(b, w.NotBefore)
	b = append(b, `,"iat":`...)
	b = appendNumericDate(b, w.IssuedAt)
	b = append(b, `,"jti":`...)
	b = appendJSONString(b, w.ID)
	b = append(b, `,"org":`...)
	b = appendJSONString(b, w.Org)
	b = append(b, `,"app":`...)
	b = appendJSONString(b, w.App)
	b = append(b, `,"machine_id":`...)
	b = appendJSONString(b, w.MachineID)
	b = append(b, `,"machine_name":`...)
	b = appendJSONString(b, w.MachineName)
	if w.Region != "" {
		b = append(b, `,"region":`...)
		b = appendJSONString(b, w.Region)
	}
	if w.Image != "" {
		b = append(b, `,"image":`...)
		b = appendJSONString(b, w.Image)
	}
	if w.ImageDigest != "" {
		b = append(b, `,"image_digest":`...)
		b = appendJSONString(b, w.ImageDigest)
	}
	return append(b, '}')
}

func appendNumericDate(b []byte, d *jwt.NumericDate) []byte {
	if d == nil {
		return append(b, "null"...)
	}
	return strconv.AppendInt(b, int64(*d), 10)
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s quoted as encoding/json quotes a string (with
// its default HTML escaping): <, > and & as \u00XX, control characters,
// invalid UTF-8 as \ufffd, U+2028 and U+2029 escaped.
func appendJSONString(b []byte, s string) []byte { return appendQuoted(b, s, false) }

// appendAudience appends an audience as jwt.Audience encodes it: with
// go-jose's copy of encoding/json, which writes \b and \f as \u0008 and
// \u000c. (Sign admits printable ASCII only, so the difference is moot
// there; the encoder agrees anyway.)
func appendAudience(b []byte, s string) []byte { return appendQuoted(b, s, true) }

func appendQuoted(b []byte, s string, joseJSON bool) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '\\', '"':
				b = append(b, '\\', c)
			case '\b', '\f':
				if joseJSON {
					b = append(b, '\\', 'u', '0', '0', '0', hexDigits[c])
				} else if c == '\b' {
					b = append(b, '\\', 'b')
				} else {
					b = append(b, '\\', 'f')
				}
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
