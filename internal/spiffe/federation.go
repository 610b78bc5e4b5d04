package spiffe

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
)

// MaxBundleBytes bounds a foreign bundle document: a JWK set of a few CAs
// and keys is a few KiB.
const MaxBundleBytes = 1 << 20

// DefaultFetchTimeout bounds one fetch of a foreign bundle, connection,
// TLS and body included.
const DefaultFetchTimeout = 30 * time.Second

// BundleEndpoint is a foreign trust domain's SPIFFE bundle endpoint
// (SPIFFE Trust Domain and Bundle, "Bundle endpoint").
type BundleEndpoint struct {
	TrustDomain spiffeid.TrustDomain
	URL         string
	// EndpointID set selects the https_spiffe profile: the server must
	// present an X.509-SVID of this ID that verifies against the current
	// bundle of its trust domain. Zero selects https_web.
	EndpointID spiffeid.ID
	// Roots are the web PKI roots of https_web (nil: the system's).
	Roots *x509.CertPool
	// Timeout bounds one fetch (0: DefaultFetchTimeout).
	Timeout time.Duration
}

// Fetch gets the endpoint's bundle of TrustDomain. current is the last
// known bundle, which https_spiffe needs to authenticate the server (it
// may be nil for https_web). No redirect is followed, no proxy from the
// environment is used, the body is bounded by MaxBundleBytes, and a
// bundle whose authorities name another trust domain is refused.
func (e *BundleEndpoint) Fetch(ctx context.Context, current *spiffebundle.Bundle) (*spiffebundle.Bundle, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: e.Roots}
	if !e.EndpointID.IsZero() {
		if current == nil || len(current.X509Authorities()) == 0 {
			return nil, fmt.Errorf("spiffe: bundle of %s: no known bundle to authenticate %s with", e.TrustDomain, e.EndpointID)
		}
		if !e.EndpointID.MemberOf(current.TrustDomain()) {
			return nil, fmt.Errorf("spiffe: bundle of %s: endpoint id outside the trust domain", e.TrustDomain)
		}
		tc = tlsconfig.TLSClientConfig(current, tlsconfig.AuthorizeID(e.EndpointID))
		tc.MinVersion = tls.VersionTLS12
	}
	timeout := e.Timeout
	if timeout <= 0 {
		timeout = DefaultFetchTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	hc := &http.Client{
		Transport: &http.Transport{
			Proxy:                  nil,
			DialContext:            (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
			TLSClientConfig:        tc,
			TLSHandshakeTimeout:    10 * time.Second,
			MaxResponseHeaderBytes: 64 << 10,
			DisableKeepAlives:      true, // one request every few minutes
			ForceAttemptHTTP2:      true,
		},
		// A bundle endpoint answers where it is asked; a redirect is a
		// failure, not a new place to trust.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.URL, nil)
	if err != nil {
		return nil, fmt.Errorf("spiffe: bundle of %s: %w", e.TrustDomain, err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("spiffe: bundle of %s: %w", e.TrustDomain, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("spiffe: bundle of %s: endpoint answered %d", e.TrustDomain, resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxBundleBytes+1))
	if err != nil {
		return nil, fmt.Errorf("spiffe: bundle of %s: %w", e.TrustDomain, err)
	}
	if len(body) > MaxBundleBytes {
		return nil, fmt.Errorf("spiffe: bundle of %s: larger than %d bytes", e.TrustDomain, MaxBundleBytes)
	}
	b, err := ParseForeignBundle(e.TrustDomain, body)
	if err != nil {
		return nil, err
	}
	if !e.EndpointID.IsZero() && len(b.X509Authorities()) == 0 {
		// The next fetch authenticates with this bundle: without an
		// X.509 authority it could never succeed again.
		return nil, fmt.Errorf("spiffe: bundle of %s: no x509 authority to authenticate the endpoint with next time", e.TrustDomain)
	}
	return b, nil
}

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

// RefreshAfter is how long to wait before fetching b's trust domain
// again: its spiffe_refresh_hint within [lo, hi], def without one.
func RefreshAfter(b *spiffebundle.Bundle, def, lo, hi time.Duration) time.Duration {
	d := def
	if h, ok := b.RefreshHint(); ok && h > 0 {
		d = h
	}
	return min(max(d, lo), hi)
}
