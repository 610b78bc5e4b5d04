package oidc

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/wicket-sh/wicket/internal/httpapi"
)

// Well-known paths, relative to an org's issuer URL.
const (
	DiscoveryPath = "/.well-known/openid-configuration"
	JWKSPath      = "/.well-known/jwks"
)

// DiscoveryDocument is the OpenID provider metadata of one org's issuer. It
// lists only what a relying party needs to verify tokens: wicket issues
// tokens to machines, not through an authorization endpoint.
type DiscoveryDocument struct {
	Issuer                           string   `json:"issuer"`
	JWKSURI                          string   `json:"jwks_uri"`
	ResponseTypesSupported           []string `json:"response_types_supported"`
	SubjectTypesSupported            []string `json:"subject_types_supported"`
	IDTokenSigningAlgValuesSupported []string `json:"id_token_signing_alg_values_supported"`
	ClaimsSupported                  []string `json:"claims_supported"`
	ScopesSupported                  []string `json:"scopes_supported"`
}

// Discovery returns the discovery document for issuer (see [IssuerURL]).
func Discovery(issuer string) DiscoveryDocument {
	algs := make([]string, len(Algs))
	for i, a := range Algs {
		algs[i] = string(a)
	}
	return DiscoveryDocument{
		Issuer:                           issuer,
		JWKSURI:                          issuer + JWKSPath,
		ResponseTypesSupported:           []string{"id_token"},
		SubjectTypesSupported:            []string{"public"},
		IDTokenSigningAlgValuesSupported: algs,
		ClaimsSupported:                  ClaimsSupported,
		ScopesSupported:                  []string{"openid"},
	}
}

// Handler serves GET /{org}/.well-known/openid-configuration and
// GET /{org}/.well-known/jwks for every org that has keys. Mount it at the
// root of the issuer's public URL, or under "GET /{org}/.well-known/".
type Handler struct {
	PublicURL string                   // issuer base URL; an org's issuer is IssuerURL(PublicURL, org)
	Keys      func(org string) *KeySet // current snapshot; nil for an unknown org
	// Settings returns the live publishing settings, read on every request
	// so that a config reload takes effect at once (no private copy).
	Settings func() PublishSettings
	Now      func() time.Time // nil means time.Now
}

// PublishSettings are the dynamic settings of the discovery and JWKS
// documents.
type PublishSettings struct {
	// Grace is how long retired keys stay published.
	Grace time.Duration
	// MaxAge is the Cache-Control max-age of both documents. Keep it well
	// below the prepublish delay, or a relying party may not see a new key
	// before it signs.
	MaxAge time.Duration
}

// ServeHTTP answers with the org's discovery document or JWKS, and with a
// generic JSON error for anything else.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rest, ok := strings.CutPrefix(r.URL.Path, "/")
	org, doc, ok2 := strings.Cut(rest, "/.well-known/")
	if !ok || !ok2 || org == "" || strings.Contains(org, "/") {
		httpapi.NotFound(w)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		httpapi.MethodNotAllowed(w, "GET, HEAD")
		return
	}
	// Unknown orgs get the same 404 as unknown paths, so the issuer never
	// reflects an arbitrary org name into an issuer URL.
	set := h.Keys(org)
	if set == nil {
		httpapi.NotFound(w)
		return
	}
	ps := h.Settings()
	var v any
	switch "/.well-known/" + doc {
	case DiscoveryPath:
		v = Discovery(IssuerURL(h.PublicURL, org))
	case JWKSPath:
		now := time.Now()
		if h.Now != nil {
			now = h.Now()
		}
		v = set.JWKS(now, ps.Grace)
	default:
		httpapi.NotFound(w)
		return
	}
	body, err := json.Marshal(v)
	if err != nil {
		httpapi.Internal(w)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", fmt.Sprintf("public, max-age=%d", int(ps.MaxAge.Seconds())))
	w.Write(body)
}
