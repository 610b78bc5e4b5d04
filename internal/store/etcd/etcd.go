// Package etcd is the clustered store.Store: the issuer's state in etcd,
// shared by several issuer replicas.
//
// Layout under the key prefix (default "/wicket/"):
//
//	meta/schema               layout version
//	machines/<id>             machine record (JSON)
//	names/<org>/<app>/<name>  machine id: the unique-name index
//	keys/<kind>/<id>          sealed key record (JSON)
//	revocations/<token id>    revocation record (JSON)
//	election/<name>/...       leader elections (package concurrency)
//
// Every segment is URL-path-escaped, so a "/" inside an org or a key kind
// never splits a segment and no two names share a key.
//
// Every write is one etcd transaction. UpdateMachine and DeleteMachine read
// the machine and commit only if its mod revision is unchanged, retrying
// otherwise, so writers on different replicas never overwrite each other.
// One watch on the prefix feeds long polls and key reloads on every replica
// and keeps an in-memory mirror of the machines. The mirror answers the
// per-request machine reads (GetMachineRecent, a watch's first state)
// without a round trip while the watch is current, and every read while
// etcd is unreachable, for at most Config.CacheGrace.
package etcd

import (
	"cmp"
	"context"
	crand "crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/wicket-sh/wicket/internal/store"
	"github.com/wicket-sh/wicket/internal/store/watchhub"
)

// ErrUnavailable means etcd could not be reached (no quorum, no member
// answering within the request timeout). Writes fail with it; reads fail
// with it only once the mirror is older than the cache grace. The issuer
// answers it with 503.
var ErrUnavailable = store.ErrUnavailable

// Defaults for the zero values of Config.
const (
	DefaultPrefix         = "/wicket/"
	DefaultDialTimeout    = 5 * time.Second
	DefaultRequestTimeout = 5 * time.Second
	DefaultElectionTTL    = 10 * time.Second
)

// schemaVersion is the layout version kept at meta/schema.
const schemaVersion = "1"

const (
	dirMachines    = "machines/"
	dirNames       = "names/"
	dirKeys        = "keys/"
	dirRevocations = "revocations/"
	dirElection    = "election/"
	keySchema      = "meta/schema"
)

// Config configures Open.
type Config struct {
	// Endpoints are the members' client URLs, e.g. https://10.0.0.1:2379.
	Endpoints []string
	// CertFile and KeyFile are a client certificate for members that
	// require one; CAFile verifies the members' certificates (system roots
	// when empty). Any of them, or an https endpoint, turns TLS on.
	CertFile, KeyFile, CAFile string
	// Prefix is prepended to every key, so several deployments can share a
	// cluster; default DefaultPrefix. A "/" is appended if missing.
	Prefix string
	// DialTimeout bounds connecting and the layout check at Open;
	// RequestTimeout bounds every later request, each page of the machine
	// listing at Open included. Defaults DefaultDialTimeout and
	// DefaultRequestTimeout.
	DialTimeout, RequestTimeout time.Duration
	// CacheGrace is how long after etcd was last known reachable the mirror
	// may still answer reads; 0 means never.
	CacheGrace time.Duration
	// ElectionTTL is how long a leader that stopped renewing its lease
	// (crashed, cut off from etcd) keeps its leadership; default
	// DefaultElectionTTL, at least a second.
	ElectionTTL time.Duration
	// Logger receives state changes (etcd unreachable, reachable again,
	// watch resynced); default slog.Default().
	Logger *slog.Logger

	// dialOptions are added to the client's (tests count requests).
	dialOptions []grpc.DialOption
	// relistPage, when set by a test, replaces relistPageSize.
	relistPage int
	// betweenPages, when set by a test, runs in relist after each page
	// that another follows, with the revision the listing reads at.
	betweenPages func(rev int64)
}

