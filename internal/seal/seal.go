// Package seal encrypts private keys at rest with AES-256-GCM, under a key
// loaded from a file or the environment, so the state store never holds a
// signing or root key in the clear.
package seal

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
)

// KeySize is the length in bytes of a sealing key (AES-256).
const KeySize = 32

// version1 tags sealed blobs so the format can change (new cipher, key id)
// without guessing at what old blobs are.
const version1 byte = 1

// ErrOpen is returned by Open for every failure: a truncated blob, an unknown
// version, a wrong key, wrong associated data or tampering. It says nothing
// more, so an error can never leak which part was wrong or any of the data.
var ErrOpen = errors.New("seal: cannot open sealed data")

// Sealer seals and opens data under one key. It is safe for concurrent use.
type Sealer struct {
	aead cipher.AEAD
}

// New returns a Sealer for a KeySize-byte key.
func New(key []byte) (*Sealer, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("seal: key must be %d bytes, got %d", KeySize, len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	return &Sealer{aead: aead}, nil
}

// Seal encrypts plain, binding it to associatedData (for example the key's
// kind and id, so a sealed blob cannot be swapped onto another record). The
// result is version byte || 12-byte random nonce || ciphertext+tag.
func (s *Sealer) Seal(plain, associatedData []byte) ([]byte, error) {
	ns := s.aead.NonceSize()
	out := make([]byte, 1+ns, 1+ns+len(plain)+s.aead.Overhead())
	out[0] = version1
	// Random nonces are safe here: a key seals a handful of blobs, far below
	// the 2^32 messages at which GCM nonce collisions become a concern.
	if _, err := rand.Read(out[1:]); err != nil {
		return nil, fmt.Errorf("seal: reading nonce: %w", err)
	}
	return s.aead.Seal(out, out[1:], plain, associatedData), nil
}

// Open decrypts a blob made by Seal with the same key and associated data.
// Any failure returns ErrOpen.
func (s *Sealer) Open(sealed, associatedData []byte) ([]byte, error) {
	ns := s.aead.NonceSize()
	if len(sealed) < 1+ns+s.aead.Overhead() || sealed[0] != version1 {
		return nil, ErrOpen
	}
	plain, err := s.aead.Open(nil, sealed[1:1+ns], sealed[1+ns:], associatedData)
	if err != nil {
		return nil, ErrOpen
	}
	return plain, nil
}
