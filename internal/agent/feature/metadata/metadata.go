// Package metadata is the metadata feature: one long poll kept open to the
// issuer (GET /v1/machines/self?wait=true) for as long as the agent runs,
// whatever the number of local waiters, and GET /v1/metadata,
// /v1/metadata/{key} and /v1/metadata/tags/{name} answered from the
// agent's copy, with local long polls that all wake on one change. Its
// snapshot gives the core the machine id and the proxy routes' {self} and
// {app} (feature.Metadata).
//
// The core's guard runs before the handlers: the peer policy is decided
// from method, path and peer before any body byte is read.
package metadata

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/agent/feature"
	"github.com/wicket-sh/wicket/internal/fastlane"
	"github.com/wicket-sh/wicket/internal/httpapi"
	"github.com/wicket-sh/wicket/internal/machinetoken"
	"github.com/wicket-sh/wicket/internal/metrics"
	"github.com/wicket-sh/wicket/internal/proxy"
	"github.com/wicket-sh/wicket/internal/unixsock"
)

// Key names the feature; it owns no config section.
const Key = "metadata"

// Module is the feature. BackoffMin and BackoffMax, when set, replace the
// watch's retry bounds (tests make them short); zero means the defaults.
type Module struct {
	BackoffMin, BackoffMax time.Duration
}

// Key implements feature.Module.
func (Module) Key() string { return Key }

// Build implements feature.Runtime.
func (m Module) Build(h feature.RunHost) (feature.Instance, error) {
	f := &Feature{
		host:         h,
		log:          h.Logger(),
		upstreamWait: upstreamWaitDefault,
		backoffMin:   backoffMinDefault,
		backoffMax:   backoffMaxDefault,
		done:         make(chan struct{}),
	}
	if m.BackoffMin > 0 {
		f.backoffMin = m.BackoffMin
	}
	if m.BackoffMax > 0 {
		f.backoffMax = m.BackoffMax
	}
	f.meta.init()
	return f, nil
}

// Feature is the built feature: the agent's copy of the metadata, the
// watch that keeps it current and the handlers that serve it.
type Feature struct {
	host feature.RunHost
	log  *slog.Logger
	meta metaCache

	okAt    atomic.Int64 // unix time of the last good fetch
	failing atomic.Bool

	upstreamWait, backoffMin, backoffMax time.Duration

	started atomic.Bool
	done    chan struct{} // closed when the watch has ended
}

var (
	_ feature.Routes   = (*Feature)(nil)
	_ feature.Worker   = (*Feature)(nil)
	_ feature.Status   = (*Feature)(nil)
	_ feature.Gauges   = (*Feature)(nil)
	_ feature.Metadata = (*Feature)(nil)
	_ feature.Starter  = (*Feature)(nil)
)

// Routes implements feature.Routes.
func (f *Feature) Routes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/metadata", f.handleMetadata)
	mux.HandleFunc("GET /v1/metadata/{key}", f.handleMetadataKey)
	mux.HandleFunc("GET /v1/metadata/tags/{name}", f.handleMetadataTag)
}

// Start implements feature.Worker: the watch runs until the host's
// context ends. Without an issuer there is nothing to wait for.
func (f *Feature) Start() {
	iss := f.host.Issuer()
	if iss == nil {
		f.meta.markAttempted()
		return
	}
	f.started.Store(true)
	go func() {
		defer close(f.done)
		f.watchFrom(f.host.Context(), func(ctx context.Context, cur *metaSnapshot) (*metaSnapshot, error) {
			return f.fetch(ctx, iss, cur)
		})
	}()
}

// Stop implements feature.Worker: it waits for the watch, which ends with
// the host's context.
func (f *Feature) Stop() {
	if f.started.Load() {
		<-f.done
	}
}

// WaitStarted implements feature.Starter: it returns once the first
// upstream fetch has finished, with or without success.
func (f *Feature) WaitStarted(ctx context.Context) error {
	select {
	case <-f.meta.attempted:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("first metadata fetch: %w", ctx.Err())
	}
}

// Vars implements feature.Metadata.
func (f *Feature) Vars() (proxy.Vars, bool) {
	if snap := f.meta.cur.Load(); snap != nil {
		return snap.vars, true
	}
	return proxy.Vars{}, false
}

// Status implements feature.Status: the watch's state, under
// "metadata", when the agent has an issuer.
func (f *Feature) Status() map[string]any {
	if f.host.Issuer() == nil {
		return nil
	}
	snap := f.meta.cur.Load()
	meta := map[string]any{"available": snap != nil, "failing": f.failing.Load(), "waiters": f.meta.waiters.Load()}
	if snap != nil {
		meta["etag"] = snap.etag
	}
	if t := f.okAt.Load(); t > 0 {
		meta["last_ok"] = time.Unix(t, 0).UTC().Format(time.RFC3339)
	}
	return map[string]any{"metadata": meta}
}