// Store is a store.Store backed by etcd.
type Store struct {
	cli       *clientv3.Client
	cfg       Config
	log       *slog.Logger
	prefix    string
	replicaID string

	hub    watchhub.Hub
	mirror mirror
	// okAt and failedAt are when (unix ns) a request last succeeded and
	// last failed for lack of etcd; see degraded.
	okAt, failedAt atomic.Int64
	watching       atomic.Bool
	kick           chan struct{}
	// reads counts per-request machine reads (GetMachineRecent, a
	// watch's first state) by where they were answered.
	reads struct{ mirror, etcd atomic.Uint64 }
	// beforeWatch, when set by a test, runs before each (re)start of the
	// watch.
	beforeWatch atomic.Pointer[func()]

	ctx       context.Context // ends at Close; owns the watch and probe goroutines
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

var _ store.Store = (*Store)(nil)

// Open connects to etcd, checks the layout version (writing it into an
// empty prefix), loads the machine mirror and starts watching. It fails if
// no quorum answers within the dial timeout, or a page of machines within
// the request timeout.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("etcd: no endpoints")
	}
	cfg.Prefix = cmp.Or(cfg.Prefix, DefaultPrefix)
	if !strings.HasSuffix(cfg.Prefix, "/") {
		cfg.Prefix += "/"
	}
	cfg.DialTimeout = cmp.Or(cfg.DialTimeout, DefaultDialTimeout)
	cfg.RequestTimeout = cmp.Or(cfg.RequestTimeout, DefaultRequestTimeout)
	cfg.ElectionTTL = max(cmp.Or(cfg.ElectionTTL, DefaultElectionTTL), time.Second)
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	tlsCfg, err := clientTLS(cfg)
	if err != nil {
		return nil, err
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   cfg.Endpoints,
		DialTimeout: cfg.DialTimeout,
		TLS:         tlsCfg,
		// Pings notice a member that vanished without closing the
		// connection, so requests and the watch move to another member.
		DialKeepAliveTime:    5 * time.Second,
		DialKeepAliveTimeout: 2 * time.Second,
		// The client's own log would go to stderr as JSON; the store
		// reports what matters (unreachable, reachable again) through slog.
		Logger: zap.NewNop(),
		DialOptions: append([]grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			// gRPC's default reconnect backoff grows to two minutes; a
			// restarted member should be used again within seconds.
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
			MinConnectTimeout: cfg.DialTimeout,
		})}, cfg.dialOptions...),
	})
	if err != nil {
		return nil, fmt.Errorf("etcd: client: %w", err)
	}
	s := &Store{
		cli:       cli,
		cfg:       cfg,
		log:       cfg.Logger,
		prefix:    cfg.Prefix,
		replicaID: replicaID(),
		hub:       watchhub.New(),
		kick:      make(chan struct{}, 1),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	octx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	if err := s.initSchema(octx); err != nil {
		s.cancel()
		cli.Close()
		return nil, fmt.Errorf("etcd: %s (prefix %s): %w", strings.Join(cfg.Endpoints, ","), cfg.Prefix, err)
	}
	// Not under the dial timeout: the listing grows with the registry, and
	// each of its pages has the request timeout.
	if err := s.relist(ctx); err != nil {
		s.cancel()
		cli.Close()
		return nil, fmt.Errorf("etcd: loading machines: %w", err)
	}
	s.wg.Add(2)
	go s.watchLoop()
	go s.probeLoop()
	return s, nil
}

func clientTLS(cfg Config) (*tls.Config, error) {
	https := slices.ContainsFunc(cfg.Endpoints, func(e string) bool { return strings.HasPrefix(e, "https://") })
	if !https && cfg.CertFile == "" && cfg.KeyFile == "" && cfg.CAFile == "" {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.CertFile != "" || cfg.KeyFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("etcd: client certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("etcd: CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("etcd: CA %s: no PEM certificates", cfg.CAFile)
		}
		tc.RootCAs = pool
	}
	return tc, nil
}

// replicaID names this process in elections (etcdctl shows it as the
// leader's value).
func replicaID() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s/%d/%s", host, os.Getpid(), crand.Text()[:8])
}

