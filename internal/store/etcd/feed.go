package etcd

import (
	"cmp"
	"context"
	"errors"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wicket-sh/wicket/internal/store"
)

// The change feed: one etcd watch on the whole prefix, from the revision
// the mirror is complete up to. Each response updates the mirror, offers
// machine states to WatchMachine subscribers and wakes WatchKeys
// subscribers. When the watch ends (member lost, leader lost, stream
// broken) it resumes from the next revision, so no change is skipped; when
// that revision has been compacted away it re-reads all machines instead
// and offers every watched machine its current state.
//
// Every probeEvery a probe asks the watch for a progress report (any
// answer proves the mirror current at that moment; the cache grace counts
// from the last one) and reads one key, which tells whether etcd answers
// and, when the mirror is already at that read's revision, proves it
// complete (etcd sends no progress report while nothing is written).
const (
	probeEvery = time.Second
	// staleAfter without any watch answer means the watch is stuck (a
	// member gone without closing the connection): restart it.
	staleAfter = 3 * probeEvery
	// maxWatchBackoff caps the pause between failed watch restarts.
	maxWatchBackoff = 2 * time.Second
	// currentFor is how long a proof that the mirror holds every change
	// (a progress report, a full read, or the probe's read at a revision
	// the mirror has reached) lets it answer machine reads while etcd
	// answers. Two probe periods: one missed report does not
	// send every read to etcd. It is the bound on how stale a mirror read
	// can be when the watch stalls without breaking; while the watch
	// runs, a mirror read misses only what the watch has not delivered
	// yet (the watch delay, milliseconds).
	currentFor = 2 * probeEvery
)

var (
	errKicked      = errors.New("watch restart requested")
	errWatchClosed = errors.New("watch channel closed")
)

// mirror is every machine as the watch last reported it, plus this
// process's own writes as soon as they commit (so a replica that just
// wrote a machine can serve it even if etcd goes away before the watch
// reports the write). Every entry carries the revision of its state, and
// an older state never replaces a newer one; deletions are kept as
// tombstones until the watch has passed their revision, so a late watch
// event cannot bring a deleted machine back.
type mirror struct {
	mu         sync.RWMutex
	machines   map[string]mirrored
	tombstones map[string]int64 // id → revision of deletion
	rev        int64            // the watch has applied every change up to this revision
	synced     atomic.Int64
	// current is when (unix ns) the mirror was last proven to hold every
	// change etcd had committed: a full read, a progress report (etcd
	// sends one only to a watch that has been sent every change), or a
	// quorum read whose revision the mirror has reached. Any watch answer
	// updates synced; only these update current.
	current atomic.Int64
}

type mirrored struct {
	m   *store.Machine
	rev int64
}

// replace makes ms (with their mod revisions) the whole mirror, as of rev.
func (m *mirror) replace(ms map[string]mirrored, rev int64) {
	m.mu.Lock()
	m.machines, m.tombstones, m.rev = ms, map[string]int64{}, rev
	m.mu.Unlock()
	m.touch()
	m.proven()
}

// apply records machine id's state (nil: deleted) at revision rev, unless
// the mirror already holds a newer one.
func (m *mirror) apply(id string, mach *store.Machine, rev int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e, ok := m.machines[id]; ok && e.rev >= rev {
		return
	}
	if t, ok := m.tombstones[id]; ok && t >= rev {
		return
	}
	if mach == nil {
		delete(m.machines, id)
		m.tombstones[id] = rev
		return
	}
	delete(m.tombstones, id)
	m.machines[id] = mirrored{mach, rev}
}

// advance notes that the watch has applied every change up to rev.
func (m *mirror) advance(rev int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if rev <= m.rev {
		return
	}
	m.rev = rev
	for id, t := range m.tombstones {
		if t <= rev {
			delete(m.tombstones, id)
		}
	}
}

func (m *mirror) revision() int64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.rev
}

// get returns a copy of machine id and the revision it is current at.
func (m *mirror) get(id string) (*store.Machine, int64, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	e, ok := m.machines[id]
	return e.m.Clone(), max(e.rev, m.rev), ok
}

func (m *mirror) list() []*store.Machine {
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := make([]*store.Machine, 0, len(m.machines))
	for _, e := range m.machines {
		out = append(out, e.m.Clone())
	}
	return out
}

// touch records that the mirror is current now.
func (m *mirror) touch() { m.synced.Store(time.Now().UnixNano()) }

func (m *mirror) syncedAt() int64 { return m.synced.Load() }

// proven records that the mirror holds every change committed until now.
func (m *mirror) proven() { m.current.Store(time.Now().UnixNano()) }

// provenAge is how long ago the mirror was last proven to hold every change.
func (m *mirror) provenAge() time.Duration { return time.Since(time.Unix(0, m.current.Load())) }

// age is how long ago the mirror was last known current.
func (m *mirror) age() time.Duration { return time.Since(time.Unix(0, m.synced.Load())) }

