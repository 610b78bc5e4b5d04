package trust

import (
	"bytes"
	"encoding/json"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/wicket-sh/wicket/internal/oidc"
)

const (
	testIssuer  = "https://wicket.example.com"
	testAccount = "123456789012"
	ourARN      = "arn:aws:iam::123456789012:oidc-provider/wicket.example.com/dev"
	otherARN    = "arn:aws:iam::123456789012:oidc-provider/token.actions.githubusercontent.com"
)

func mustTarget(t *testing.T, app, machine string, orgWide bool) Target {
	t.Helper()
	tg, err := NewTarget(testIssuer, "dev", app, machine, orgWide)
	if err != nil {
		t.Fatal(err)
	}
	return tg
}

func TestNewTarget(t *testing.T) {
	for _, u := range []string{"https://wicket.example.com", "https://wicket.example.com/", "https://wicket.example.com/dev", "https://wicket.example.com/dev/"} {
		tg, err := NewTarget(u, "dev", "dev-app", "", false)
		if err != nil {
			t.Fatalf("%s: %v", u, err)
		}
		if tg.Issuer != "https://wicket.example.com/dev" || tg.HostPath() != "wicket.example.com/dev" {
			t.Errorf("%s: issuer %q host path %q", u, tg.Issuer, tg.HostPath())
		}
	}
	// The issuer the claims carry is what the relying party must be given.
	if tg, _ := NewTarget("https://w.example/base", "dev", "a", "", false); tg.Issuer != oidc.IssuerURL("https://w.example/base", "dev") {
		t.Errorf("issuer %q", tg.Issuer)
	}
	for _, u := range []string{"http://127.0.0.1:8650", "http://[::1]:8650", "http://localhost:8650"} {
		if tg, err := NewTarget(u, "dev", "dev-app", "", false); err != nil || tg.Issuer != u+"/dev" {
			t.Errorf("loopback http %s: %v %q", u, err, tg.Issuer)
		}
	}
	bad := []struct {
		url, org, app, machine string
		orgWide                bool
	}{
		{"http://wicket.example.com", "dev", "a", "", false},      // plaintext off loopback
		{"wicket.example.com", "dev", "a", "", false},             // not absolute
		{"https://u@wicket.example.com", "dev", "a", "", false},   // user info
		{"https://wicket.example.com?x=1", "dev", "a", "", false}, // query
		{testIssuer, "", "a", "", false},                          // no org
		{testIssuer, "dev", "", "", false},                        // no app, not org-wide
		{testIssuer, "dev", "a*", "", false},                      // wildcard in a name
		{testIssuer, "de:v", "a", "", false},                      // ':' in a name
		{testIssuer, "dev", "a", "web:1", false},                  // ':' in the machine
		{testIssuer, "dev", "a", "", true},                        // org-wide with an app
		{testIssuer, "dev", "", "web-1", true},                    // org-wide with a machine
	}
	for _, b := range bad {
		if _, err := NewTarget(b.url, b.org, b.app, b.machine, b.orgWide); err == nil {
			t.Errorf("NewTarget(%+v) accepted", b)
		}
	}
}

