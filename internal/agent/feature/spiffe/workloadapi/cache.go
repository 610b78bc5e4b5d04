package workloadapi

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// x509Entry is one cached X.509-SVID with its private key. The key was
// generated here and exists only in this process's memory (and in the
// replies to the callers the policy gives this identity).
type x509Entry struct {
	id        spiffeid.ID
	key       *ecdsa.PrivateKey
	keyDER    []byte   // PKCS#8
	chain     [][]byte // leaf first
	chainDER  []byte   // chain joined, as the Workload API sends it
	expires   time.Time
	refreshAt time.Time
}

// jwtEntry is one cached JWT-SVID.
type jwtEntry struct {
	token     string
	expires   time.Time
	refreshAt time.Time
}

// trust is what the agent knows of its trust domain: its name, the
// machine's own ID and the bundle, and the bundles of the foreign trust
// domains its org federates with.
type trust struct {
	td        spiffeid.TrustDomain
	machineID spiffeid.ID
	bundle    *spiffebundle.Bundle
	raw       []byte
	x509DER   []byte // the X.509 authorities joined, as the Workload API sends them
	refreshAt time.Time
	// federated holds the foreign trust domains' bundles, never one of
	// td: they add trust anchors for their own domain only.
	federated map[spiffeid.TrustDomain]*spiffebundle.Bundle
	fedDER    map[string][]byte // federatedDER(federated)
}

// maxFederated bounds the foreign bundles taken from one reply.
const maxFederated = 256

// maxJWTEntries bounds the JWT-SVID cache: one entry per identity and
// audience set asked for.
const maxJWTEntries = 4096

// cache holds the SVIDs and the bundle, renews them at half-life
// (jittered) and tells open streams when something changed.
type cache struct {
	issuer Issuer
	now    func() time.Time
	log    *slog.Logger

	mu      sync.Mutex
	trust   *trust
	x509    map[spiffeid.ID]*x509Entry
	jwt     map[string]*jwtEntry
	changed chan struct{} // closed and replaced on every change
	flight  map[string]*call

	issued, rotations, failures uint64
}

type call struct {
	done chan struct{}
	err  error
}

func newCache(iss Issuer, now func() time.Time, log *slog.Logger) *cache {
	return &cache{issuer: iss, now: now, log: log, x509: map[spiffeid.ID]*x509Entry{}, jwt: map[string]*jwtEntry{},
		changed: make(chan struct{}), flight: map[string]*call{}}
}

// watch returns a channel closed at the next change.
func (c *cache) watch() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.changed
}