func (s *Store) initSchema(ctx context.Context) error {
	k := s.prefix + keySchema
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).
		Then(clientv3.OpPut(k, schemaVersion)).
		Else(clientv3.OpGet(k)).
		Commit()
	if err != nil {
		return err
	}
	if !resp.Succeeded {
		kvs := resp.Responses[0].GetResponseRange().Kvs
		// Refuse a layout we don't know rather than misread it.
		if len(kvs) == 1 && string(kvs[0].Value) != schemaVersion {
			return fmt.Errorf("unsupported schema version %s (this build reads %s)", kvs[0].Value, schemaVersion)
		}
	}
	return nil
}

// The capabilities the issuer relies on: leader election for key
// maintenance, migration from bolt, reachability and read counts for
// status, machine reads from the mirror for token checks.
var (
	_ store.Elector      = (*Store)(nil)
	_ store.Importer     = (*Store)(nil)
	_ store.Health       = (*Store)(nil)
	_ store.ReadStats    = (*Store)(nil)
	_ store.RecentReader = (*Store)(nil)
)

// Shared implements store.Store: every replica on the same endpoints and
// prefix shares the state, and Lead elects one of them.
func (s *Store) Shared() bool { return true }

// Close stops the watch, closes all watch channels and the client. It is
// safe to call twice.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.cancel()
		s.hub.Close()
		s.wg.Wait()
		if err := s.cli.Close(); err != nil && !errors.Is(err, context.Canceled) {
			s.closeErr = fmt.Errorf("etcd: closing: %w", err)
		}
	})
	return s.closeErr
}

func (s *Store) machineKey(id string) string {
	return s.prefix + dirMachines + url.PathEscape(id)
}

func (s *Store) nameKey(m *store.Machine) string {
	return s.prefix + dirNames + url.PathEscape(m.Org) + "/" + url.PathEscape(m.App) + "/" + url.PathEscape(m.Name)
}

func (s *Store) keysPrefix(kind string) string {
	if kind == "" {
		return s.prefix + dirKeys
	}
	return s.prefix + dirKeys + url.PathEscape(kind) + "/"
}

func (s *Store) keyKey(kind, id string) string { return s.keysPrefix(kind) + url.PathEscape(id) }

func (s *Store) revocationKey(id string) string {
	return s.prefix + dirRevocations + url.PathEscape(id)
}

// check refuses calls with a finished context or on a closed store.
func (s *Store) check(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.ctx.Err() != nil {
		return watchhub.ErrClosed
	}
	return nil
}

// reqCtx bounds one request by the request timeout.
func (s *Store) reqCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.cfg.RequestTimeout)
}

// fail turns err from a request made under ctx into the store's error:
// the caller's own cancellation as is, lack of etcd as ErrUnavailable.
func (s *Store) fail(ctx context.Context, op string, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("etcd: %s: %w", op, cerr)
	}
	if s.ctx.Err() != nil {
		return fmt.Errorf("etcd: %s: %w", op, watchhub.ErrClosed)
	}
	if unavailable(err) {
		s.failedAt.Store(time.Now().UnixNano())
		return fmt.Errorf("etcd: %s: %w: %w", op, ErrUnavailable, err)
	}
	return fmt.Errorf("etcd: %s: %w", op, err)
}

// unavailable reports whether err means etcd could not serve the request
// (as opposed to refusing it).
func unavailable(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	code := status.Code(err)
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		code = ee.Code()
	}
	return code == codes.Unavailable || code == codes.DeadlineExceeded
}

// CreateMachine implements store.Store.
func (s *Store) CreateMachine(ctx context.Context, m *store.Machine) error {
	if m == nil || m.ID == "" {
		return errors.New("etcd: create machine: id required")
	}
	if err := s.check(ctx); err != nil {
		return err
	}
	c := m.Clone()
	now := time.Now().UTC()
	c.Version, c.CreatedAt, c.UpdatedAt = 1, now, now
	rev, err := s.insertMachine(ctx, "create machine", c)
	if err != nil {
		return err
	}
	m.Version, m.CreatedAt, m.UpdatedAt = c.Version, c.CreatedAt, c.UpdatedAt
	s.published(c.ID, c, rev)
	return nil
}

