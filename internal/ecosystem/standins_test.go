package ecosystem

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	gooidc "github.com/coreos/go-oidc/v3/oidc"
)

// The stand-ins below replace only what cannot run here (Google's STS,
// Microsoft Entra). Each one verifies what it receives as the real service
// would: the JWT's signature against wicket's JWKS found through
// discovery, with the issuer and the audience pinned, and answers in the
// real service's format.

// tlsStandIn serves h over HTTPS on loopback and writes its certificate
// for the clients to trust (NODE_EXTRA_CA_CERTS).
func tlsStandIn(t *testing.T, h http.Handler) (*httptest.Server, string) {
	t.Helper()
	srv := httptest.NewTLSServer(h)
	t.Cleanup(srv.Close)
	ca := filepath.Join(t.TempDir(), "standin-ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	return srv, ca
}

// verifier checks a JWT from issuer for aud, on the clock now.
func verifier(t *testing.T, issuer, aud string, now func() time.Time) *gooidc.IDTokenVerifier {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p, err := gooidc.NewProvider(ctx, issuer)
	if err != nil {
		t.Fatal(err)
	}
	return p.Verifier(&gooidc.Config{ClientID: aud, Now: now, SupportedSigningAlgs: []string{"RS256", "ES256"}})
}

// googleSTS is Google's STS token exchange (POST /v1/token) for one
// workload identity provider.
type googleSTS struct {
	URL, CA  string
	mu       sync.Mutex
	subjects []string // sub of every accepted subject token
	refused  []string // error_description of every refusal
}

func newGoogleSTS(t *testing.T, issuer, providerAud, wantSub string) *googleSTS {
	t.Helper()
	v := verifier(t, issuer, providerAud, time.Now)
	s := &googleSTS{}
	srv, ca := tlsStandIn(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fail := func(desc string) {
			s.mu.Lock()
			s.refused = append(s.refused, desc)
			s.mu.Unlock()
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			json.NewEncoder(w).Encode(map[string]string{"error": "invalid_grant", "error_description": desc})
		}
		if r.Method != http.MethodPost || r.URL.Path != "/v1/token" || r.ParseForm() != nil {
			http.NotFound(w, r)
			return
		}
		f := r.PostForm
		switch {
		case f.Get("grant_type") != "urn:ietf:params:oauth:grant-type:token-exchange":
			fail("unsupported grant_type")
			return
		case f.Get("audience") != providerAud:
			fail("the audience is not this provider")
			return
		case f.Get("subject_token_type") != "urn:ietf:params:oauth:token-type:jwt":
			fail("subject_token_type")
			return
		case f.Get("requested_token_type") != "urn:ietf:params:oauth:token-type:access_token":
			fail("requested_token_type")
			return
		}
		idt, err := v.Verify(r.Context(), f.Get("subject_token"))
		if err != nil {
			fail("Invalid value for subject_token: " + err.Error())
			return
		}
		// The provider's attribute condition: assertion.org == 'dev'.
		var c struct {
			Org string `json:"org"`
		}
		if idt.Claims(&c) != nil || c.Org != "dev" || idt.Subject != wantSub {
			fail("The given credential is rejected by the attribute condition.")
			return
		}
		s.mu.Lock()
		s.subjects = append(s.subjects, idt.Subject)
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{
			"access_token": "ya29.standin-" + randomID(), "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
			"token_type": "Bearer", "expires_in": 3599,
		})
	}))
	s.URL, s.CA = srv.URL, ca
	return s
}

// entra is Microsoft Entra's token endpoint for one tenant, with a
// federated identity credential: the app clientID trusts issuer for
// subject wantSub and the audience api://AzureADTokenExchange. Its clock
// is now() (shifted by the rotation test).
type entra struct {
	URL, CA string
	mu      sync.Mutex
	now     func() time.Time
	seen    []string // fingerprints of the assertions presented, in order
	iat     []time.Time
	refused []string
}

func newEntra(t *testing.T, issuer, tenant, clientID, wantSub string) *entra {
	t.Helper()
	e := &entra{now: time.Now}
	clock := func() time.Time { e.mu.Lock(); defer e.mu.Unlock(); return e.now() }
	v := verifier(t, issuer, "api://AzureADTokenExchange", clock)
	var base string
	mux := http.NewServeMux()
	oidcConfig := func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{
			"issuer": base + "/" + tenant + "/v2.0", "token_endpoint": base + "/" + tenant + "/oauth2/v2.0/token",
			"authorization_endpoint": base + "/" + tenant + "/oauth2/v2.0/authorize", "jwks_uri": base + "/" + tenant + "/discovery/v2.0/keys",
			"end_session_endpoint": base + "/" + tenant + "/oauth2/v2.0/logout",
		})
	}
	mux.HandleFunc("GET /"+tenant+"/v2.0/.well-known/openid-configuration", oidcConfig)
	mux.HandleFunc("GET /common/discovery/instance", func(w http.ResponseWriter, r *http.Request) {
		host := strings.TrimPrefix(base, "https://")
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{
			"tenant_discovery_endpoint": base + "/" + tenant + "/v2.0/.well-known/openid-configuration", "api-version": "1.1",
			"metadata": []any{map[string]any{"preferred_network": host, "preferred_cache": host, "aliases": []string{host}}},
		})
	})
	mux.HandleFunc("POST /"+tenant+"/oauth2/v2.0/token", func(w http.ResponseWriter, r *http.Request) {
		fail := func(code int, desc string) {
			e.mu.Lock()
			e.refused = append(e.refused, desc)
			e.mu.Unlock()
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			json.NewEncoder(w).Encode(map[string]any{"error": "invalid_client", "error_description": desc, "error_codes": []int{code}})
		}
		if r.ParseForm() != nil {
			fail(900144, "AADSTS900144: malformed body")
			return
		}
		f := r.PostForm
		if f.Get("grant_type") != "client_credentials" || f.Get("client_id") != clientID ||
			f.Get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" {
			fail(700016, "AADSTS700016: unexpected client or grant")
			return
		}
		a := f.Get("client_assertion")
		e.mu.Lock()
		e.seen = append(e.seen, fingerprint(a))
		e.mu.Unlock()
		idt, err := v.Verify(r.Context(), a)
		switch {
		case err != nil && strings.Contains(err.Error(), "expired"):
			fail(700024, "AADSTS700024: Client assertion is not within its valid time range.")
			return
		case err != nil:
			fail(700211, "AADSTS700211: No matching federated identity record found for presented assertion issuer, or the signature does not verify: "+err.Error())
			return
		case idt.Subject != wantSub:
			fail(70021, "AADSTS70021: No matching federated identity record found for presented assertion subject.")
			return
		}
		e.mu.Lock()
		e.iat = append(e.iat, idt.IssuedAt)
		e.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599,
			"access_token": "eyJ0eXAiOiJKV1QifQ.standin-" + randomID() + ".sig"})
	})
	srv, ca := tlsStandIn(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if os.Getenv("WICKET_ECOSYSTEM_DEBUG") != "" {
			t.Logf("entra stand-in: %s %s", r.Method, r.URL)
		}
		mux.ServeHTTP(w, r)
	}))
	base = srv.URL
	e.URL, e.CA = srv.URL, ca
	return e
}

func randomID() string { return fmt.Sprintf("%x", time.Now().UnixNano()) }