// Gauges implements feature.Gauges.
func (f *Feature) Gauges() []metrics.Sample {
	return []metrics.Sample{
		{Name: "wicket_metadata_waiters", Help: "Local metadata long polls waiting.", Type: metrics.Gauge, Value: float64(f.meta.waiters.Load())},
	}
}

// Waiters is the number of local long polls waiting, for tests.
func (f *Feature) Waiters() int64 { return f.meta.waiters.Load() }

// Install makes raw (the issuer's JSON, with etag) the current metadata,
// as a fetch would, and wakes the long polls waiting; for tests and fuzz
// seeds, which have no issuer to fetch from.
func (f *Feature) Install(raw []byte, etag string) error {
	snap, err := parseMetadata(raw, etag)
	if err != nil {
		return err
	}
	f.meta.set(snap)
	f.meta.markAttempted()
	return nil
}

// Watch timing defaults; tests shorten them.
const (
	upstreamWaitDefault = 60 * time.Second // one upstream long poll
	backoffMinDefault   = 200 * time.Millisecond
	backoffMaxDefault   = 15 * time.Second
	// minPollInterval spaces out upstream polls that come back unchanged
	// at once, so an issuer that never waits cannot make us spin.
	minPollInterval = time.Second
)

// metaSnapshot is one version of the machine's metadata. It is immutable;
// changed is closed when a newer version replaces it, which wakes every
// local long poll at once.
type metaSnapshot struct {
	raw     []byte // the issuer's JSON, served as is
	etag    string // the issuer's ETag, quoted as it sent it
	fields  map[string]string
	tags    map[string]string
	tagsRaw []byte
	vars    proxy.Vars
	changed chan struct{}
	// etagHdr is etag as a header value, built once per snapshot so a
	// request does not allocate it (see writeSnapshotHeaders).
	etagHdr []string
	// rawLen is raw's Content-Length, and rawReply the whole header of
	// raw's reply as net/http writes it, for the fast lane.
	rawLen   []string
	rawReply []byte
}

// parseMetadata checks the issuer's reply and indexes its fields: string
// values as they are, numbers and booleans as their JSON text.
func parseMetadata(raw []byte, etag string) (*metaSnapshot, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(raw, &top); err != nil || top == nil {
		return nil, errors.New("metadata reply is not a JSON object")
	}
	s := &metaSnapshot{raw: raw, etag: etag, fields: map[string]string{}, tags: map[string]string{}, changed: make(chan struct{})}
	for k, v := range top {
		if k == "tags" {
			var tags map[string]json.RawMessage
			if err := json.Unmarshal(v, &tags); err != nil {
				return nil, errors.New("metadata tags is not a JSON object")
			}
			for tk, tv := range tags {
				var str string
				if json.Unmarshal(tv, &str) == nil {
					s.tags[tk] = str
				}
			}
			continue
		}
		var str string
		switch {
		case json.Unmarshal(v, &str) == nil:
			s.fields[k] = str
		case len(v) > 0 && (v[0] == '-' || v[0] >= '0' && v[0] <= '9' || v[0] == 't' || v[0] == 'f'):
			s.fields[k] = string(v)
		}
	}
	s.tagsRaw, _ = json.Marshal(s.tags)
	s.tagsRaw = append(s.tagsRaw, '\n')
	s.vars = proxy.Vars{Self: s.fields["machine_id"], App: s.fields["app"]}
	if !validETag(etag) {
		// An issuer that sends none still gets stable local long polls.
		sum := sha256.Sum256(raw)
		s.etag = `"` + hex.EncodeToString(sum[:12]) + `"`
	}
	s.etagHdr = []string{s.etag}
	s.rawLen = []string{strconv.Itoa(len(raw))}
	h := http.Header{}
	writeRawHeaders(h, s)
	s.rawReply = fastlane.HeaderBytes(h)
	return s, nil
}

func validETag(e string) bool {
	if e == "" || len(e) > 256 {
		return false
	}
	for i := 0; i < len(e); i++ {
		if e[i] < 0x21 || e[i] > 0x7e {
			return false
		}
	}
	return true
}

// sameETag compares a caller's etag with ours, quoted or not.
func sameETag(ours, theirs string) bool {
	unq := func(s string) string {
		s = strings.TrimPrefix(s, "W/")
		if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
			return s[1 : len(s)-1]
		}
		return s
	}
	return ours == theirs || unq(ours) == unq(theirs)
}

