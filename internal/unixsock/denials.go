package unixsock

import (
	"context"
	"log/slog"
	"maps"
	"sync"
	"time"
)

// DenialLogConfig configures a DenialLog.
type DenialLogConfig struct {
	// Msg is the message of a denial logged in full ("request denied").
	Msg string
	// SummaryMsg is the message of the per-uid summary lines
	// ("request denials suppressed").
	SummaryMsg string
	// Level of both kinds of line (default: warn).
	Level slog.Level
	// Interval is how long a uid stays summarized after its last full
	// line, and how often its summary is written (default 10s).
	Interval time.Duration
	// MaxUIDs bounds the per-uid table (default 1024); denials of further
	// uids are folded into one summary for "other uids".
	MaxUIDs int
}

// DenialLog logs refusals of socket peers without letting one uid flood the
// log. The first denial of a uid is logged in full, with whatever the
// caller passes; the uid's further denials are only counted, and one summary
// line per interval gives the count when it is not zero. A uid with no
// denial for a whole interval is forgotten, so its next denial is logged in
// full again. Every denial is counted by reason (Stats).
//
// Memory is bounded: at most MaxUIDs uids are tracked at a time, each with
// one timer; denials of uids beyond that share a single "other uids"
// summary. (A peer with that many uids at hand is root or close to it.)
type DenialLog struct {
	log *slog.Logger
	cfg DenialLogConfig

	mu         sync.Mutex
	uids       map[uint32]*denialEntry
	other      denialEntry // uids that did not fit in the table
	byReason   map[string]uint64
	logged     uint64
	suppressed uint64
}

type denialEntry struct {
	suppressed uint64
	timer      *time.Timer // nil while the entry has no pending summary
}

// NewDenialLog returns a DenialLog writing to logger.
func NewDenialLog(logger *slog.Logger, cfg DenialLogConfig) *DenialLog {
	if cfg.Level == 0 {
		cfg.Level = slog.LevelWarn
	}
	if cfg.Interval <= 0 {
		cfg.Interval = 10 * time.Second
	}
	if cfg.MaxUIDs <= 0 {
		cfg.MaxUIDs = 1024
	}
	return &DenialLog{log: logger, cfg: cfg, uids: map[uint32]*denialEntry{}, byReason: map[string]uint64{}}
}

// Deny records one denial of p for reason (a short stable word, counted in
// Stats). args are the attributes of the full line (peer identity, route...);
// they are logged only when this is the uid's first denial in an interval.
func (d *DenialLog) Deny(ctx context.Context, p Peer, reason string, args ...any) {
	d.mu.Lock()
	d.byReason[reason]++
	if e, ok := d.uids[p.UID]; ok {
		e.suppressed++
		d.suppressed++
		d.mu.Unlock()
		return
	}
	if len(d.uids) >= d.cfg.MaxUIDs {
		d.other.suppressed++
		d.suppressed++
		if d.other.timer == nil {
			d.other.timer = time.AfterFunc(d.cfg.Interval, d.tickOther)
		}
		d.mu.Unlock()
		return
	}
	e := &denialEntry{}
	d.uids[p.UID] = e
	uid := p.UID
	e.timer = time.AfterFunc(d.cfg.Interval, func() { d.tick(uid, e) })
	d.logged++
	d.mu.Unlock()
	// Outside the lock: a slow log writer must not stall other callers'
	// bookkeeping.
	d.log.Log(ctx, d.cfg.Level, d.cfg.Msg, args...)
}

// tick ends one interval of uid: it writes the summary if anything was
// suppressed (and keeps the uid summarized), or forgets a quiet uid.
func (d *DenialLog) tick(uid uint32, e *denialEntry) {
	d.mu.Lock()
	if d.uids[uid] != e {
		d.mu.Unlock() // flushed meanwhile
		return
	}
	n := e.suppressed
	if n == 0 {
		delete(d.uids, uid)
		d.mu.Unlock()
		return
	}
	e.suppressed = 0
	e.timer.Reset(d.cfg.Interval)
	d.mu.Unlock()
	d.summary("peer_uid", uid, n)
}

func (d *DenialLog) tickOther() {
	d.mu.Lock()
	n := d.other.suppressed
	d.other.suppressed = 0
	if n == 0 {
		d.other.timer = nil
		d.mu.Unlock()
		return
	}
	d.other.timer.Reset(d.cfg.Interval)
	d.mu.Unlock()
	d.summary("peer_uid", "other", n)
}

func (d *DenialLog) summary(key string, uid any, n uint64) {
	d.log.Log(context.Background(), d.cfg.Level, d.cfg.SummaryMsg,
		key, uid, "suppressed", n, "interval", d.cfg.Interval.String())
}

// Flush writes the pending summaries at once and forgets every uid; call it
// at shutdown so no count is lost from the log.
func (d *DenialLog) Flush() {
	type pending struct {
		uid any
		n   uint64
	}
	var out []pending
	d.mu.Lock()
	for uid, e := range d.uids {
		e.timer.Stop()
		if e.suppressed > 0 {
			out = append(out, pending{uid, e.suppressed})
		}
	}
	clear(d.uids)
	if d.other.timer != nil {
		d.other.timer.Stop()
		d.other.timer = nil
	}
	if d.other.suppressed > 0 {
		out = append(out, pending{"other", d.other.suppressed})
		d.other.suppressed = 0
	}
	d.mu.Unlock()
	for _, p := range out {
		d.summary("peer_uid", p.uid, p.n)
	}
}

// DenialStats counts a DenialLog's denials.
type DenialStats struct {
	// ByReason counts every denial by the reason given to Deny.
	ByReason map[string]uint64
	// Logged denials were written in full; Suppressed ones were only
	// counted in a summary line.
	Logged, Suppressed uint64
}

// Stats returns the counters.
func (d *DenialLog) Stats() DenialStats {
	d.mu.Lock()
	defer d.mu.Unlock()
	return DenialStats{ByReason: maps.Clone(d.byReason), Logged: d.logged, Suppressed: d.suppressed}
}
