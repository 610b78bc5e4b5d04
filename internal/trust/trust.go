// Package trust computes the relying-party configuration that makes a
// cloud or tool trust one org's (and optionally one app's or machine's)
// wicket tokens, and checks AWS role trust policies for the mistakes that
// let other orgs, apps or audiences in.
//
// Everything here is pure computation on the issuer URL, org, app and
// machine name: nothing is fetched, so the output can be reviewed before
// it is applied. The claims it pins are the ones the issuer signs (see
// oidc.Subject): sub is "<org>:<app>:<machine_name>" and the token carries
// org and app claims; names never contain ':', '*' or '?'
// (config.ValidName), so a pattern "org:app:*" admits that app's machines
// and nothing else.
package trust

import (
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"

	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/httpapi"
	"github.com/wicket-sh/wicket/internal/oidc"
)

// Default audiences of the relying parties that have one.
const (
	AWSAudience   = "sts.amazonaws.com"
	AzureAudience = "api://AzureADTokenExchange"
)

// Target names whose tokens a relying party should accept.
type Target struct {
	// Issuer is the org's OIDC issuer, "<public_url>/<org>" (the tokens'
	// iss). Set by NewTarget.
	Issuer string
	Org    string
	// App is empty only for an org-wide target (OrgWide).
	App string
	// Machine, when set, narrows the target to one machine name.
	Machine string
	// OrgWide admits every app of the org; only set on explicit request.
	OrgWide bool
}

// NewTarget validates the parts and computes the org's issuer. issuerURL is
// the issuer's public_url or the org's issuer itself ("<public_url>/<org>");
// both give the same issuer. It must be https, or http on a loopback host
// (what `wicket dev` serves); cloud relying parties accept https only.
func NewTarget(issuerURL, org, app, machine string, orgWide bool) (Target, error) {
	if !config.ValidName(org) {
		return Target{}, errors.New("trust: --org must be a valid org name (lowercase letters, digits and '-')")
	}
	switch {
	case orgWide && app != "":
		return Target{}, errors.New("trust: --org-wide and --app are exclusive")
	case orgWide && machine != "":
		return Target{}, errors.New("trust: --org-wide and --machine are exclusive")
	case !orgWide && !config.ValidName(app):
		return Target{}, errors.New("trust: --app must be a valid app name (or ask for --org-wide)")
	case machine != "" && !config.ValidName(machine):
		return Target{}, errors.New("trust: --machine must be a valid machine name")
	}
	u, err := url.Parse(issuerURL)
	if err != nil || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return Target{}, errors.New("trust: --issuer-url must be an absolute URL without user, query or fragment")
	}
	if u.Scheme != "https" && !(u.Scheme == "http" && httpapi.LoopbackHost(u.Hostname())) {
		return Target{}, errors.New("trust: --issuer-url must be https (http only on a loopback host)")
	}
	base := strings.TrimRight(u.Scheme+"://"+u.Host+u.EscapedPath(), "/")
	iss := oidc.IssuerURL(base, org)
	if strings.HasSuffix(base, "/"+org) {
		iss = base
	}
	return Target{Issuer: iss, Org: org, App: app, Machine: machine, OrgWide: orgWide}, nil
}

// HostPath is the issuer without its scheme: the name AWS gives the OIDC
// provider and the prefix of its condition keys ("HOSTPATH:aud").
func (t Target) HostPath() string {
	return t.Issuer[strings.Index(t.Issuer, "://")+3:]
}

// Subject returns the machine's sub claim; it needs Machine.
func (t Target) Subject() (string, error) { return oidc.Subject(t.Org, t.App, t.Machine) }

// SubjectPattern is what a sub must match: the machine's exact subject,
// "org:app:*" for an app, "org:*" for an org-wide target. exact reports
// whether it has no wildcard.
func (t Target) SubjectPattern() (pattern string, exact bool) {
	switch {
	case t.OrgWide:
		return t.Org + ":*", false
	case t.Machine != "":
		s, _ := t.Subject() // parts validated by NewTarget
		return s, true
	default:
		return t.Org + ":" + t.App + ":*", false
	}
}

func (t Target) describe() string {
	switch {
	case t.OrgWide:
		return "every app of org " + t.Org
	case t.Machine != "":
		return "machine " + t.Machine + " of app " + t.App + " of org " + t.Org
	default:
		return "app " + t.App + " of org " + t.Org
	}
}

