// Package spiffe holds the mechanics of wicket's SPIFFE identities: trust
// domain names per org, the SPIFFE IDs a machine may hold, the per-org
// X.509 certificate authority with its rotation, X.509-SVID signing from a
// CSR, and the SPIFFE bundle format. It keeps no state: the issuer seals
// and stores CAs and hands them back as [CA] values.
//
// Names and IDs are validated by go-spiffe's spiffeid package, the
// reference reading of the SPIFFE ID specification.
package spiffe

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// DefaultTrustDomainTemplate names an org's trust domain when the config
// names none: "{org}" stands for the org.
const DefaultTrustDomainTemplate = "{org}.wicket.internal"

// MaxWorkloadNameLen bounds a workload name (one path segment).
const MaxWorkloadNameLen = 128

// ErrNamespace is wrapped by every refusal of an ID outside the machine's
// namespace; its messages never quote the ID.
var ErrNamespace = errors.New("spiffe: id outside the machine's namespace")

// TrustDomainFor returns org's trust domain: explicit[org] when listed,
// else template with "{org}" replaced. The result is validated, and a
// templated name that another org holds explicitly is refused: the two
// orgs would share a trust domain, and each trust the other's SVIDs.
// (Config validation refuses such an entry where it can tell; this holds
// whatever the config says.)
func TrustDomainFor(template string, explicit map[string]string, org string) (spiffeid.TrustDomain, error) {
	if org == "" {
		return spiffeid.TrustDomain{}, errors.New("spiffe: empty org")
	}
	name, ok := explicit[org]
	if !ok {
		name = strings.ReplaceAll(orDefault(template), "{org}", org)
		for other, n := range explicit {
			if n == name {
				return spiffeid.TrustDomain{}, fmt.Errorf("spiffe: templated trust domain of org %q is the one org %q names explicitly", org, other)
			}
		}
	}
	td, err := spiffeid.TrustDomainFromString(name)
	if err != nil {
		return spiffeid.TrustDomain{}, fmt.Errorf("spiffe: trust domain of org %q: %w", org, err)
	}
	return td, nil
}

func orDefault(template string) string {
	if template == "" {
		return DefaultTrustDomainTemplate
	}
	return template
}

// TemplateOrg returns the org whose templated trust domain is name (the
// template with every "{org}" replaced by it), if there is one: a
// non-empty string, which config validation then checks is an org name.
func TemplateOrg(template, name string) (string, bool) {
	template = orDefault(template)
	k := strings.Count(template, "{org}")
	if k == 0 {
		return "", false
	}
	// len(name) = len(template) - k·len("{org}") + k·len(org)
	rest := len(name) - (len(template) - k*len("{org}"))
	if rest <= 0 || rest%k != 0 {
		return "", false
	}
	start := strings.Index(template, "{org}")
	if start+rest/k > len(name) {
		return "", false
	}
	org := name[start : start+rest/k]
	if strings.ReplaceAll(template, "{org}", org) != name {
		return "", false
	}
	return org, true
}

// ValidateTemplate checks a trust domain template: it must name {org}
// (or every org would share one domain) and give a valid name for a
// plain org name.
func ValidateTemplate(template string) error {
	if !strings.Contains(template, "{org}") {
		return errors.New("spiffe: trust domain template must contain {org}")
	}
	_, err := spiffeid.TrustDomainFromString(strings.ReplaceAll(template, "{org}", "org"))
	return err
}

// MachineID is the machine's own SPIFFE ID:
// spiffe://<td>/app/<app>/machine/<machine name>.
func MachineID(td spiffeid.TrustDomain, app, machineName string) (spiffeid.ID, error) {
	return spiffeid.FromSegments(td, "app", app, "machine", machineName)
}

// WorkloadID is the ID of a workload a policy rule names:
// spiffe://<td>/app/<app>/workload/<name>.
func WorkloadID(td spiffeid.TrustDomain, app, name string) (spiffeid.ID, error) {
	if err := ValidateWorkloadName(name); err != nil {
		return spiffeid.ID{}, err
	}
	return spiffeid.FromSegments(td, "app", app, "workload", name)
}

// ValidateWorkloadName checks a workload name: one SPIFFE path segment
// (letters, digits, '.', '-', '_'; not "." or ".."), at most
// MaxWorkloadNameLen bytes.
func ValidateWorkloadName(name string) error {
	if len(name) > MaxWorkloadNameLen {
		return fmt.Errorf("spiffe: workload name longer than %d bytes", MaxWorkloadNameLen)
	}
	if err := spiffeid.ValidatePathSegment(name); err != nil {
		return fmt.Errorf("spiffe: workload name: %w", err)
	}
	return nil
}

// CheckNamespace reports whether id is one the machine (app, machine name)
// of trust domain td may hold: its own machine ID or a workload ID of its
// app. Anything else wraps ErrNamespace.
func CheckNamespace(id spiffeid.ID, td spiffeid.TrustDomain, app, machineName string) error {
	if !id.MemberOf(td) {
		return fmt.Errorf("%w: other trust domain", ErrNamespace)
	}
	segs := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	switch {
	case len(segs) != 4 || segs[0] != "app" || segs[1] != app:
		return fmt.Errorf("%w: not under the machine's app", ErrNamespace)
	case segs[2] == "machine" && segs[3] == machineName:
		return nil
	case segs[2] == "workload":
		return ValidateWorkloadName(segs[3])
	}
	return fmt.Errorf("%w: not the machine's own id or a workload id", ErrNamespace)
}