// ImportMachine stores m exactly as given, version and timestamps
// included, for copying state from another store (wicket issuer migrate).
// Like CreateMachine it fails with store.ErrExists if m's ID or name is
// taken.
func (s *Store) ImportMachine(ctx context.Context, m *store.Machine) error {
	if m == nil || m.ID == "" || m.Version == 0 {
		return errors.New("etcd: import machine: id and version required")
	}
	if err := s.check(ctx); err != nil {
		return err
	}
	c := m.Clone()
	rev, err := s.insertMachine(ctx, "import machine", c)
	if err == nil {
		s.published(c.ID, c, rev)
	}
	return err
}

// insertMachine writes c and its name if neither its ID nor its name is
// taken, and returns the write's revision.
func (s *Store) insertMachine(ctx context.Context, op string, c *store.Machine) (int64, error) {
	val, err := encodeMachine(c)
	if err != nil {
		return 0, fmt.Errorf("etcd: %s: %w", op, err)
	}
	mk, nk := s.machineKey(c.ID), s.nameKey(c)
	octx, cancel := s.reqCtx(ctx)
	defer cancel()
	resp, err := s.cli.Txn(octx).
		If(clientv3.Compare(clientv3.CreateRevision(mk), "=", 0), clientv3.Compare(clientv3.CreateRevision(nk), "=", 0)).
		Then(clientv3.OpPut(mk, val), clientv3.OpPut(nk, c.ID)).
		Else(clientv3.OpGet(mk, clientv3.WithCountOnly())).
		Commit()
	if err != nil {
		return 0, s.fail(ctx, op, err)
	}
	s.ok()
	if !resp.Succeeded {
		if resp.Responses[0].GetResponseRange().Count > 0 {
			return 0, fmt.Errorf("etcd: %s: machine id %q: %w", op, c.ID, store.ErrExists)
		}
		return 0, fmt.Errorf("etcd: %s: machine %q in org %q app %q: %w", op, c.Name, c.Org, c.App, store.ErrExists)
	}
	return resp.Header.Revision, nil
}

// published hands this process's committed write of machine id (nil:
// deleted) at revision rev to the mirror and the watchers at once, rather
// than when the watch reports it.
func (s *Store) published(id string, m *store.Machine, rev int64) {
	s.mirror.apply(id, m.Clone(), rev)
	s.hub.PublishMachine(id, m, uint64(rev))
}

// GetMachine implements store.Store: the machine as etcd has it. While
// etcd is unreachable it answers from the mirror, for at most the cache
// grace.
func (s *Store) GetMachine(ctx context.Context, id string) (*store.Machine, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	if s.useMirror() {
		return s.mirrorMachine(id)
	}
	octx, cancel := s.reqCtx(ctx)
	defer cancel()
	resp, err := s.cli.Get(octx, s.machineKey(id))
	if err != nil {
		err = s.fail(ctx, "get machine", err)
		if errors.Is(err, ErrUnavailable) && s.mirrorFresh() {
			return s.mirrorMachine(id)
		}
		return nil, err
	}
	s.ok()
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("etcd: get machine %q: %w", id, store.ErrNotFound)
	}
	m, err := decodeMachine(resp.Kvs[0].Value)
	if err != nil {
		return nil, fmt.Errorf("etcd: get machine %q: %w", id, err)
	}
	return m, nil
}

// GetMachineRecent implements store.RecentReader. While the watch keeps
// the mirror current it answers from the mirror, without a round trip:
// the state as of the watch delay ago, so a change made through another
// replica (removal, narrower source addresses) applies here once the
// watch delivers it, typically milliseconds later, at most currentFor if
// the watch stalls. A machine the mirror lacks is read from etcd, so one
// created through another replica is found at once.
func (s *Store) GetMachineRecent(ctx context.Context, id string) (*store.Machine, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	if s.mirrorCurrent() {
		if m, _, ok := s.mirror.get(id); ok {
			s.reads.mirror.Add(1)
			return m, nil
		}
		// Not there: perhaps created on another replica a moment ago,
		// before the watch brought it here. etcd knows.
	}
	s.reads.etcd.Add(1)
	return s.GetMachine(ctx, id)
}