// AWSProvider is the input of `aws iam create-open-id-connect-provider
// --cli-input-json`. No thumbprint: AWS checks the JWKS endpoint's
// certificate against the CAs it trusts.
type AWSProvider struct {
	URL          string   `json:"Url"`
	ClientIDList []string `json:"ClientIDList"`
}

// AWSProviderConfig returns the IAM OIDC provider for t's issuer.
func AWSProviderConfig(t Target, aud string) AWSProvider {
	return AWSProvider{URL: t.Issuer, ClientIDList: []string{aud}}
}

var accountRE = regexp.MustCompile(`^[0-9]{12}$`)

// AWSProviderARN is the ARN IAM gives t's provider in account.
func AWSProviderARN(t Target, partition, account string) string {
	return "arn:" + partition + ":iam::" + account + ":oidc-provider/" + t.HostPath()
}

// AWSTrustPolicy returns a role trust policy admitting exactly t: the
// provider as principal, aud pinned with StringEquals and sub pinned to
// the machine (StringEquals) or to "org:app:*" / "org:*" (StringLike, the
// wildcard only after the last fixed ':').
func AWSTrustPolicy(t Target, partition, account, aud string) (Policy, error) {
	if !accountRE.MatchString(account) {
		return Policy{}, errors.New("trust: --account-id must be 12 digits")
	}
	if partition == "" {
		partition = "aws"
	}
	if aud == "" {
		return Policy{}, errors.New("trust: the audience must not be empty")
	}
	hp := t.HostPath()
	cond := map[string]map[string]Values{"StringEquals": {hp + ":aud": {aud}}}
	sub, exact := t.SubjectPattern()
	if exact {
		cond["StringEquals"][hp+":sub"] = Values{sub}
	} else {
		cond["StringLike"] = map[string]Values{hp + ":sub": {sub}}
	}
	return Policy{
		Version: "2012-10-17",
		Statement: Statements{{
			Sid:       "Wicket" + sidPart(t),
			Effect:    "Allow",
			Principal: &Principal{Types: map[string]Values{"Federated": {AWSProviderARN(t, partition, account)}}},
			Action:    Values{"sts:AssumeRoleWithWebIdentity"},
			Condition: cond,
		}},
	}, nil
}

// sidPart makes a statement id from the target ([A-Za-z0-9] only).
func sidPart(t Target) string {
	var b strings.Builder
	for _, p := range []string{t.Org, t.App, t.Machine} {
		for _, w := range strings.Split(p, "-") {
			if w != "" {
				b.WriteString(strings.ToUpper(w[:1]) + w[1:])
			}
		}
	}
	return b.String()
}

// GCPProvider is a workload identity pool provider as the IAM API takes it
// (projects.locations.workloadIdentityPools.providers, for `POST
// .../providers?workloadIdentityPoolProviderId=ID` or Terraform's
// google_iam_workload_identity_pool_provider).
type GCPProvider struct {
	DisplayName        string            `json:"displayName"`
	AttributeMapping   map[string]string `json:"attributeMapping"`
	AttributeCondition string            `json:"attributeCondition"`
	OIDC               GCPOIDC           `json:"oidc"`
}

// GCPOIDC is the provider's OIDC part. AllowedAudiences is left empty on
// purpose: the provider then accepts only its own resource name as aud.
type GCPOIDC struct {
	IssuerURI string `json:"issuerUri"`
}

// GCPProviderConfig maps google.subject from sub and org, app and
// machine_id to attributes, and refuses in its condition every token not
// of t (other orgs, other apps, other machines).
func GCPProviderConfig(t Target) GCPProvider {
	cond := "assertion.org == '" + t.Org + "'"
	if !t.OrgWide {
		cond += " && assertion.app == '" + t.App + "'"
	}
	if t.Machine != "" {
		s, _ := t.Subject()
		cond += " && assertion.sub == '" + s + "'"
	}
	name := "wicket " + t.Org
	if t.App != "" {
		name += "/" + t.App
	}
	return GCPProvider{
		DisplayName: name,
		AttributeMapping: map[string]string{
			"google.subject":       "assertion.sub",
			"attribute.org":        "assertion.org",
			"attribute.app":        "assertion.app",
			"attribute.machine_id": "assertion.machine_id",
		},
		AttributeCondition: cond,
		OIDC:               GCPOIDC{IssuerURI: t.Issuer},
	}
}

// AzureCredential is a federated identity credential as
// `az ad app federated-credential create --parameters FILE` takes it.
// Entra matches issuer, subject and audience exactly, so it needs a machine.
type AzureCredential struct {
	Name        string   `json:"name"`
	Issuer      string   `json:"issuer"`
	Subject     string   `json:"subject"`
	Audiences   []string `json:"audiences"`
	Description string   `json:"description"`
}