// TestPrinted_RoundTripAndPass: what `wicket trust` prints parses back into
// the same document, and every printed AWS policy passes the check for the
// target it was printed for (and fails for a narrower one).
func TestPrinted_RoundTripAndPass(t *testing.T) {
	targets := map[string]Target{
		"app":      mustTarget(t, "dev-app", "", false),
		"machine":  mustTarget(t, "dev-app", "web-1", false),
		"org-wide": mustTarget(t, "", "", true),
	}
	for name, tg := range targets {
		t.Run(name, func(t *testing.T) {
			p, err := AWSTrustPolicy(tg, "", testAccount, AWSAudience)
			if err != nil {
				t.Fatal(err)
			}
			b := roundTrip(t, p, &Policy{})
			if r := CheckAWS(tg, b, testAccount, AWSAudience); !r.OK {
				t.Fatalf("printed policy flagged:\n%s\n%s", r, b)
			}
			if !bytes.Contains(b, []byte(ourARN)) {
				t.Errorf("policy does not name the provider %s:\n%s", ourARN, b)
			}
			roundTrip(t, AWSProviderConfig(tg, AWSAudience), &AWSProvider{})
			roundTrip(t, GCPProviderConfig(tg), &GCPProvider{})
			roundTrip(t, VaultAuthConfig(tg), &VaultConfig{})
			r, err := VaultRoleConfig(tg, "vault.example.com", []string{"p"})
			if err != nil {
				t.Fatal(err)
			}
			roundTrip(t, r, &VaultRole{})
			if tg.Machine != "" {
				c, err := AzureCredentialConfig(tg, AzureAudience)
				if err != nil {
					t.Fatal(err)
				}
				roundTrip(t, c, &AzureCredential{})
			}
		})
	}
	// An app's policy admits every machine of the app: flagged when one
	// machine was asked for. An org-wide one is flagged for an app.
	app, _ := AWSTrustPolicy(targets["app"], "", testAccount, AWSAudience)
	if r := CheckAWS(targets["machine"], mustJSON(t, app), testAccount, AWSAudience); r.OK || r.Findings[0].Code != CodeSubWildcardMach {
		t.Errorf("app policy for a machine target: %s", r)
	}
	org, _ := AWSTrustPolicy(targets["org-wide"], "", testAccount, AWSAudience)
	if r := CheckAWS(targets["app"], mustJSON(t, org), testAccount, AWSAudience); r.OK || r.Findings[0].Code != CodeSubWildcardApp {
		t.Errorf("org-wide policy for an app target: %s", r)
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// roundTrip marshals v, decodes it into into, marshals again, and fails
// unless both encodings and the values are equal. It returns the encoding.
func roundTrip(t *testing.T, v, into any) []byte {
	t.Helper()
	b := mustJSON(t, v)
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(into); err != nil {
		t.Fatalf("printed JSON does not parse: %v\n%s", err, b)
	}
	if b2 := mustJSON(t, into); !bytes.Equal(b, b2) {
		t.Fatalf("round trip changed the JSON:\n%s\n---\n%s", b, b2)
	}
	if got := reflect.ValueOf(into).Elem().Interface(); !reflect.DeepEqual(got, v) {
		t.Fatalf("round trip changed the value: %#v != %#v", got, v)
	}
	return b
}

func TestTargetClaimsAgreeWithIssuer(t *testing.T) {
	tg := mustTarget(t, "dev-app", "web-1", false)
	want, err := oidc.Subject("dev", "dev-app", "web-1")
	if err != nil {
		t.Fatal(err)
	}
	if got, exact := tg.SubjectPattern(); got != want || !exact {
		t.Errorf("subject %q (exact %v), the issuer signs %q", got, exact, want)
	}
	gcp := GCPProviderConfig(tg)
	if gcp.AttributeCondition != "assertion.org == 'dev' && assertion.app == 'dev-app' && assertion.sub == 'dev:dev-app:web-1'" {
		t.Errorf("condition %q", gcp.AttributeCondition)
	}
	if c := GCPProviderConfig(mustTarget(t, "", "", true)).AttributeCondition; c != "assertion.org == 'dev'" {
		t.Errorf("org-wide condition %q", c)
	}
	if _, err := AzureCredentialConfig(mustTarget(t, "dev-app", "", false), AzureAudience); err == nil {
		t.Error("Azure credential without a machine (Entra has no wildcard subjects)")
	}
	if _, err := VaultRoleConfig(tg, "", nil); err == nil {
		t.Error("Vault role without an audience")
	}
	r, _ := VaultRoleConfig(tg, "vault.example.com", []string{"p"})
	if r.BoundSubject != want || r.BoundClaims["org"] != "dev" || r.BoundClaims["app"] != "dev-app" || !slices.Equal(r.BoundAudiences, []string{"vault.example.com"}) {
		t.Errorf("vault role %+v", r)
	}
	env, err := MinIOEnv(tg, "minio.example.com", "readwrite")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range []string{
		"MINIO_IDENTITY_OPENID_CONFIG_URL=https://wicket.example.com/dev/.well-known/openid-configuration\n",
		"MINIO_IDENTITY_OPENID_CLIENT_ID=minio.example.com\n",
		"MINIO_IDENTITY_OPENID_ROLE_POLICY=readwrite\n",
		"cannot bind app or machine",
		MinIORoleARN("minio.example.com"),
	} {
		if !strings.Contains(env, l) {
			t.Errorf("MinIO env lacks %q:\n%s", l, env)
		}
	}
	if _, err := AWSTrustPolicy(tg, "", "12345", AWSAudience); err == nil {
		t.Error("short account id accepted")
	}
}

// stmt builds one statement for our provider with the given conditions.
func stmt(cond string) string {
	return `{"Effect":"Allow","Principal":{"Federated":"` + ourARN + `"},"Action":"sts:AssumeRoleWithWebIdentity","Condition":` + cond + `}`
}

func policy(stmts ...string) string {
	return `{"Version":"2012-10-17","Statement":[` + strings.Join(stmts, ",") + `]}`
}

const (
	audOK  = `"StringEquals":{"wicket.example.com/dev:aud":"sts.amazonaws.com"}`
	subApp = `"StringLike":{"wicket.example.com/dev:sub":"dev:dev-app:*"}`
)

func TestCheckAWS(t *testing.T) {
	app := mustTarget(t, "dev-app", "", false)
	machine := mustTarget(t, "dev-app", "web-1", false)
	orgWide := mustTarget(t, "", "", true)
	cases := []struct {
		name    string
		target  Target
		account string
		doc     string
		want    []string // finding codes, in order; nil: OK
		ignored int
	}{
		{"pinned app", app, "", policy(stmt(`{` + audOK + `,` + subApp + `}`)), nil, 0},
		{"pinned machine", machine, "", policy(stmt(`{"StringEquals":{"wicket.example.com/dev:aud":"sts.amazonaws.com","wicket.example.com/dev:sub":"dev:dev-app:web-1"}}`)), nil, 0},
		{"no aud", app, "", policy(stmt(`{` + subApp + `}`)), []string{CodeAudMissing}, 0},
		{"no sub", app, "", policy(stmt(`{` + audOK + `}`)), []string{CodeSubMissing}, 0},
		{"no condition", app, "", policy(`{"Effect":"Allow","Principal":{"Federated":"` + ourARN + `"},"Action":"sts:AssumeRoleWithWebIdentity"}`), []string{CodeAudMissing, CodeSubMissing}, 0},
		{"sub star", app, "", policy(stmt(`{` + audOK + `,"StringLike":{"wicket.example.com/dev:sub":"*"}}`)), []string{CodeSubWildcardOrg}, 0},
		{"star in org", app, "", policy(stmt(`{` + audOK + `,"StringLike":{"wicket.example.com/dev:sub":"d*:dev-app:*"}}`)), []string{CodeSubWildcardOrg}, 0},
		{"star in org, org-wide asked", orgWide, "", policy(stmt(`{` + audOK + `,"StringLike":{"wicket.example.com/dev:sub":"de?:*"}}`)), []string{CodeSubWildcardOrg}, 0},
		{"org-wide pattern for an app", app, "", policy(stmt(`{` + audOK + `,"StringLike":{"wicket.example.com/dev:sub":"dev:*"}}`)), []string{CodeSubWildcardApp}, 0},
		{"org-wide pattern, org-wide asked", orgWide, "", policy(stmt(`{` + audOK + `,"StringLike":{"wicket.example.com/dev:sub":"dev:*"}}`)), nil, 0},
		{"app prefix without colon", app, "", policy(stmt(`{` + audOK + `,"StringLike":{"wicket.example.com/dev:sub":"dev:dev-app*"}}`)), []string{CodeSubWildcardApp}, 0},
		{"star for the app", app, "", policy(stmt(`{` + audOK + `,"StringLike":{"wicket.example.com/dev:sub":"dev:*:web-1"}}`)), []string{CodeSubWildcardApp}, 0},
		{"question mark in the app", app, "", policy(stmt(`{` + audOK + `,"StringLike":{"wicket.example.com/dev:sub":"dev:dev-a?p:*"}}`)), []string{CodeSubWildcardApp}, 0},
		{"another org's pattern", app, "", policy(stmt(`{` + audOK + `,"StringLike":{"wicket.example.com/dev:sub":"acme:*"}}`)), []string{CodeSubOtherOrg}, 0},
		{"another app's pattern", app, "", policy(stmt(`{` + audOK + `,"StringLike":{"wicket.example.com/dev:sub":"dev:billing:*"}}`)), []string{CodeSubOtherApp}, 0},
		{"StringEquals array with another app", app, "", policy(stmt(`{"StringEquals":{"wicket.example.com/dev:aud":"sts.amazonaws.com","wicket.example.com/dev:sub":["dev:dev-app:web-1","dev:billing:web-1"]}}`)), []string{CodeSubOtherApp}, 0},
		{"StringEquals array within the app", app, "", policy(stmt(`{"StringEquals":{"wicket.example.com/dev:aud":["sts.amazonaws.com"],"wicket.example.com/dev:sub":["dev:dev-app:web-1","dev:dev-app:web-2"]}}`)), nil, 0},
		{"StringEquals another org", app, "", policy(stmt(`{"StringEquals":{"wicket.example.com/dev:aud":"sts.amazonaws.com","wicket.example.com/dev:sub":"acme:dev-app:web-1"}}`)), []string{CodeSubOtherOrg}, 0},
		{"machine asked, app pattern", machine, "", policy(stmt(`{` + audOK + `,` + subApp + `}`)), []string{CodeSubWildcardMach}, 0},
		{"machine asked, other machine", machine, "", policy(stmt(`{"StringEquals":{"wicket.example.com/dev:aud":"sts.amazonaws.com","wicket.example.com/dev:sub":"dev:dev-app:web-2"}}`)), []string{CodeSubOtherApp}, 0},
		{"machine, ignore case", machine, "", policy(stmt(`{"StringEquals":{"wicket.example.com/dev:aud":"sts.amazonaws.com"},"StringEqualsIgnoreCase":{"wicket.example.com/dev:sub":"DEV:Dev-App:WEB-1"}}`)), nil, 0},
		{"aud wildcard", app, "", policy(stmt(`{"StringLike":{"wicket.example.com/dev:aud":"*","wicket.example.com/dev:sub":"dev:dev-app:*"}}`)), []string{CodeAudWildcard}, 0},
		{"aud another audience", app, "", policy(stmt(`{"StringEquals":{"wicket.example.com/dev:aud":"vault.example.com"},` + subApp + `}`)), []string{CodeAudOther}, 0},
		{"aud any fixed value when none expected", app, "", policy(stmt(`{"StringEquals":{"wicket.example.com/dev:aud":"vault.example.com"},` + subApp + `}`)), nil, 0},
		{"ForAllValues sub", app, "", policy(stmt(`{` + audOK + `,"ForAllValues:StringLike":{"wicket.example.com/dev:sub":"dev:dev-app:*"}}`)), []string{CodeForAllValues}, 0},
		{"ForAnyValue pins", app, "", policy(stmt(`{"ForAnyValue:StringEquals":{"wicket.example.com/dev:aud":"sts.amazonaws.com"},"ForAnyValue:StringLike":{"wicket.example.com/dev:sub":"dev:dev-app:*"}}`)), nil, 0},
		{"ForAnyValue wildcard app", app, "", policy(stmt(`{` + audOK + `,"ForAnyValue:StringLike":{"wicket.example.com/dev:sub":["dev:dev-app:*","dev:*"]}}`)), []string{CodeSubWildcardApp}, 0},
		{"IfExists", app, "", policy(stmt(`{"StringEqualsIfExists":{"wicket.example.com/dev:aud":"sts.amazonaws.com"},` + subApp + `}`)), []string{CodeIfExists}, 0},
		{"negation does not pin", app, "", policy(stmt(`{` + audOK + `,"StringNotLike":{"wicket.example.com/dev:sub":"acme:*"}}`)), []string{CodeSubMissing}, 0},
		{"narrow condition beside a wide one", app, "", policy(stmt(`{"StringEquals":{"wicket.example.com/dev:aud":"sts.amazonaws.com","wicket.example.com/dev:sub":"dev:dev-app:web-1"},"StringLike":{"wicket.example.com/dev:sub":"*"}}`)), nil, 0},
		{"condition keys are case-insensitive", app, "", policy(stmt(`{"StringEquals":{"Wicket.Example.com/dev:AUD":"sts.amazonaws.com"},"StringLike":{"WICKET.EXAMPLE.COM/dev:Sub":"dev:dev-app:*"}}`)), nil, 0},
		{"another provider's keys pin nothing", app, "", policy(stmt(`{"StringEquals":{"token.actions.githubusercontent.com:aud":"sts.amazonaws.com"},"StringLike":{"token.actions.githubusercontent.com:sub":"dev:dev-app:*"}}`)), []string{CodeAudMissing, CodeSubMissing}, 0},
		{"principal star", app, "", policy(`{"Effect":"Allow","Principal":"*","Action":"sts:AssumeRoleWithWebIdentity","Condition":{` + audOK + `,` + subApp + `}}`), []string{CodePrincipalWildcard}, 0},
		{"federated star", app, "", policy(`{"Effect":"Allow","Principal":{"Federated":"*"},"Action":"sts:AssumeRoleWithWebIdentity","Condition":{` + audOK + `}}`), []string{CodePrincipalWildcard, CodeSubMissing}, 0},
		{"NotPrincipal", app, "", policy(`{"Effect":"Allow","NotPrincipal":{"AWS":"arn:aws:iam::123456789012:root"},"Action":"sts:AssumeRoleWithWebIdentity","Condition":{` + audOK + `,` + subApp + `}}`), []string{CodeNotPrincipal}, 0},
		{"second statement open", app, "", policy(stmt(`{`+audOK+`,`+subApp+`}`), stmt(`{`+audOK+`}`)), []string{CodeSubMissing}, 0},
		{"other issuer ignored", app, "", policy(stmt(`{`+audOK+`,`+subApp+`}`), `{"Effect":"Allow","Principal":{"Federated":"`+otherARN+`"},"Action":"sts:AssumeRoleWithWebIdentity"}`), nil, 1},
		{"only other issuers", app, "", policy(`{"Effect":"Allow","Principal":{"Federated":"` + otherARN + `"},"Action":"sts:AssumeRoleWithWebIdentity"}`), []string{CodeNoStatement}, 1},
		{"another org of this issuer", app, "", policy(`{"Effect":"Allow","Principal":{"Federated":"arn:aws:iam::123456789012:oidc-provider/wicket.example.com/acme"},"Action":"sts:AssumeRoleWithWebIdentity"}`), []string{CodeNoStatement}, 1},
		{"another account", app, testAccount, policy(`{"Effect":"Allow","Principal":{"Federated":"arn:aws:iam::999999999999:oidc-provider/wicket.example.com/dev"},"Action":"sts:AssumeRoleWithWebIdentity"}`), []string{CodeNoStatement}, 1},
		{"two providers in one statement", app, "", policy(`{"Effect":"Allow","Principal":{"Federated":["` + otherARN + `","` + ourARN + `"]},"Action":"sts:AssumeRoleWithWebIdentity","Condition":{` + audOK + `}}`), []string{CodeSubMissing}, 0},
		{"Deny ignored", app, "", policy(stmt(`{`+audOK+`,`+subApp+`}`), `{"Effect":"Deny","Principal":"*","Action":"*"}`), nil, 1},
		{"other action ignored", app, "", policy(`{"Effect":"Allow","Principal":{"Federated":"` + ourARN + `"},"Action":"sts:TagSession"}`), []string{CodeNoStatement}, 1},
		{"sts star is web identity", app, "", `{"Version":"2012-10-17","Statement":{"Effect":"Allow","Principal":{"Federated":"` + ourARN + `"},"Action":["sts:TagSession","STS:*"]}}`, []string{CodeAudMissing, CodeSubMissing}, 0},
		{"NotAction admitting web identity", app, "", policy(`{"Effect":"Allow","Principal":{"Federated":"` + ourARN + `"},"NotAction":"sts:AssumeRole","Condition":{` + audOK + `}}`), []string{CodeSubMissing}, 0},
		{"not JSON", app, "", `{"Version":`, []string{CodeInvalid}, 0},
		{"bad principal", app, "", policy(`{"Effect":"Allow","Principal":"arn:aws:iam::1:root","Action":"*"}`), []string{CodeInvalid}, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			aud := AWSAudience
			if c.name == "aud any fixed value when none expected" {
				aud = ""
			}
			r := CheckAWS(c.target, []byte(c.doc), c.account, aud)
			var got []string
			for _, f := range r.Findings {
				got = append(got, f.Code)
			}
			if !slices.Equal(got, c.want) || r.OK != (len(c.want) == 0) || len(r.Ignored) != c.ignored {
				t.Fatalf("findings %v (ok %v, %d ignored), want %v (%d ignored):\n%s", got, r.OK, len(r.Ignored), c.want, c.ignored, r)
			}
			// The JSON report parses back, and the text names every code.
			var back Report
			if err := json.Unmarshal(mustJSON(t, r), &back); err != nil || !reflect.DeepEqual(back, r) {
				t.Fatalf("report does not round-trip: %v", err)
			}
			for _, code := range c.want {
				if !strings.Contains(r.String(), code) {
					t.Errorf("text report lacks %s:\n%s", code, r)
				}
			}
		})
	}
}

func TestGlobMatch(t *testing.T) {
	for _, c := range []struct {
		p, s string
		want bool
	}{
		{"sts:assumerolewithwebidentity", "sts:assumerolewithwebidentity", true},
		{"sts:*", "sts:assumerolewithwebidentity", true},
		{"*", "sts:assumerolewithwebidentity", true},
		{"sts:assumerole*", "sts:assumerolewithwebidentity", true},
		{"sts:assumerole", "sts:assumerolewithwebidentity", false},
		{"sts:assumerole?", "sts:assumerolewithwebidentity", false},
		{"sts:assumerolewith?ebidentity", "sts:assumerolewithwebidentity", true},
		{"*:*identity", "sts:assumerolewithwebidentity", true},
		{"iam:*", "sts:assumerolewithwebidentity", false},
		{"", "", true},
		{"*", "", true},
		{"?", "", false},
	} {
		if got := globMatch(c.p, c.s); got != c.want {
			t.Errorf("globMatch(%q, %q) = %v", c.p, c.s, got)
		}
	}
}
