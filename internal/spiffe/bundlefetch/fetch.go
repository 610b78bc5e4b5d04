// Package bundlefetch fetches a foreign trust domain's SPIFFE bundle from
// its bundle endpoint (SPIFFE Federation: the https_web and https_spiffe
// profiles), for the issuer's [[spiffe.federation]]. It is apart from
// package spiffe so that what links that package (the agent, through its
// config) does not link an HTTPS client for foreign endpoints.
package bundlefetch

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

	"github.com/wicket-sh/wicket/internal/spiffe"
)

// MaxBytes bounds a foreign bundle document: a JWK set of a few CAs
// and keys is a few KiB. With at most MaxPerOrg domains per org
// (internal/config) the foreign part of an agent's bundle reply stays
// well under the agent's 1 MiB limit on an issuer reply, so a foreign
// domain can never make its agents' own bundle unreadable.
const MaxBytes = 64 << 10

// DefaultTimeout bounds one fetch of a foreign bundle, connection,
// TLS and body included.
const DefaultTimeout = 30 * time.Second

// Endpoint is a foreign trust domain's SPIFFE bundle endpoint
// (SPIFFE Trust Domain and Bundle, "Bundle endpoint").
type Endpoint struct {
	TrustDomain spiffeid.TrustDomain
	URL         string
	// EndpointID set selects the https_spiffe profile: the server must
	// present an X.509-SVID of this ID that verifies against the current
	// bundle of its trust domain. Zero selects https_web.
	EndpointID spiffeid.ID
	// Roots are the web PKI roots of https_web (nil: the system's).
	Roots *x509.CertPool
	// Timeout bounds one fetch (0: DefaultTimeout).
	Timeout time.Duration
}

// Fetch gets the endpoint's bundle of TrustDomain. current is the last
// known bundle, which https_spiffe needs to authenticate the server (it
// may be nil for https_web). No redirect is followed, no proxy from the
// environment is used, the body is bounded by MaxBytes, and a
// bundle whose authorities name another trust domain is refused.
func (e *Endpoint) Fetch(ctx context.Context, current *spiffebundle.Bundle) (*spiffebundle.Bundle, error) {
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
		timeout = DefaultTimeout
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
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxBytes+1))
	if err != nil {
		return nil, fmt.Errorf("spiffe: bundle of %s: %w", e.TrustDomain, err)
	}
	if len(body) > MaxBytes {
		return nil, fmt.Errorf("spiffe: bundle of %s: larger than %d bytes", e.TrustDomain, MaxBytes)
	}
	b, err := spiffe.ParseForeignBundle(e.TrustDomain, body)
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

// RefreshAfter is how long to wait before fetching b's trust domain
// again: its spiffe_refresh_hint within [lo, hi], def without one.
func RefreshAfter(b *spiffebundle.Bundle, def, lo, hi time.Duration) time.Duration {
	d := def
	if h, ok := b.RefreshHint(); ok && h > 0 {
		d = h
	}
	return min(max(d, lo), hi)
}