// AzureCredentialConfig returns the credential for t's machine.
func AzureCredentialConfig(t Target, aud string) (AzureCredential, error) {
	if t.Machine == "" {
		return AzureCredential{}, errors.New("trust: Azure matches the subject exactly: give --machine (one credential per machine)")
	}
	s, err := t.Subject()
	if err != nil {
		return AzureCredential{}, err
	}
	return AzureCredential{
		Name:        t.Org + "-" + t.App + "-" + t.Machine,
		Issuer:      t.Issuer,
		Subject:     s,
		Audiences:   []string{aud},
		Description: "wicket " + t.describe(),
	}, nil
}

// VaultConfig is the body of `vault write auth/jwt/config`.
type VaultConfig struct {
	OIDCDiscoveryURL string `json:"oidc_discovery_url"`
	BoundIssuer      string `json:"bound_issuer"`
}

// VaultRole is the body of `vault write auth/jwt/role/NAME`.
type VaultRole struct {
	RoleType        string            `json:"role_type"`
	UserClaim       string            `json:"user_claim"`
	BoundAudiences  []string          `json:"bound_audiences"`
	BoundSubject    string            `json:"bound_subject,omitempty"`
	BoundClaimsType string            `json:"bound_claims_type"`
	BoundClaims     map[string]string `json:"bound_claims"`
	ClaimMappings   map[string]string `json:"claim_mappings"`
	TokenPolicies   []string          `json:"token_policies"`
}

// VaultAuthConfig returns the JWT auth method's config for t's issuer.
func VaultAuthConfig(t Target) VaultConfig {
	return VaultConfig{OIDCDiscoveryURL: t.Issuer, BoundIssuer: t.Issuer}
}

// VaultRoleConfig returns a role admitting exactly t: bound audience,
// org and app bound as exact strings (names hold no glob characters, so
// "string" matching loses nothing), and bound_subject for a machine.
func VaultRoleConfig(t Target, aud string, policies []string) (VaultRole, error) {
	if aud == "" {
		return VaultRole{}, errors.New("trust: Vault needs --aud (the audience the machines ask for)")
	}
	claims := map[string]string{"org": t.Org}
	if !t.OrgWide {
		claims["app"] = t.App
	}
	r := VaultRole{
		RoleType:        "jwt",
		UserClaim:       "sub",
		BoundAudiences:  []string{aud},
		BoundClaimsType: "string",
		BoundClaims:     claims,
		ClaimMappings:   map[string]string{"machine_id": "machine_id", "machine_name": "machine_name", "app": "app", "region": "region"},
		TokenPolicies:   policies,
	}
	if t.Machine != "" {
		r.BoundSubject, _ = t.Subject()
	}
	return r, nil
}

// MinIOEnv returns the environment that makes MinIO trust t's org for the
// client ID aud, with role policy policy, and the role's ARN.
// MinIO checks signature, expiry and aud only: it cannot bind app or
// machine, so the policy applies to every machine of the org asking for
// this audience (the lines say so).
func MinIOEnv(t Target, aud, policy string) (string, error) {
	if aud == "" {
		return "", errors.New("trust: MinIO needs --aud (its client ID)")
	}
	if policy == "" {
		return "", errors.New("trust: MinIO needs a role policy")
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# MinIO trusts org %s for client ID %s; role %s\n", t.Org, aud, MinIORoleARN(aud))
	if !t.OrgWide {
		b.WriteString("# MinIO cannot bind app or machine: the role policy applies to every machine of the org asking for this audience\n")
	}
	fmt.Fprintf(&b, "MINIO_IDENTITY_OPENID_CONFIG_URL=%s/.well-known/openid-configuration\n", t.Issuer)
	fmt.Fprintf(&b, "MINIO_IDENTITY_OPENID_CLIENT_ID=%s\n", aud)
	fmt.Fprintf(&b, "MINIO_IDENTITY_OPENID_ROLE_POLICY=%s\n", policy)
	return b.String(), nil
}

// MinIORoleARN is the role MinIO derives for an OpenID provider configured
// with a role policy (internal/config/identity/openid in MinIO's source):
// arn:minio:iam:<region>::role/<base64url-nopad(sha1(client_id))>, region
// empty unless the server sets one.
func MinIORoleARN(clientID string) string {
	sum := sha1.Sum([]byte(clientID))
	return "arn:minio:iam:::role/" + base64.RawURLEncoding.EncodeToString(sum[:])
}
