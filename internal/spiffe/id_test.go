package spiffe

import (
	"errors"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestTrustDomainFor(t *testing.T) {
	explicit := map[string]string{"acme": "acme.example"}
	for _, tc := range []struct {
		template, org, want string
		ok                  bool
	}{
		{"", "dev", "dev.wicket.internal", true},
		{"{org}.corp.example", "dev", "dev.corp.example", true},
		{"", "acme", "acme.example", true},
		{"", "Upper", "", false}, // trust domains are lowercase
		{"", "a/b", "", false},
		{"{org}.x", "", "", false},
	} {
		td, err := TrustDomainFor(tc.template, explicit, tc.org)
		if (err == nil) != tc.ok || (tc.ok && td.Name() != tc.want) {
			t.Errorf("TrustDomainFor(%q, %q) = %q, %v; want %q ok=%v", tc.template, tc.org, td, err, tc.want, tc.ok)
		}
	}
	if err := ValidateTemplate("shared.example"); err == nil {
		t.Error("a template without {org} (every org one domain) was accepted")
	}
	if err := ValidateTemplate("{org}.Example"); err == nil {
		t.Error("an invalid template was accepted")
	}
}

// The issuer refuses any ID outside the machine's org/app namespace.
func TestCheckNamespace(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("acme.test")
	for _, tc := range []struct {
		id string
		ok bool
	}{
		{"spiffe://acme.test/app/web/machine/web-1", true},
		{"spiffe://acme.test/app/web/workload/frontend", true},
		{"spiffe://acme.test/app/web/machine/web-2", false},    // another machine
		{"spiffe://acme.test/app/db/machine/web-1", false},     // another app
		{"spiffe://acme.test/app/db/workload/frontend", false}, // another app's workload
		{"spiffe://other.test/app/web/machine/web-1", false},   // another trust domain
		{"spiffe://acme.test/app/web/machine/web-1/x", false},  // deeper path
		{"spiffe://acme.test/app/web", false},                  // the app itself
		{"spiffe://acme.test", false},                          // the trust domain
		{"spiffe://acme.test/admin/web/machine/web-1", false},  // another shape
		{"spiffe://acme.test/app/web/something/web-1", false},  // unknown kind
	} {
		id := spiffeid.RequireFromString(tc.id)
		err := CheckNamespace(id, td, "web", "web-1")
		if (err == nil) != tc.ok {
			t.Errorf("CheckNamespace(%s) = %v, want ok=%v", tc.id, err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrNamespace) {
			t.Errorf("CheckNamespace(%s) = %v, does not wrap ErrNamespace", tc.id, err)
		}
	}
}

func TestWorkloadID(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("acme.test")
	id, err := WorkloadID(td, "web", "frontend")
	if err != nil || id.String() != "spiffe://acme.test/app/web/workload/frontend" {
		t.Fatalf("WorkloadID = %s, %v", id, err)
	}
	for _, bad := range []string{"", ".", "..", "a/b", "a b", string(make([]byte, MaxWorkloadNameLen+1))} {
		if _, err := WorkloadID(td, "web", bad); err == nil {
			t.Errorf("WorkloadID(%q) accepted", bad)
		}
	}
	if id, err := MachineID(td, "web", "web-1"); err != nil || id.String() != "spiffe://acme.test/app/web/machine/web-1" {
		t.Fatalf("MachineID = %s, %v", id, err)
	}
}

// An org whose templated trust domain is another org's explicit one is
// refused, so the two never share a trust domain; an explicit entry that
// is its own org's templated name is fine.
func TestTrustDomainFor_TemplatedEqualsExplicitRefused(t *testing.T) {
	explicit := map[string]string{"acme": "beta.wicket.internal", "self": "self.wicket.internal"}
	if _, err := TrustDomainFor("", explicit, "beta"); err == nil {
		t.Error("org beta got the trust domain org acme names explicitly")
	}
	if td, err := TrustDomainFor("", explicit, "acme"); err != nil || td.Name() != "beta.wicket.internal" {
		t.Errorf("acme's explicit trust domain: %q, %v", td, err)
	}
	for _, org := range []string{"self", "gamma"} {
		if td, err := TrustDomainFor("", explicit, org); err != nil || td.Name() != org+".wicket.internal" {
			t.Errorf("org %s: %q, %v", org, td, err)
		}
	}
}

// TemplateOrg inverts the template: the org whose templated trust domain
// is name, when there is one.
func TestTemplateOrg(t *testing.T) {
	for _, tc := range []struct {
		template, name, org string
		ok                  bool
	}{
		{"{org}.wicket.internal", "beta.wicket.internal", "beta", true},
		{"{org}.wicket.internal", "a.b.wicket.internal", "a.b", true},
		{"{org}.wicket.internal", "beta.example", "", false},
		{"{org}.wicket.internal", ".wicket.internal", "", false}, // no org is empty
		{"td-{org}.example", "td-beta.example", "beta", true},
		{"{org}.{org}.example", "x.x.example", "x", true},
		{"{org}.{org}.example", "x.y.example", "", false},
		{"{org}", "beta", "beta", true},
		{"", "beta.wicket.internal", "beta", true}, // the default template
		{"", "spire.test", "", false},
		{"{org}.corp.example", "a-b.corp.example", "a-b", true},
		{"td-{org}.{org}.example", "td-x.x.example", "x", true},
		{"td-{org}.{org}.example", "td-x.y.example", "", false},
		{"td-{org}.{org}.example", "td-xy.example", "", false},
	} {
		org, ok := TemplateOrg(tc.template, tc.name)
		if ok != tc.ok || org != tc.org {
			t.Errorf("TemplateOrg(%q, %q) = %q, %v; want %q, %v", tc.template, tc.name, org, ok, tc.org, tc.ok)
		}
	}
}