// GetMachineByName implements store.NameIndex from the names keys. While
// etcd is unreachable it answers from the mirror, for at most the cache
// grace.
func (s *Store) GetMachineByName(ctx context.Context, org, app, name string) (*store.Machine, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	if !s.useMirror() {
		octx, cancel := s.reqCtx(ctx)
		resp, err := s.cli.Get(octx, s.nameKey(&store.Machine{Org: org, App: app, Name: name}))
		cancel()
		if err == nil {
			s.ok()
			if len(resp.Kvs) == 0 {
				return nil, fmt.Errorf("etcd: get machine %q in org %q app %q: %w", name, org, app, store.ErrNotFound)
			}
			return s.GetMachine(ctx, string(resp.Kvs[0].Value))
		}
		if err = s.fail(ctx, "get machine by name", err); !errors.Is(err, ErrUnavailable) || !s.mirrorFresh() {
			return nil, err
		}
	}
	for _, m := range s.mirror.list() {
		if m.Org == org && m.App == app && m.Name == name {
			return m, nil
		}
	}
	return nil, fmt.Errorf("etcd: get machine %q in org %q app %q (cached): %w", name, org, app, store.ErrNotFound)
}

func (s *Store) mirrorMachine(id string) (*store.Machine, error) {
	m, _, ok := s.mirror.get(id)
	if !ok {
		return nil, fmt.Errorf("etcd: get machine %q (cached): %w", id, store.ErrNotFound)
	}
	return m, nil
}

// ListMachines implements store.Store. While etcd is unreachable it answers
// from the mirror, for at most the cache grace.
func (s *Store) ListMachines(ctx context.Context) ([]*store.Machine, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	var out []*store.Machine
	if s.useMirror() {
		out = s.mirror.list()
	} else {
		octx, cancel := s.reqCtx(ctx)
		defer cancel()
		resp, err := s.cli.Get(octx, s.prefix+dirMachines, clientv3.WithPrefix())
		switch {
		case err != nil:
			err = s.fail(ctx, "list machines", err)
			if !errors.Is(err, ErrUnavailable) || !s.mirrorFresh() {
				return nil, err
			}
			out = s.mirror.list()
		default:
			s.ok()
			for _, kv := range resp.Kvs {
				m, err := decodeMachine(kv.Value)
				if err != nil {
					return nil, fmt.Errorf("etcd: list machines: %s: %w", kv.Key, err)
				}
				out = append(out, m)
			}
		}
	}
	slices.SortFunc(out, func(a, b *store.Machine) int {
		return cmp.Or(cmp.Compare(a.Org, b.Org), cmp.Compare(a.App, b.App),
			cmp.Compare(a.Name, b.Name), cmp.Compare(a.ID, b.ID))
	})
	return out, nil
}

