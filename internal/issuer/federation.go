package issuer

import (
	"cmp"
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/metrics"
	"github.com/wicket-sh/wicket/internal/spiffe"
	"github.com/wicket-sh/wicket/internal/spiffe/bundlefetch"
)

// Bounds on how often a foreign bundle is fetched, whatever its
// spiffe_refresh_hint says: not more often than every 30 s (a hint of 1 s
// must not turn a replica into a load generator), not less often than
// hourly (a domain that asks for a day still gets its rotations seen).
// Without a hint, every 5 minutes, as SPIRE does.
const (
	federationRefreshMin     = 30 * time.Second
	federationRefreshMax     = time.Hour
	federationRefreshDefault = 5 * time.Minute
	// A failed fetch is retried after 1 s, doubling up to 5 min (and never
	// later than a success would have refetched).
	federationRetryMin = time.Second
	federationRetryMax = 5 * time.Minute
)

// federation is the issuer's view of the foreign trust domains of
// [[spiffe.federation]] (static: built once in New). Every replica
// fetches every domain itself and keeps the last good bundle in memory:
// nothing of it is in the store, so replicas never wait for each other
// and a restarted one fetches again (https_spiffe starting from
// bundle_file). Before a domain's first good fetch it is left out of the
// bundles handed to agents.
type federation struct {
	domains []*foreignDomain // config order
	byOrg   map[string][]*foreignDomain

	fetches, failures, updates atomic.Uint64
}

// foreignDomain is one federated trust domain and what is known of it.
type foreignDomain struct {
	td      spiffeid.TrustDomain
	url     string
	profile string
	orgs    []string
	ep      *bundlefetch.Endpoint

	mu          sync.Mutex
	bundle      *spiffebundle.Bundle // nil before the first good fetch (https_web)
	doc         []byte               // bundle's document, as handed to agents
	fetched     bool                 // bundle came from the endpoint, not bundle_file
	lastSuccess time.Time
	lastFailure time.Time
	lastErr     string
	failing     int // consecutive failures
	nextFetch   time.Time
}

// newFederation reads what the config names (ca_file roots, bundle_file
// initial bundles): a file that is missing or holds nothing usable stops
// the issuer at start, not at the first fetch.
func newFederation(c config.SPIFFE) (*federation, error) {
	f := &federation{byOrg: map[string][]*foreignDomain{}}
	for _, fc := range c.Federation {
		td, err := spiffeid.TrustDomainFromString(fc.TrustDomain)
		if err != nil {
			return nil, fmt.Errorf("spiffe.federation %s: %w", fc.TrustDomain, err)
		}
		d := &foreignDomain{td: td, url: fc.BundleEndpointURL, profile: fc.Profile, orgs: fc.Orgs,
			ep: &bundlefetch.Endpoint{TrustDomain: td, URL: fc.BundleEndpointURL}}
		if fc.CAFile != "" {
			pem, err := os.ReadFile(fc.CAFile)
			if err != nil {
				return nil, fmt.Errorf("spiffe.federation %s: ca_file: %w", td.Name(), err)
			}
			d.ep.Roots = x509.NewCertPool()
			if !d.ep.Roots.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("spiffe.federation %s: ca_file %s holds no PEM certificate", td.Name(), fc.CAFile)
			}
		}
		if fc.Profile == config.ProfileHTTPSSPIFFE {
			if d.ep.EndpointID, err = spiffeid.FromString(fc.EndpointSPIFFEID); err != nil {
				return nil, fmt.Errorf("spiffe.federation %s: endpoint_spiffe_id: %w", td.Name(), err)
			}
			doc, err := os.ReadFile(fc.BundleFile)
			if err != nil {
				return nil, fmt.Errorf("spiffe.federation %s: bundle_file: %w", td.Name(), err)
			}
			b, err := spiffe.ParseForeignBundle(td, doc)
			if err != nil {
				return nil, fmt.Errorf("spiffe.federation %s: bundle_file %s: %w", td.Name(), fc.BundleFile, err)
			}
			if len(b.X509Authorities()) == 0 {
				return nil, fmt.Errorf("spiffe.federation %s: bundle_file %s has no x509 authority to authenticate the endpoint with", td.Name(), fc.BundleFile)
			}
			if err := d.set(b); err != nil {
				return nil, err
			}
		}
		f.domains = append(f.domains, d)
		for _, org := range fc.Orgs {
			f.byOrg[org] = append(f.byOrg[org], d)
		}
	}
	return f, nil
}

