package bundlefetch

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wicket-sh/wicket/internal/spiffe"
)

var foreign = spiffeid.RequireTrustDomainFromString("spire.test")

// foreignDomain is a CA of a foreign trust domain and its bundle document.
type foreignDomain struct {
	ca  *spiffe.CA
	doc []byte
	b   *spiffebundle.Bundle
}

func newForeign(t *testing.T, td spiffeid.TrustDomain, hint time.Duration) *foreignDomain {
	t.Helper()
	ca, err := spiffe.NewCA(td, time.Now(), 24*time.Hour, 0)
	if err != nil {
		t.Fatal(err)
	}
	b, err := spiffe.NewBundle(td, []*spiffe.CA{ca}, jose.JSONWebKeySet{}, hint, 7)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return &foreignDomain{ca: ca, doc: doc, b: b}
}

// svidCert is a TLS certificate holding an X.509-SVID of id signed by ca.
func svidCert(t *testing.T, ca *spiffe.CA, id spiffeid.ID) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
	if err != nil {
		t.Fatal(err)
	}
	csr, _, err := spiffe.ParseCSR(csrDER)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	der, _, err := spiffe.SignX509SVID(ca, csr, id, now, now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func webEndpoint(t *testing.T, h http.Handler) (*Endpoint, *httptest.Server) {
	t.Helper()
	srv := httptest.NewTLSServer(h)
	t.Cleanup(srv.Close)
	roots := x509.NewCertPool()
	roots.AddCert(srv.Certificate())
	return &Endpoint{TrustDomain: foreign, URL: srv.URL + "/bundle", Roots: roots}, srv
}

func serveDoc(doc []byte) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(doc)
	})
}

