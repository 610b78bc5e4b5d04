package workloadapi

import (
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// The foreign trust domains' bundles in the Workload API's answers (the
// SPIFFE Workload API specification keys them by trust domain ID,
// "spiffe://spire.example"), as SPIRE's agent serves the bundles of the
// domains an entry federates with: beside the SVID (X509SVIDResponse.
// FederatedBundles), in FetchX509Bundles and FetchJWTBundles, and as keys
// ValidateJWTSVID accepts. A domain with no authority of a kind is left
// out of that kind's answers.

// authoritiesDER is b's X.509 authorities as the Workload API carries
// them: concatenated DER; nil when it has none.
func authoritiesDER(b *spiffebundle.Bundle) []byte { return concat(rawCerts(b)) }

// federatedDER is each foreign domain's X.509 authorities (authoritiesDER)
// by trust domain ID, built once per bundle refresh; domains without one
// are left out. nil without any.
func federatedDER(fed map[spiffeid.TrustDomain]*spiffebundle.Bundle) map[string][]byte {
	var out map[string][]byte
	for td, b := range fed {
		der := authoritiesDER(b)
		if len(der) == 0 {
			continue
		}
		if out == nil {
			out = map[string][]byte{}
		}
		out[td.IDString()] = der
	}
	return out
}

// federatedX509 is X509SVIDResponse.FederatedBundles: shared by every
// response until the next refresh, never changed.
func (t *trust) federatedX509() map[string][]byte { return t.fedDER }

// x509Bundles is FetchX509Bundles's answer: the machine's own trust
// domain's CAs and every foreign domain's.
func (t *trust) x509Bundles() map[string][]byte {
	out := make(map[string][]byte, len(t.fedDER)+1)
	for k, v := range t.fedDER {
		out[k] = v
	}
	out[t.td.IDString()] = t.x509DER
	return out
}

// jwtSet is what ValidateJWTSVID verifies with: the machine's own trust
// domain's JWT keys and every foreign domain's.
func (t *trust) jwtSet() *jwtbundle.Set {
	set := jwtbundle.NewSet(t.bundle.JWTBundle())
	for _, b := range t.federated {
		if len(b.JWTAuthorities()) > 0 {
			set.Add(b.JWTBundle())
		}
	}
	return set
}

// jwtBundleDocs is FetchJWTBundles's answer: each domain's JWT keys as a
// JWK set, by trust domain ID.
func (t *trust) jwtBundleDocs() (map[string][]byte, error) {
	out := map[string][]byte{}
	for _, b := range t.jwtSet().Bundles() {
		doc, err := b.Marshal()
		if err != nil {
			return nil, err
		}
		out[b.TrustDomain().IDString()] = doc
	}
	return out, nil
}

// foreignClaims keeps of a foreign JWT-SVID's claims only those SPIRE's
// agent returns by default (sub, exp, aud): the rest is the foreign
// domain's to define, and a relying party here must not take it for one
// of wicket's claims (org, app, machine_*).
func foreignClaims(claims map[string]any) map[string]any {
	out := map[string]any{}
	for _, k := range []string{"sub", "exp", "aud"} {
		if v, ok := claims[k]; ok {
			out[k] = v
		}
	}
	return out
}
