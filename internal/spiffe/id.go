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
// else template with "{org}" replaced. The result is validated.
func TrustDomainFor(template string, explicit map[string]string, org string) (spiffeid.TrustDomain, error) {
	if org == "" {
		return spiffeid.TrustDomain{}, errors.New("spiffe: empty org")
	}
	name, ok := explicit[org]
	if !ok {
		if template == "" {
			template = DefaultTrustDomainTemplate
		}
		name = strings.ReplaceAll(template, "{org}", org)
	}
	td, err := spiffeid.TrustDomainFromString(name)
	if err != nil {
		return spiffeid.TrustDomain{}, fmt.Errorf("spiffe: trust domain of org %q: %w", org, err)
	}
	return td, nil
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

// TemplateOrg returns the org whose templated trust domain is name, if
// template can produce name at all: a foreign trust domain that an org of
// wicket's could one day be given must not be trusted as foreign.
func TemplateOrg(template, name string) (string, bool) {
	if template == "" {
		template = DefaultTrustDomainTemplate
	}
	parts := strings.Split(template, "{org}")
	n := len(parts) - 1
	if n == 0 {
		return "", template == name
	}
	fixed := 0
	for _, p := range parts {
		fixed += len(p)
	}
	if len(name) <= fixed || (len(name)-fixed)%n != 0 || !strings.HasPrefix(name, parts[0]) {
		return "", false
	}
	l := (len(name) - fixed) / n
	org := name[len(parts[0]) : len(parts[0])+l]
	if strings.ReplaceAll(template, "{org}", org) != name {
		return "", false
	}
	return org, true
}
