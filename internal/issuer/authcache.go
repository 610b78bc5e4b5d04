package issuer

import (
	"crypto/sha256"
	"encoding/binary"
	"sync"
	"time"

	"github.com/wicket-sh/wicket/internal/machinetoken"
)

// verifyCache remembers successful token verifications for a short time.
// Agents reuse one attenuated copy of their token for several seconds, so
// most requests carry a token verified moments ago; checking its whole
// signature chain again cost more than a third of an ES256 token request.
//
// The key binds everything Verify looked at besides the clock: the token
// bytes, the caller's address (source-address caveats), the feature, the
// app, the OIDC audiences asked for (audience caveats), the SPIFFE ID
// and the kind of SVID request (SPIFFE ID and SVID-kinds caveats). Entries expire at the token's own end or after
// verifyCacheTTL, whichever comes first. Revocation and the machine's
// existence are not cached: authenticate checks both on every request.
// The cache is flushed whenever the key ring changes.
type verifyCache struct {
	mu      sync.Mutex
	entries map[[32]byte]verifyEntry
	ring    *keyring // the key ring the entries were verified with
}

type verifyEntry struct {
	v       *machinetoken.Verified
	expires time.Time
}

const (
	verifyCacheTTL = 30 * time.Second
	verifyCacheMax = 16384
)

func verifyKey(token string, q machinetoken.Request) [32]byte {
	remote, feature, app, aud := q.RemoteAddr, q.Feature, q.App, q.Audience
	h := sha256.New()
	h.Write([]byte(token))
	h.Write([]byte{0})
	b, _ := remote.MarshalBinary()
	h.Write(b)
	h.Write([]byte{0})
	h.Write([]byte(feature))
	h.Write([]byte{0})
	h.Write([]byte(app))
	// The audiences asked for (audience caveats check them): each one
	// length-prefixed, and nil (the default) apart from any list.
	if aud == nil {
		h.Write([]byte{0})
	} else {
		h.Write([]byte{1})
		for _, a := range aud {
			h.Write(binary.BigEndian.AppendUint32(nil, uint32(len(a))))
			h.Write([]byte(a))
		}
	}
	// The SPIFFE ID asked for (SPIFFE ID caveats check it).
	h.Write([]byte{0})
	h.Write([]byte(q.SPIFFEID))
	// The kind of SVID request (SVID-kinds caveats check it).
	h.Write([]byte{0})
	h.Write([]byte(q.SVIDKind))
	var k [32]byte
	h.Sum(k[:0])
	return k
}

func (c *verifyCache) get(k [32]byte, kr *keyring, now time.Time) *machinetoken.Verified {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ring != kr {
		return nil
	}
	e, ok := c.entries[k]
	if !ok || !now.Before(e.expires) {
		return nil
	}
	return e.v
}

func (c *verifyCache) put(k [32]byte, kr *keyring, v *machinetoken.Verified, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ring != kr || c.entries == nil || len(c.entries) >= verifyCacheMax {
		// New key ring (a key was added, rotated or removed) or full:
		// start over rather than evict one by one.
		c.entries = make(map[[32]byte]verifyEntry, 256)
		c.ring = kr
	}
	exp := now.Add(verifyCacheTTL)
	if v.NotAfter.Before(exp) {
		exp = v.NotAfter
	}
	c.entries[k] = verifyEntry{v: v, expires: exp}
}
