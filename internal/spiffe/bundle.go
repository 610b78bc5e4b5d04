package spiffe

import (
	"fmt"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// NewBundle returns td's SPIFFE bundle: the certificates of cas as
// x509-svid authorities and jwt's keys as jwt-svid authorities, with the
// refresh hint and sequence number set. Marshal gives the SPIFFE bundle
// format (a JWK set with "use", spiffe_refresh_hint, spiffe_sequence).
func NewBundle(td spiffeid.TrustDomain, cas []*CA, jwt jose.JSONWebKeySet, refreshHint time.Duration, seq uint64) (*spiffebundle.Bundle, error) {
	b := spiffebundle.New(td)
	for _, c := range cas {
		b.AddX509Authority(c.Cert)
	}
	for _, k := range jwt.Keys {
		if err := b.AddJWTAuthority(k.KeyID, k.Key); err != nil {
			return nil, fmt.Errorf("spiffe: bundle of %s: jwt key %s: %w", td, k.KeyID, err)
		}
	}
	b.SetRefreshHint(refreshHint)
	b.SetSequenceNumber(seq)
	return b, nil
}