// set makes b the domain's bundle. d.mu must not be held.
func (d *foreignDomain) set(b *spiffebundle.Bundle) error {
	doc, err := b.Marshal()
	if err != nil {
		return fmt.Errorf("spiffe.federation %s: %w", d.td.Name(), err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.bundle, d.doc = b, doc
	return nil
}

// bundlesFor returns the documents of the foreign bundles org's machines
// trust, by trust domain name; nil when there are none yet.
func (f *federation) bundlesFor(org string) map[string]json.RawMessage {
	var out map[string]json.RawMessage
	for _, d := range f.byOrg[org] {
		d.mu.Lock()
		doc := d.doc
		d.mu.Unlock()
		if doc == nil {
			continue
		}
		if out == nil {
			out = map[string]json.RawMessage{}
		}
		out[d.td.Name()] = doc
	}
	return out
}

// runFederation fetches every domain's bundle until ctx ends, each on its own
// schedule.
func (s *Issuer) runFederation(ctx context.Context) {
	var wg sync.WaitGroup
	for _, d := range s.fed.domains {
		wg.Go(func() {
			for ctx.Err() == nil {
				if !sleepCtx(ctx, s.fetchForeign(ctx, d)) {
					return
				}
			}
		})
	}
	wg.Wait()
}

// fetchForeign fetches d's bundle once and returns how long to wait
// before the next fetch. A failure keeps the last good bundle, is logged
// and counted, and is retried with a doubling backoff.
func (s *Issuer) fetchForeign(ctx context.Context, d *foreignDomain) time.Duration {
	d.mu.Lock()
	current := d.bundle
	d.mu.Unlock()
	b, err := d.ep.Fetch(ctx, current)
	now := s.now()
	lo, hi := cmp.Or(s.opts.FederationRefreshMin, federationRefreshMin), cmp.Or(s.opts.FederationRefreshMax, federationRefreshMax)
	lo = min(lo, hi)
	if err != nil {
		if ctx.Err() != nil {
			return 0
		}
		s.fed.failures.Add(1)
		d.mu.Lock()
		defer d.mu.Unlock()
		d.failing++
		d.lastFailure, d.lastErr = now, err.Error()
		wait := min(federationRetryMin<<min(d.failing-1, 16), federationRetryMax)
		if d.bundle != nil {
			wait = min(wait, bundlefetch.RefreshAfter(d.bundle, federationRefreshDefault, lo, hi))
		}
		d.nextFetch = now.Add(wait)
		s.log.Warn("spiffe federation: bundle fetch failed; keeping the last good bundle", "trust_domain", d.td.Name(),
			"url", d.url, "failures_in_a_row", d.failing, "have_bundle", d.bundle != nil, "retry_in", wait.String(), "err", err)
		return wait
	}
	s.fed.fetches.Add(1)
	changed := current == nil || !current.X509Bundle().Equal(b.X509Bundle()) || !current.JWTBundle().Equal(b.JWTBundle())
	if changed {
		if err := d.set(b); err != nil {
			s.log.Error("spiffe federation: bundle not kept", "trust_domain", d.td.Name(), "err", err)
			return federationRetryMax
		}
		s.fed.updates.Add(1)
	}
	seq, _ := b.SequenceNumber()
	wait := bundlefetch.RefreshAfter(b, federationRefreshDefault, lo, hi)
	d.mu.Lock()
	wasFailing := d.failing
	d.fetched, d.failing, d.lastSuccess, d.nextFetch = true, 0, now, now.Add(wait)
	d.mu.Unlock()
	if changed || wasFailing > 0 {
		s.log.Info("spiffe federation: bundle fetched", "trust_domain", d.td.Name(), "changed", changed,
			"sequence", seq, "x509_authorities", len(b.X509Authorities()), "jwt_authorities", len(b.JWTAuthorities()), "next_in", wait.String())
	}
	return wait
}

// federationStatus is the status document's spiffe_federation: per
// domain where it is fetched from, for which orgs, and how fetching goes.
// Public keys only, and not even those: counts.
func (s *Issuer) federationStatus() map[string]any {
	out := map[string]any{}
	for _, d := range s.fed.domains {
		d.mu.Lock()
		st := map[string]any{
			"bundle_endpoint_url": d.url, "profile": d.profile, "orgs": d.orgs,
			"have_bundle": d.bundle != nil, "fetched": d.fetched, "failures_in_a_row": d.failing,
		}
		if d.bundle != nil {
			st["x509_authorities"] = len(d.bundle.X509Authorities())
			st["jwt_authorities"] = len(d.bundle.JWTAuthorities())
			if seq, ok := d.bundle.SequenceNumber(); ok {
				st["sequence"] = seq
			}
		}
		for k, t := range map[string]time.Time{"last_success": d.lastSuccess, "last_failure": d.lastFailure, "next_fetch": d.nextFetch} {
			if !t.IsZero() {
				st[k] = t.UTC().Format(time.RFC3339)
			}
		}
		if d.lastErr != "" {
			st["last_error"] = d.lastErr
		}
		d.mu.Unlock()
		out[d.td.Name()] = st
	}
	return out
}

// federationCounters are the totals over every foreign domain (status
// counters and metrics alike); per-domain state is in federationGauges.
func (s *Issuer) federationCounters() metrics.CounterSet {
	return metrics.CounterSet{
		{Key: "federated_bundle_fetches", Name: "wicket_spiffe_federated_bundle_fetches_total", Help: "Foreign SPIFFE bundles fetched.", Value: s.fed.fetches.Load},
		{Key: "federated_bundle_failures", Name: "wicket_spiffe_federated_bundle_failures_total", Help: "Failed fetches of foreign SPIFFE bundles (the last good bundle stays).", Value: s.fed.failures.Load},
		{Key: "federated_bundle_updates", Name: "wicket_spiffe_federated_bundle_updates_total", Help: "Foreign SPIFFE bundles whose authorities changed.", Value: s.fed.updates.Load},
	}
}

// federationGauges are per foreign domain: seconds since the last good
// fetch (absent before one), failures in a row, the bundle's sequence.
func (s *Issuer) federationGauges() []metrics.Sample {
	var out []metrics.Sample
	doms := append([]*foreignDomain(nil), s.fed.domains...)
	sort.Slice(doms, func(i, j int) bool { return doms[i].td.Name() < doms[j].td.Name() })
	for _, d := range doms {
		l := map[string]string{"trust_domain": d.td.Name()}
		d.mu.Lock()
		out = append(out, metrics.Sample{Name: "wicket_spiffe_federated_bundle_failing", Help: "Failed fetches in a row of a foreign SPIFFE bundle.",
			Type: metrics.Gauge, Labels: l, Value: float64(d.failing)})
		if !d.lastSuccess.IsZero() {
			out = append(out, metrics.Sample{Name: "wicket_spiffe_federated_bundle_last_success_timestamp_seconds", Help: "When a foreign SPIFFE bundle was last fetched.",
				Type: metrics.Gauge, Labels: l, Value: float64(d.lastSuccess.Unix())})
		}
		if d.bundle != nil {
			if seq, ok := d.bundle.SequenceNumber(); ok {
				out = append(out, metrics.Sample{Name: "wicket_spiffe_federated_bundle_sequence", Help: "spiffe_sequence of the foreign SPIFFE bundle held.",
					Type: metrics.Gauge, Labels: l, Value: float64(seq)})
			}
		}
		d.mu.Unlock()
	}
	return out
}