// UpdateMachine implements store.Store: read, apply fn, and commit only if
// the machine's mod revision is still the one read; otherwise read the
// newer state and apply fn again.
func (s *Store) UpdateMachine(ctx context.Context, id string, expectVersion uint64, fn func(*store.Machine) error) (*store.Machine, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	mk := s.machineKey(id)
	octx, cancel := s.reqCtx(ctx)
	resp, err := s.cli.Get(octx, mk)
	cancel()
	if err != nil {
		return nil, s.fail(ctx, "update machine", err)
	}
	s.ok()
	kvs := resp.Kvs
	for attempt := 0; ; attempt++ {
		if len(kvs) == 0 {
			return nil, fmt.Errorf("etcd: update machine %q: %w", id, store.ErrNotFound)
		}
		cur, err := decodeMachine(kvs[0].Value)
		if err != nil {
			return nil, fmt.Errorf("etcd: update machine %q: %w", id, err)
		}
		modRev := kvs[0].ModRevision
		if expectVersion != 0 && cur.Version != expectVersion {
			return nil, fmt.Errorf("etcd: machine %q is at version %d, not %d: %w", id, cur.Version, expectVersion, store.ErrConflict)
		}
		next := cur.Clone()
		if err := fn(next); err != nil {
			return nil, err
		}
		if next.ID != cur.ID || next.Version != cur.Version || !next.CreatedAt.Equal(cur.CreatedAt) {
			return nil, fmt.Errorf("etcd: machine %q: update may not change ID, Version or CreatedAt", id)
		}
		next.Version++
		next.UpdatedAt = time.Now().UTC()
		val, err := encodeMachine(next)
		if err != nil {
			return nil, fmt.Errorf("etcd: update machine %q: %w", id, err)
		}
		cmps := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(mk), "=", modRev)}
		ops := []clientv3.Op{clientv3.OpPut(mk, val)}
		if oldKey, newKey := s.nameKey(cur), s.nameKey(next); oldKey != newKey {
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(newKey), "=", 0))
			ops = append(ops, clientv3.OpDelete(oldKey), clientv3.OpPut(newKey, id))
		}
		octx, cancel := s.reqCtx(ctx)
		tresp, err := s.cli.Txn(octx).If(cmps...).Then(ops...).Else(clientv3.OpGet(mk)).Commit()
		cancel()
		if err != nil {
			return nil, s.fail(ctx, "update machine", err)
		}
		s.ok()
		if tresp.Succeeded {
			s.published(id, next, tresp.Header.Revision)
			return next, nil
		}
		kvs = tresp.Responses[0].GetResponseRange().Kvs
		if len(kvs) == 1 && kvs[0].ModRevision == modRev {
			// The machine is unchanged, so the new name is what failed.
			return nil, fmt.Errorf("etcd: machine %q in org %q app %q: %w", next.Name, next.Org, next.App, store.ErrExists)
		}
		if err := contended(ctx, attempt); err != nil {
			return nil, fmt.Errorf("etcd: update machine %q: %w", id, err)
		}
	}
}

// contended pauses before retrying a lost compare-and-swap, longer with
// each attempt and randomly, so writers hammering one machine spread out.
func contended(ctx context.Context, attempt int) error {
	if attempt == 0 {
		return ctx.Err()
	}
	d := time.Duration(rand.Int64N(int64(min(attempt, 20)) * int64(time.Millisecond)))
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// DeleteMachine implements store.Store.
func (s *Store) DeleteMachine(ctx context.Context, id string, check func(*store.Machine) error) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	mk := s.machineKey(id)
	octx, cancel := s.reqCtx(ctx)
	resp, err := s.cli.Get(octx, mk)
	cancel()
	if err != nil {
		return s.fail(ctx, "delete machine", err)
	}
	s.ok()
	kvs := resp.Kvs
	for attempt := 0; ; attempt++ {
		if len(kvs) == 0 {
			return fmt.Errorf("etcd: delete machine %q: %w", id, store.ErrNotFound)
		}
		cur, err := decodeMachine(kvs[0].Value)
		if err != nil {
			return fmt.Errorf("etcd: delete machine %q: %w", id, err)
		}
		// The check sees the revision the delete is conditional on: a
		// change after it fails the compare and is checked again.
		if check != nil {
			if err := check(cur.Clone()); err != nil {
				return err
			}
		}
		octx, cancel := s.reqCtx(ctx)
		tresp, err := s.cli.Txn(octx).
			If(clientv3.Compare(clientv3.ModRevision(mk), "=", kvs[0].ModRevision)).
			Then(clientv3.OpDelete(mk), clientv3.OpDelete(s.nameKey(cur))).
			Else(clientv3.OpGet(mk)).
			Commit()
		cancel()
		if err != nil {
			return s.fail(ctx, "delete machine", err)
		}
		s.ok()
		if tresp.Succeeded {
			s.published(id, nil, tresp.Header.Revision)
			return nil
		}
		// Renamed in between: delete the name it has now.
		kvs = tresp.Responses[0].GetResponseRange().Kvs
		if err := contended(ctx, attempt); err != nil {
			return fmt.Errorf("etcd: delete machine %q: %w", id, err)
		}
	}
}