// degraded reports whether etcd is known not to answer: the last request
// (or probe) that ended did so for lack of etcd.
func (s *Store) degraded() bool { return s.failedAt.Load() > s.okAt.Load() }

// ok records that etcd answered a request.
func (s *Store) ok() { s.okAt.Store(time.Now().UnixNano()) }

// mirrorFresh reports whether the mirror may answer reads: it was current
// less than the cache grace ago.
func (s *Store) mirrorFresh() bool {
	return s.cfg.CacheGrace > 0 && s.mirror.age() <= s.cfg.CacheGrace
}

// mirrorCurrent reports whether the mirror may answer a machine read
// while etcd answers: the watch runs and was proven complete less than
// currentFor ago. A machine in the mirror is then its state as of the
// watch delay ago; one not in it is read from etcd, since it may have
// been created on another replica a moment ago (read-your-writes across
// replicas).
func (s *Store) mirrorCurrent() bool {
	return s.watching.Load() && !s.degraded() && s.mirror.provenAge() <= currentFor
}

// useMirror reports whether reads should not even try etcd: it is known
// not to answer, and the mirror is within the grace. The probe keeps
// trying, so reads return to etcd within probeEvery of its recovery.
func (s *Store) useMirror() bool { return s.degraded() && s.mirrorFresh() }

// relistPageSize is how many machines relist reads per request.
const relistPageSize = 5000

// relist makes every machine in etcd the mirror, as of one revision.
//
// It reads in pages, each under its own request timeout: one read of the
// whole prefix takes about 19 µs a machine and returns every record in one
// response, so a large registry would outgrow any single timeout (a
// replica could not start) and need hundreds of MB at once. Every page
// after the first is read at the first page's revision, so the mirror is
// one snapshot, never half of a change made during the listing; the
// watch, starting from that revision, then brings the change. If that
// revision is compacted before the last page, the listing starts over
// once, at the current revision; a second compaction fails it.
func (s *Store) relist(ctx context.Context) error {
	ms, rev, err := s.listMachines(ctx)
	if errors.Is(err, rpctypes.ErrCompacted) {
		s.log.Warn("state: machines compacted while listing them; listing again", "err", err)
		ms, rev, err = s.listMachines(ctx)
	}
	if err != nil {
		return err
	}
	s.mirror.replace(ms, rev)
	return nil
}