func TestFetch_HTTPSWeb(t *testing.T) {
	f := newForeign(t, foreign, 90*time.Second)
	ep, _ := webEndpoint(t, serveDoc(f.doc))
	b, err := ep.Fetch(t.Context(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if !b.X509Bundle().Equal(f.b.X509Bundle()) || b.TrustDomain() != foreign {
		t.Errorf("fetched bundle differs from the served one")
	}
	if h, _ := b.RefreshHint(); h != 90*time.Second {
		t.Errorf("refresh hint %s, want 90s", h)
	}
	// Without the test CA among the roots (the system's), the server is
	// not trusted.
	ep.Roots = nil
	if _, err := ep.Fetch(t.Context(), nil); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("fetch from a server no root vouches for: %v", err)
	}
}

// A bundle endpoint's redirect is not followed: a new place would be
// trusted for the domain on the endpoint's word.
func TestFetch_RedirectNotFollowed(t *testing.T) {
	f := newForeign(t, foreign, time.Minute)
	mux := http.NewServeMux()
	mux.Handle("/elsewhere", serveDoc(f.doc))
	mux.Handle("/bundle", http.RedirectHandler("/elsewhere", http.StatusFound))
	ep, _ := webEndpoint(t, mux)
	if _, err := ep.Fetch(t.Context(), nil); err == nil || !strings.Contains(err.Error(), "302") {
		t.Fatalf("redirected fetch: %v, want a refusal naming 302", err)
	}
}

func TestFetch_Refusals(t *testing.T) {
	good := newForeign(t, foreign, time.Minute)
	other := newForeign(t, spiffeid.RequireTrustDomainFromString("other.test"), time.Minute)
	for _, tc := range []struct {
		name string
		h    http.Handler
		want string
	}{
		{"too large", serveDoc([]byte(`{"keys":[` + strings.Repeat(" ", MaxBytes) + `]}`)), "larger than"},
		{"not a bundle", serveDoc([]byte(`<html>`)), "bundle of spire.test"},
		{"no authorities", serveDoc([]byte(`{"keys":[]}`)), "no authorities"},
		{"another domain's CA", serveDoc(other.doc), "names trust domain other.test"},
		{"error status", http.NotFoundHandler(), "answered 404"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ep, _ := webEndpoint(t, tc.h)
			if _, err := ep.Fetch(t.Context(), good.b); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("fetch: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestFetch_Timeout(t *testing.T) {
	release := make(chan struct{})
	ep, _ := webEndpoint(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer close(release)
	ep.Timeout = 200 * time.Millisecond
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if _, err := ep.Fetch(ctx, nil); err == nil || ctx.Err() != nil {
		t.Fatalf("fetch from a server that never answers: %v (the fetch's own timeout must end it)", err)
	}
}

// https_spiffe: the endpoint's X.509-SVID must carry endpoint_spiffe_id
// and verify against the domain's current bundle.
func TestFetch_HTTPSSPIFFE(t *testing.T) {
	f := newForeign(t, foreign, time.Minute)
	serverID := spiffeid.RequireFromString("spiffe://spire.test/spire/server")
	start := func(t *testing.T, cert tls.Certificate) *Endpoint {
		srv := httptest.NewUnstartedServer(serveDoc(f.doc))
		srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
		srv.StartTLS()
		t.Cleanup(srv.Close)
		return &Endpoint{TrustDomain: foreign, URL: srv.URL, EndpointID: serverID}
	}
	ep := start(t, svidCert(t, f.ca, serverID))
	b, err := ep.Fetch(t.Context(), f.b)
	if err != nil {
		t.Fatalf("fetch with the current bundle: %v", err)
	}
	if !b.X509Bundle().Equal(f.b.X509Bundle()) {
		t.Error("fetched bundle differs")
	}
	if _, err := ep.Fetch(t.Context(), nil); err == nil || !strings.Contains(err.Error(), "no known bundle") {
		t.Errorf("fetch without a bundle to authenticate with: %v", err)
	}
	// Another ID of the domain, the right CA: refused.
	wrongID := start(t, svidCert(t, f.ca, spiffeid.RequireFromString("spiffe://spire.test/workload")))
	if _, err := wrongID.Fetch(t.Context(), f.b); err == nil || !strings.Contains(err.Error(), "unexpected ID") {
		t.Errorf("endpoint with another SPIFFE ID: %v", err)
	}
	// A bundle without an X.509 authority would lock the next fetch out.
	jwtOnly := spiffebundle.New(foreign)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err := jwtOnly.AddJWTAuthority("k1", key.Public()); err != nil {
		t.Fatal(err)
	}
	jwtDoc, _ := jwtOnly.Marshal()
	srv := httptest.NewUnstartedServer(serveDoc(jwtDoc))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{svidCert(t, f.ca, serverID)}}
	srv.StartTLS()
	defer srv.Close()
	lockout := &Endpoint{TrustDomain: foreign, URL: srv.URL, EndpointID: serverID}
	if _, err := lockout.Fetch(t.Context(), f.b); err == nil || !strings.Contains(err.Error(), "no x509 authority") {
		t.Errorf("https_spiffe bundle without x509 authorities: %v", err)
	}
	// The right ID signed by a CA the current bundle does not hold.
	rogue := newForeign(t, foreign, time.Minute)
	wrongCA := start(t, svidCert(t, rogue.ca, serverID))
	if _, err := wrongCA.Fetch(t.Context(), f.b); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("endpoint with an SVID of another CA: %v", err)
	}
}

func TestRefreshAfter_Bounds(t *testing.T) {
	lo, hi, def := 30*time.Second, time.Hour, 5*time.Minute
	for _, tc := range []struct {
		hint, want time.Duration
	}{
		{0, def}, // no hint
		{time.Second, lo},
		{10 * time.Minute, 10 * time.Minute},
		{48 * time.Hour, hi},
	} {
		b := spiffebundle.New(foreign)
		if tc.hint > 0 {
			b.SetRefreshHint(tc.hint)
		}
		if got := RefreshAfter(b, def, lo, hi); got != tc.want {
			t.Errorf("hint %s: refresh after %s, want %s", tc.hint, got, tc.want)
		}
	}
}