// PutKey implements store.Store.
func (s *Store) PutKey(ctx context.Context, k *store.SealedKey) error {
	if k == nil || k.Kind == "" || k.ID == "" {
		return errors.New("etcd: put key: kind and id required")
	}
	if err := s.check(ctx); err != nil {
		return err
	}
	val, err := encodeKey(k)
	if err != nil {
		return fmt.Errorf("etcd: put key %s/%s: %w", k.Kind, k.ID, err)
	}
	octx, cancel := s.reqCtx(ctx)
	defer cancel()
	if _, err := s.cli.Put(octx, s.keyKey(k.Kind, k.ID), val); err != nil {
		return s.fail(ctx, "put key "+k.Kind+"/"+k.ID, err)
	}
	s.ok()
	return nil
}

// ListKeys implements store.Store.
func (s *Store) ListKeys(ctx context.Context, kind string) ([]*store.SealedKey, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	octx, cancel := s.reqCtx(ctx)
	defer cancel()
	resp, err := s.cli.Get(octx, s.keysPrefix(kind), clientv3.WithPrefix())
	if err != nil {
		return nil, s.fail(ctx, "list keys", err)
	}
	s.ok()
	out := make([]*store.SealedKey, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		k, err := decodeKey(kv.Value)
		if err != nil {
			return nil, fmt.Errorf("etcd: list keys: %s: %w", kv.Key, err)
		}
		out = append(out, k)
	}
	slices.SortFunc(out, func(a, b *store.SealedKey) int {
		return cmp.Or(cmp.Compare(a.Kind, b.Kind), a.CreatedAt.Compare(b.CreatedAt), cmp.Compare(a.ID, b.ID))
	})
	return out, nil
}

// DeleteKey implements store.Store.
func (s *Store) DeleteKey(ctx context.Context, kind, id string) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	octx, cancel := s.reqCtx(ctx)
	defer cancel()
	resp, err := s.cli.Delete(octx, s.keyKey(kind, id))
	if err != nil {
		return s.fail(ctx, "delete key "+kind+"/"+id, err)
	}
	s.ok()
	if resp.Deleted == 0 {
		return fmt.Errorf("etcd: delete key %s/%s: %w", kind, id, store.ErrNotFound)
	}
	return nil
}

// Revoke implements store.Store.
func (s *Store) Revoke(ctx context.Context, r *store.Revocation) error {
	if r == nil || r.TokenID == "" {
		return errors.New("etcd: revoke: token id required")
	}
	if err := s.check(ctx); err != nil {
		return err
	}
	val, err := encodeRevocation(r)
	if err != nil {
		return fmt.Errorf("etcd: revoke %q: %w", r.TokenID, err)
	}
	octx, cancel := s.reqCtx(ctx)
	defer cancel()
	if _, err := s.cli.Put(octx, s.revocationKey(r.TokenID), val); err != nil {
		return s.fail(ctx, "revoke", err)
	}
	s.ok()
	return nil
}

// IsRevoked implements store.Store.
func (s *Store) IsRevoked(ctx context.Context, tokenID string) (bool, error) {
	if tokenID == "" {
		return false, nil
	}
	if err := s.check(ctx); err != nil {
		return false, err
	}
	octx, cancel := s.reqCtx(ctx)
	defer cancel()
	resp, err := s.cli.Get(octx, s.revocationKey(tokenID), clientv3.WithCountOnly())
	if err != nil {
		return false, s.fail(ctx, "is revoked", err)
	}
	s.ok()
	return resp.Count > 0, nil
}