// listMachines reads every machine record, page by page at one revision,
// and returns them with that revision.
func (s *Store) listMachines(ctx context.Context) (map[string]mirrored, int64, error) {
	prefix := s.prefix + dirMachines
	from, end := prefix, clientv3.GetPrefixRangeEnd(prefix)
	limit := int64(cmp.Or(s.cfg.relistPage, relistPageSize))
	ms := map[string]mirrored{}
	var rev int64 // 0 until the first page: read at the current revision
	for {
		octx, cancel := s.reqCtx(ctx)
		resp, err := s.cli.Get(octx, from, clientv3.WithRange(end), clientv3.WithRev(rev), clientv3.WithLimit(limit))
		cancel()
		if err != nil {
			return nil, 0, err
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		s.addMachines(ms, resp.Kvs)
		if !resp.More || len(resp.Kvs) == 0 {
			return ms, rev, nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00" // the next key after the last
		if s.cfg.betweenPages != nil {
			s.cfg.betweenPages(rev)
		}
	}
}

// addMachines decodes machine records into ms, with their mod revisions.
func (s *Store) addMachines(ms map[string]mirrored, kvs []*mvccpb.KeyValue) {
	for _, kv := range kvs {
		m, err := decodeMachine(kv.Value)
		if err != nil {
			// One bad record must not take every machine's cache down.
			s.log.Error("state: skipping undecodable machine", "key", string(kv.Key), "err", err)
			continue
		}
		ms[m.ID] = mirrored{m, kv.ModRevision}
	}
}

// resync follows a compaction that outran the watch: re-read everything,
// then tell every subscriber the current state, since changes in between
// are lost.
func (s *Store) resync() error {
	if err := s.relist(s.ctx); err != nil { // each page has the request timeout
		return err
	}
	for _, id := range s.hub.MachineIDs() {
		m, rev, _ := s.mirror.get(id) // nil: deleted in between
		s.hub.PublishMachine(id, m, uint64(rev))
	}
	s.hub.PublishKeys()
	return nil
}

func (s *Store) watchLoop() {
	defer s.wg.Done()
	pause := 100 * time.Millisecond
	for s.ctx.Err() == nil {
		answered, err := s.watchOnce()
		if s.ctx.Err() != nil {
			return
		}
		if answered {
			pause = 100 * time.Millisecond
		}
		switch {
		case errors.Is(err, rpctypes.ErrCompacted):
			from := s.mirror.revision() + 1
			if err := s.resync(); err != nil {
				s.log.Warn("state: re-reading after compaction failed", "err", err)
				break
			}
			s.log.Warn("state: watch fell behind compaction; re-read all machines", "from_revision", from, "revision", s.mirror.revision())
			continue
		case errors.Is(err, errKicked):
			continue
		default:
			s.log.Debug("state: watch ended; resuming", "revision", s.mirror.revision(), "err", err)
		}
		t := time.NewTimer(pause)
		select {
		case <-s.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		pause = min(2*pause, maxWatchBackoff)
	}
}

// watchOnce watches from the mirror's next revision until the watch ends,
// and reports whether it got any answer.
func (s *Store) watchOnce() (answered bool, err error) {
	if hook := s.beforeWatch.Load(); hook != nil {
		(*hook)()
	}
	// Require a leader: a member cut off from the others would otherwise
	// keep this watch open and silent.
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(s.ctx))
	defer cancel()
	wch := s.cli.Watch(ctx, s.prefix, clientv3.WithPrefix(), clientv3.WithRev(s.mirror.revision()+1))
	s.watching.Store(true)
	defer s.watching.Store(false)
	for {
		select {
		case <-s.kick:
			return answered, errKicked
		case resp, ok := <-wch:
			if !ok {
				return answered, errWatchClosed
			}
			if err := resp.Err(); err != nil {
				return answered, err
			}
			answered = true
			s.apply(&resp)
		}
	}
}

// apply takes one watch response into the mirror and the subscribers.
func (s *Store) apply(resp *clientv3.WatchResponse) {
	keys := false
	for _, ev := range resp.Events {
		k, ok := strings.CutPrefix(string(ev.Kv.Key), s.prefix)
		if !ok {
			continue
		}
		rev := ev.Kv.ModRevision // for a delete, the deletion's revision
		switch {
		case strings.HasPrefix(k, dirMachines):
			id, err := url.PathUnescape(k[len(dirMachines):])
			if err != nil {
				break
			}
			var m *store.Machine
			if ev.Type == clientv3.EventTypePut {
				if m, err = decodeMachine(ev.Kv.Value); err != nil {
					s.log.Error("state: skipping undecodable machine", "key", string(ev.Kv.Key), "err", err)
					break
				}
			}
			s.mirror.apply(id, m, rev)
			s.hub.PublishMachine(id, m, uint64(rev))
		case strings.HasPrefix(k, dirKeys), strings.HasPrefix(k, dirRevocations):
			keys = true
		}
		s.mirror.advance(rev)
	}
	// A progress report means every change up to its revision was sent.
	if resp.IsProgressNotify() {
		s.mirror.advance(resp.Header.Revision)
		s.mirror.proven()
	}
	s.mirror.touch()
	if keys {
		s.hub.PublishKeys()
	}
}

// kickWatch makes the watch start over from the mirror's revision.
func (s *Store) kickWatch() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// probeLoop keeps the mirror's sync time current while etcd answers,
// notices etcd going away and coming back even when no request is made,
// restarts a watch that stopped answering, and logs when etcd becomes
// unreachable and reachable again.
func (s *Store) probeLoop() {
	defer s.wg.Done()
	t := time.NewTicker(probeEvery)
	defer t.Stop()
	wasDegraded := false
	lastKick := time.Now()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		if s.watching.Load() {
			// Same metadata as the watch's context, so the request goes
			// down the watch's own stream.
			ctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(s.ctx), probeEvery)
			_ = s.cli.RequestProgress(ctx) // the answer, if any, arrives on the watch
			cancel()
		}
		ctx, cancel := context.WithTimeout(s.ctx, probeEvery)
		resp, err := s.cli.Get(ctx, s.prefix+keySchema)
		cancel()
		switch {
		case s.ctx.Err() != nil:
			return
		case err == nil:
			s.ok()
			// A quorum read's revision is etcd's as of the read: a mirror
			// at or past it holds every change up to then. This is the
			// proof while nothing is written, when etcd sends no progress
			// report to a watch waiting for a revision not yet made.
			// It is as good as a watch answer for the cache grace, and
			// keeps a quiet watch from being restarted as stuck.
			if resp.Header.Revision <= s.mirror.revision() {
				s.mirror.touch()
				s.mirror.proven()
			}
		case unavailable(err):
			s.failedAt.Store(time.Now().UnixNano())
		}
		if s.mirror.age() > staleAfter && time.Since(lastKick) > staleAfter {
			s.kickWatch()
			lastKick = time.Now()
		}
		switch deg := s.degraded(); {
		case deg && !wasDegraded:
			wasDegraded = true
			if s.cfg.CacheGrace > 0 {
				s.log.Error("state: etcd unreachable; writes fail, reads served from cache",
					"endpoints", strings.Join(s.cfg.Endpoints, ","), "cache_grace", s.cfg.CacheGrace.String(),
					"cache_age", s.mirror.age().Round(time.Millisecond).String())
			} else {
				s.log.Error("state: etcd unreachable", "endpoints", strings.Join(s.cfg.Endpoints, ","))
			}
		case !deg && wasDegraded:
			wasDegraded = false
			s.log.Info("state: etcd reachable again", "revision", s.mirror.revision())
		}
	}
}