// metaCache holds the current snapshot.
type metaCache struct {
	cur     atomic.Pointer[metaSnapshot]
	mu      sync.Mutex // serializes replacements
	waiters atomic.Int64

	// attempted is closed once the first upstream fetch has finished, with
	// or without success: requests arriving before that wait for it rather
	// than fail while the agent is still starting.
	attemptOnce sync.Once
	attempted   chan struct{}
}

func (m *metaCache) init() { m.attempted = make(chan struct{}) }

func (m *metaCache) markAttempted() { m.attemptOnce.Do(func() { close(m.attempted) }) }

// set installs next unless it has the current ETag; it reports whether it
// did.
func (m *metaCache) set(next *metaSnapshot) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	old := m.cur.Load()
	if old != nil && old.etag == next.etag {
		return false
	}
	m.cur.Store(next)
	if old != nil {
		close(old.changed)
	}
	return true
}

// watchFrom keeps one long poll running against the issuer (fetch) for as
// long as ctx lives, whatever the number of local waiters, and retries
// with jittered exponential backoff when the issuer fails. The last good
// snapshot stays in use meanwhile. Tests drive it with their own fetch.
func (f *Feature) watchFrom(ctx context.Context, fetch func(context.Context, *metaSnapshot) (*metaSnapshot, error)) {
	backoff := f.backoffMin
	failing := false
	for ctx.Err() == nil {
		cur := f.meta.cur.Load()
		start := f.host.Now()
		next, err := fetch(ctx, cur)
		if ctx.Err() != nil {
			return
		}

		if err != nil {
			f.host.UpstreamError()
			f.failing.Store(true)
			if !failing {
				f.log.Warn("metadata watch failing; serving cached metadata", "err", err, "cached", cur != nil)
			} else {
				f.log.Debug("metadata watch still failing", "err", err, "retry_in", backoff)
			}
			failing = true
			f.meta.markAttempted()
			sleepCtx(ctx, backoff/2+rand.N(backoff/2+1))
			backoff = min(backoff*2, f.backoffMax)
			continue
		}
		if failing {
			f.log.Info("metadata watch recovered")
		}
		failing = false
		f.failing.Store(false)
		backoff = f.backoffMin
		f.okAt.Store(f.host.Now().Unix())
		changed := f.meta.set(next)
		f.meta.markAttempted()
		if changed {
			f.log.Debug("metadata changed", "etag", next.etag)
		} else if el := f.host.Now().Sub(start); el < minPollInterval {
			sleepCtx(ctx, minPollInterval-el)
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// fetch gets the metadata from iss, as a long poll when cur is known,
// with a copy of the machine token narrowed to feature metadata.
func (f *Feature) fetch(ctx context.Context, iss feature.Issuer, cur *metaSnapshot) (*metaSnapshot, error) {
	timeout := f.host.Config().Issuer.RequestTimeout.Duration
	q := url.Values{}
	if cur != nil {
		q.Set("wait", "true")
		q.Set("etag", cur.etag)
		q.Set("timeout", f.upstreamWait.String())
		timeout += f.upstreamWait
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	rep, err := iss.Call(ctx, http.MethodGet, "/v1/machines/self", q, nil, feature.CopyTTL,
		machinetoken.Scope{Features: []machinetoken.Feature{machinetoken.FeatureMetadata}})
	if err != nil {
		return nil, err
	}
	if rep.Status != http.StatusOK {
		return nil, fmt.Errorf("issuer answered %d %s", rep.Status, rep.Code())
	}
	return parseMetadata(rep.Body, rep.Header.Get("ETag"))
}

// waitParams are a request's long-poll parameters.
type waitParams struct {
	wait    bool
	etag    string
	timeout time.Duration
}

// parseWait reads wait, etag and timeout; ok is false for bad values.
// A request without a query (nearly every one) is not parsed at all.
func parseWait(rawQuery string) (p waitParams, ok bool) {
	p.timeout = api.DefaultWait
	if rawQuery == "" {
		return p, true
	}
	// The pairs that parse, as r.URL.Query() gives them.
	q, _ := url.ParseQuery(rawQuery)
	switch q.Get("wait") {
	case "", "false":
	case "true":
		p.wait = true
	default:
		return p, false
	}
	if t := q.Get("timeout"); t != "" {
		d, err := time.ParseDuration(t)
		if err != nil || d < api.MinWait || d > api.MaxWait {
			return p, false
		}
		p.timeout = d
	}
	p.etag = q.Get("etag")
	if len(p.etag) > 256 || len(q["etag"]) > 1 || len(q["timeout"]) > 1 || len(q["wait"]) > 1 {
		return p, false
	}
	return p, true
}

// snapshotFor returns the snapshot to answer r with, after waiting for a
// change when r asks to; ok is false when a reply was already written (or
// the caller left).
func (f *Feature) snapshotFor(w http.ResponseWriter, r *http.Request) (*metaSnapshot, bool) {
	p, ok := parseWait(r.URL.RawQuery)
	if !ok {
		httpapi.BadRequest(w)
		return nil, false
	}
	snap := f.meta.cur.Load()
	if snap == nil && f.meta.attempted != nil {
		// Starting up: wait for the first fetch (bounded by the upstream
		// request timeout) instead of failing a caller that came early.
		t := time.NewTimer(f.host.Config().Issuer.RequestTimeout.Duration)
		select {
		case <-f.meta.attempted:
		case <-t.C:
		case <-r.Context().Done():
		}
		t.Stop()
		snap = f.meta.cur.Load()
	}
	if snap == nil {
		httpapi.Write(w, http.StatusServiceUnavailable, api.CodeUpstreamUnavailable, "metadata unavailable")
		return nil, false
	}
	if !p.wait || !sameETag(snap.etag, p.etag) {
		return snap, true
	}
	f.meta.waiters.Add(1)
	defer f.meta.waiters.Add(-1)
	t := time.NewTimer(p.timeout)
	defer t.Stop()
	select {
	case <-snap.changed:
		return f.meta.cur.Load(), true
	case <-t.C:
		return snap, true
	case <-f.host.Context().Done():
		return snap, true
	case <-r.Context().Done():
		return nil, false
	}
}

// Header values shared by every reply: net/http only reads them, and each
// has len == cap, so an Add elsewhere would copy rather than write into it.
var (
	hdrJSON = []string{"application/json"}
	hdrText = []string{"text/plain; charset=utf-8"}
)

// writeSnapshotHeaders sets the reply's headers from values built before
// the request (canonical keys, assigned directly): no allocation per
// request.
func writeSnapshotHeaders(w http.ResponseWriter, s *metaSnapshot, contentType []string) {
	h := w.Header()
	h["Content-Type"] = contentType
	httpapi.SetPrivateReply(h)
	h["Etag"] = s.etagHdr
}

// writeRawHeaders sets the headers of the whole metadata's reply. Its
// length is set, not left to net/http, so a reply of any size has the
// same header from the handler and the fast lane.
func writeRawHeaders(h http.Header, s *metaSnapshot) {
	h["Content-Type"] = hdrJSON
	httpapi.SetPrivateReply(h)
	h["Etag"] = s.etagHdr
	h["Content-Length"] = s.rawLen
}

func (f *Feature) handleMetadata(w http.ResponseWriter, r *http.Request) {
	s, ok := f.snapshotFor(w, r)
	if !ok {
		return
	}
	writeRawHeaders(w.Header(), s)
	w.Write(s.raw)
}

// FastRoutes implements feature.FastRoutes: GET /v1/metadata without a
// query (a long poll has one) is served by the fast lane once a snapshot
// is there.
func (f *Feature) FastRoutes() []feature.FastRoute {
	return []feature.FastRoute{{Method: http.MethodGet, Path: "/v1/metadata", Serve: f.fastMetadata}}
}

func (f *Feature) fastMetadata(_ unixsock.Peer, _ *fastlane.Request) (fastlane.Reply, bool) {
	s := f.meta.cur.Load()
	if s == nil {
		return fastlane.Reply{}, false // starting up: the handler waits for the first fetch
	}
	return fastlane.Reply{Header: s.rawReply, Body: s.raw}, true
}

// handleMetadataKey serves one field as text/plain, or the tags as JSON.
func (f *Feature) handleMetadataKey(w http.ResponseWriter, r *http.Request) {
	s, ok := f.snapshotFor(w, r)
	if !ok {
		return
	}
	key := r.PathValue("key")
	if key == "tags" {
		writeSnapshotHeaders(w, s, hdrJSON)
		w.Write(s.tagsRaw)
		return
	}
	v, found := s.fields[key]
	if !found {
		httpapi.NotFound(w)
		return
	}
	writeSnapshotHeaders(w, s, hdrText)
	io.WriteString(w, v)
}

func (f *Feature) handleMetadataTag(w http.ResponseWriter, r *http.Request) {
	s, ok := f.snapshotFor(w, r)
	if !ok {
		return
	}
	v, found := s.tags[r.PathValue("name")]
	if !found {
		httpapi.NotFound(w)
		return
	}
	writeSnapshotHeaders(w, s, hdrText)
	io.WriteString(w, v)
}