func (c *cache) notifyLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// once runs f for key unless a run is already in progress, in which case
// it waits for that one: one issuer call per identity however many
// callers ask at once.
func (c *cache) once(ctx context.Context, key string, f func() error) error {
	c.mu.Lock()
	if cl, ok := c.flight[key]; ok {
		c.mu.Unlock()
		select {
		case <-cl.done:
			return cl.err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	cl := &call{done: make(chan struct{})}
	c.flight[key] = cl
	c.mu.Unlock()
	cl.err = f()
	c.mu.Lock()
	delete(c.flight, key)
	c.mu.Unlock()
	close(cl.done)
	return cl.err
}

// halfLife is when a credential valid from start until end is renewed:
// at half its life, moved by up to a tenth of it either way so that
// machines started together do not all renew at once.
func halfLife(start, end time.Time) time.Time {
	life := end.Sub(start)
	jitter := time.Duration(0)
	if tenth := int64(life / 10); tenth > 0 {
		n, _ := rand.Int(rand.Reader, big.NewInt(2*tenth))
		jitter = time.Duration(n.Int64() - tenth)
	}
	return start.Add(life/2 + jitter)
}

// getTrust returns the bundle state, fetching it if there is none yet.
func (c *cache) getTrust(ctx context.Context) (*trust, error) {
	c.mu.Lock()
	t := c.trust
	c.mu.Unlock()
	if t != nil {
		return t, nil
	}
	if err := c.once(ctx, "trust", func() error { return c.refreshTrust(ctx) }); err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.trust == nil {
		return nil, errors.New("no trust bundle")
	}
	return c.trust, nil
}

// refreshTrust fetches the bundle and swaps it in; streams are told when
// its content changed.
func (c *cache) refreshTrust(ctx context.Context) error {
	rep, err := c.issuer.Bundle(ctx)
	if err != nil {
		c.count(&c.failures)
		return err
	}
	td, err := spiffeid.TrustDomainFromString(rep.TrustDomain)
	if err != nil {
		return fmt.Errorf("issuer named trust domain: %w", err)
	}
	id, err := spiffeid.FromString(rep.SPIFFEID)
	if err != nil || !id.MemberOf(td) {
		return errors.New("issuer named a spiffe id outside its trust domain")
	}
	b, err := spiffebundle.Parse(td, rep.Bundle)
	if err != nil {
		return fmt.Errorf("issuer bundle: %w", err)
	}
	fed, err := parseFederated(td, rep.FederatedBundles)
	if err != nil {
		// The foreign part never decides whether the machine's own trust
		// domain's bundle is renewed: keep the foreign bundles held
		// (none before the first good reply) and take the own one.
		c.count(&c.failures)
		c.log.Warn("federated bundles refused; keeping the ones held", "err", err)
		c.mu.Lock()
		if c.trust != nil && c.trust.td == td {
			fed = c.trust.federated
		} else {
			fed = nil
		}
		c.mu.Unlock()
	}
	hint, ok := b.RefreshHint()
	if !ok || hint <= 0 {
		hint = 5 * time.Minute
	}
	canon, _ := b.Marshal()
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.trust
	c.trust = &trust{td: td, machineID: id, bundle: b, raw: canon, x509DER: authoritiesDER(b), refreshAt: c.now().Add(hint), federated: fed, fedDER: federatedDER(fed)}
	if old == nil || !sameAuthorities(old.bundle, b) || !sameFederated(old.federated, fed) {
		c.notifyLocked()
	}
	return nil
}

func concat(ders [][]byte) []byte { return bytes.Join(ders, nil) }

func rawCerts(b *spiffebundle.Bundle) [][]byte {
	var out [][]byte
	for _, c := range b.X509Authorities() {
		out = append(out, c.Raw)
	}
	return out
}

// parseFederated reads the foreign bundles of the issuer's reply. The
// whole reply is refused (the old bundles stay) if one is not a bundle,
// names no valid trust domain, or claims the machine's own domain: a
// foreign bundle must never add anchors for the agent's own IDs.
func parseFederated(own spiffeid.TrustDomain, docs map[string]json.RawMessage) (map[spiffeid.TrustDomain]*spiffebundle.Bundle, error) {
	if len(docs) > maxFederated {
		return nil, fmt.Errorf("issuer named %d federated trust domains, more than %d", len(docs), maxFederated)
	}
	out := make(map[spiffeid.TrustDomain]*spiffebundle.Bundle, len(docs))
	for name, doc := range docs {
		ftd, err := spiffeid.TrustDomainFromString(name)
		if err != nil || ftd.Name() != name {
			return nil, errors.New("issuer named an invalid federated trust domain")
		}
		if ftd == own {
			return nil, errors.New("issuer named the machine's own trust domain as federated")
		}
		b, err := spiffebundle.Parse(ftd, doc)
		if err != nil {
			return nil, fmt.Errorf("federated bundle of %s: %w", ftd, err)
		}
		out[ftd] = b
	}
	return out, nil
}

func sameFederated(a, b map[spiffeid.TrustDomain]*spiffebundle.Bundle) bool {
	if len(a) != len(b) {
		return false
	}
	for td, ab := range a {
		if bb, ok := b[td]; !ok || !sameAuthorities(ab, bb) {
			return false
		}
	}
	return true
}

// sameAuthorities compares what a relying party trusts, not the sequence
// number (which moves on every read).
func sameAuthorities(a, b *spiffebundle.Bundle) bool {
	return a.X509Bundle().Equal(b.X509Bundle()) && a.JWTBundle().Equal(b.JWTBundle())
}

func (c *cache) count(n *uint64) {
	c.mu.Lock()
	*n++
	c.mu.Unlock()
}

// idFor turns a workload name ("" for the machine itself) into its ID.
func (t *trust) idFor(workload string) (spiffeid.ID, error) {
	if workload == "" {
		return t.machineID, nil
	}
	// The machine's ID is .../app/<app>/machine/<name>: the workload's
	// is .../app/<app>/workload/<workload>.
	segs := strings.Split(strings.TrimPrefix(t.machineID.Path(), "/"), "/")
	if len(segs) != 4 || segs[0] != "app" || segs[2] != "machine" {
		return spiffeid.ID{}, errors.New("machine id is not of wicket's shape")
	}
	return spiffeid.FromSegments(t.td, "app", segs[1], "workload", workload)
}

// x509For returns the identity's X.509-SVID: the cached one while it is
// valid, else a new one.
func (c *cache) x509For(ctx context.Context, id spiffeid.ID) (*x509Entry, error) {
	c.mu.Lock()
	e := c.x509[id]
	c.mu.Unlock()
	if e != nil && c.now().Before(e.expires) {
		return e, nil
	}
	err := c.once(ctx, "x509\x00"+id.String(), func() error { return c.renewX509(ctx, id) })
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.x509[id]; e != nil && c.now().Before(e.expires) {
		return e, nil
	}
	if err == nil {
		err = errors.New("no usable svid")
	}
	return nil, err
}

// renewX509 makes a new key and asks the issuer to sign a CSR for id.
func (c *cache) renewX509(ctx context.Context, id spiffeid.ID) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
	if err != nil {
		return err
	}
	rep, err := c.issuer.X509(ctx, id.String(), csr)
	if err != nil {
		c.count(&c.failures)
		return err
	}
	if rep.SPIFFEID != id.String() || len(rep.CertChain) == 0 {
		c.count(&c.failures)
		return errors.New("issuer answered an svid for another id")
	}
	leaf, err := x509.ParseCertificate(rep.CertChain[0])
	if err != nil {
		c.count(&c.failures)
		return fmt.Errorf("issuer svid: %w", err)
	}
	if pub, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(key.Public()) {
		c.count(&c.failures)
		return errors.New("issuer svid is not for our key")
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	now := c.now()
	e := &x509Entry{id: id, key: key, keyDER: der, chain: rep.CertChain, chainDER: concat(rep.CertChain), expires: leaf.NotAfter, refreshAt: halfLife(now, leaf.NotAfter)}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, had := c.x509[id]; had {
		c.rotations++
	}
	c.issued++
	c.x509[id] = e
	c.notifyLocked()
	return nil
}

// jwtKey is the cache key of id's JWT-SVID for the audience set aud.
func jwtKey(id spiffeid.ID, aud []string) string {
	if len(aud) == 1 {
		// The usual request: nothing to sort or deduplicate.
		return id.String() + "\x00" + aud[0]
	}
	a := slices.Clone(aud)
	slices.Sort(a)
	a = slices.Compact(a)
	return id.String() + "\x00" + strings.Join(a, "\x00")
}

// jwtFor returns a JWT-SVID for id and aud: a cached one until its
// half-life, then a new one; a cached one until it expires while the
// issuer cannot give a new one.
func (c *cache) jwtFor(ctx context.Context, id spiffeid.ID, aud []string) (string, error) {
	k := jwtKey(id, aud)
	c.mu.Lock()
	e := c.jwt[k]
	c.mu.Unlock()
	now := c.now()
	if e != nil && now.Before(e.refreshAt) {
		return e.token, nil
	}
	err := c.once(ctx, "jwt\x00"+k, func() error {
		rep, err := c.issuer.JWT(ctx, id.String(), aud)
		if err != nil {
			c.count(&c.failures)
			return err
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		if len(c.jwt) >= maxJWTEntries {
			clear(c.jwt)
		}
		c.jwt[k] = &jwtEntry{token: rep.Token, expires: rep.ExpiresAt, refreshAt: halfLife(now, rep.ExpiresAt)}
		c.issued++
		return nil
	})
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.jwt[k]; e != nil && c.now().Before(e.expires) {
		return e.token, nil
	}
	if err == nil {
		err = errors.New("no usable jwt svid")
	}
	return "", err
}

// tick renews what is due: X.509-SVIDs past their (jittered) half-life
// and the bundle past its refresh hint. A failed renewal keeps the cached
// SVID, which is served until it expires.
func (c *cache) tick(ctx context.Context) {
	now := c.now()
	c.mu.Lock()
	var due []spiffeid.ID
	for id, e := range c.x509 {
		if !now.Before(e.refreshAt) {
			due = append(due, id)
		}
	}
	trustDue := c.trust != nil && !now.Before(c.trust.refreshAt)
	c.mu.Unlock()
	if trustDue {
		// Errors are counted; the old bundle stays.
		_ = c.once(ctx, "trust", func() error { return c.refreshTrust(ctx) })
	}
	for _, id := range due {
		_ = c.once(ctx, "x509\x00"+id.String(), func() error { return c.renewX509(ctx, id) })
	}
}

// Stats are the cache's counters and the soonest SVID expiry.
type Stats struct {
	Issued, Rotations, Failures uint64
	X509SVIDs                   int
	// SoonestExpiry is the earliest end of a cached X.509-SVID (zero
	// when there is none).
	SoonestExpiry time.Time
	// Federated names the foreign trust domains whose bundles are held,
	// sorted.
	Federated []string
}

func (c *cache) stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := Stats{Issued: c.issued, Rotations: c.rotations, Failures: c.failures, X509SVIDs: len(c.x509)}
	if c.trust != nil {
		for td := range c.trust.federated {
			s.Federated = append(s.Federated, td.Name())
		}
		slices.Sort(s.Federated)
	}
	for _, e := range c.x509 {
		if s.SoonestExpiry.IsZero() || e.expires.Before(s.SoonestExpiry) {
			s.SoonestExpiry = e.expires
		}
	}
	return s
}
