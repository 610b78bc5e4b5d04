package spiffe

import (
	"fmt"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// ParseForeignBundle parses a bundle document of td (the SPIFFE bundle
// format) and checks what of it can name a trust domain: every X.509
// authority must be a CA, and one with a SPIFFE ID URI SAN (which the
// X.509-SVID specification asks signing certificates to carry) must
// name td. A bundle without any authority is refused: it would remove
// trust, which an endpoint answering wrongly must not do.
func ParseForeignBundle(td spiffeid.TrustDomain, doc []byte) (*spiffebundle.Bundle, error) {
	b, err := spiffebundle.Parse(td, doc)
	if err != nil {
		return nil, fmt.Errorf("spiffe: bundle of %s: %w", td, err)
	}
	if len(b.X509Authorities()) == 0 && len(b.JWTAuthorities()) == 0 {
		return nil, fmt.Errorf("spiffe: bundle of %s: no authorities", td)
	}
	for _, c := range b.X509Authorities() {
		if !c.IsCA {
			return nil, fmt.Errorf("spiffe: bundle of %s: an x509 authority is not a CA", td)
		}
		for _, u := range c.URIs {
			id, err := spiffeid.FromURI(u)
			if err != nil {
				continue // not a SPIFFE ID: nothing it claims about domains
			}
			if !id.MemberOf(td) {
				return nil, fmt.Errorf("spiffe: bundle of %s: an x509 authority names trust domain %s", td, id.TrustDomain())
			}
		}
	}
	return b, nil
}