// ListRevocations implements store.Store.
func (s *Store) ListRevocations(ctx context.Context) ([]*store.Revocation, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	octx, cancel := s.reqCtx(ctx)
	defer cancel()
	resp, err := s.cli.Get(octx, s.prefix+dirRevocations, clientv3.WithPrefix())
	if err != nil {
		return nil, s.fail(ctx, "list revocations", err)
	}
	s.ok()
	out := make([]*store.Revocation, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		r, err := decodeRevocation(kv.Value)
		if err != nil {
			return nil, fmt.Errorf("etcd: list revocations: %s: %w", kv.Key, err)
		}
		out = append(out, r)
	}
	// Escaped keys need not sort like the ids themselves.
	slices.SortFunc(out, func(a, b *store.Revocation) int { return cmp.Compare(a.TokenID, b.TokenID) })
	return out, nil
}

// WatchMachine implements store.Store. Events come from this process's
// writes at once and from every replica's through the etcd watch.
func (s *Store) WatchMachine(ctx context.Context, id string) (<-chan store.Event, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	// Subscribe before reading: a write that commits in between is then
	// either in what we read or delivered as an event, and the revision
	// check in offer keeps the newer of the two.
	sub, err := s.hub.SubscribeMachine(id)
	if err != nil {
		return nil, fmt.Errorf("etcd: watch machine: %w", err)
	}
	first, err := s.currentEvent(ctx, id)
	if err != nil {
		s.hub.UnsubscribeMachine(sub)
		return nil, fmt.Errorf("etcd: watch machine: %w", err)
	}
	s.hub.Offer(sub, first)
	context.AfterFunc(ctx, func() { s.hub.UnsubscribeMachine(sub) })
	return sub.Events(), nil
}

// currentEvent is the machine's state now: from the mirror while it is
// current (GetMachineRecent's rule), else from etcd or, while etcd is
// unreachable, from the mirror.
func (s *Store) currentEvent(ctx context.Context, id string) (store.Event, error) {
	fromMirror := func() (store.Event, error) {
		m, rev, ok := s.mirror.get(id)
		if !ok {
			return store.Event{}, fmt.Errorf("machine %q (cached): %w", id, store.ErrNotFound)
		}
		return store.Event{MachineID: id, Machine: m, Revision: uint64(rev)}, nil
	}
	if s.useMirror() {
		return fromMirror()
	}
	if s.mirrorCurrent() {
		// As GetMachineRecent: the subscription is already registered, so
		// a change the watch applies after this read is offered next.
		if ev, err := fromMirror(); err == nil {
			s.reads.mirror.Add(1)
			return ev, nil
		}
	}
	s.reads.etcd.Add(1)
	octx, cancel := s.reqCtx(ctx)
	defer cancel()
	resp, err := s.cli.Get(octx, s.machineKey(id))
	if err != nil {
		err = s.fail(ctx, "get machine", err)
		if errors.Is(err, ErrUnavailable) && s.mirrorFresh() {
			return fromMirror()
		}
		return store.Event{}, err
	}
	s.ok()
	if len(resp.Kvs) == 0 {
		return store.Event{}, fmt.Errorf("machine %q: %w", id, store.ErrNotFound)
	}
	m, err := decodeMachine(resp.Kvs[0].Value)
	if err != nil {
		return store.Event{}, err
	}
	return store.Event{MachineID: id, Machine: m, Revision: uint64(resp.Header.Revision)}, nil
}

// WatchKeys implements store.Store. Wake-ups come only from the etcd
// watch, for this process's writes and every other replica's alike.
func (s *Store) WatchKeys(ctx context.Context) (<-chan struct{}, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	ch, err := s.hub.SubscribeKeys()
	if err != nil {
		return nil, fmt.Errorf("etcd: watch keys: %w", err)
	}
	context.AfterFunc(ctx, func() { s.hub.UnsubscribeKeys(ch) })
	return ch, nil
}

// MachineReads implements store.ReadStats.
func (s *Store) MachineReads() store.MachineReads {
	return store.MachineReads{Mirror: s.reads.mirror.Load(), Backend: s.reads.etcd.Load()}
}

// Reachable implements store.Health: whether the last request or probe
// that ended found etcd answering, without a new round trip.
func (s *Store) Reachable() bool { return !s.degraded() }
