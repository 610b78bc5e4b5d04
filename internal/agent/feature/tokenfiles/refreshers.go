package tokenfiles

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/wicket-sh/wicket/internal/agent/feature"
	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/metrics"
	"github.com/wicket-sh/wicket/internal/safedir"
	"github.com/wicket-sh/wicket/internal/tokenfile"
)

// Build implements feature.Runtime: the refreshers, one
// tokenfile.Refresher per configured token file ([[token_file]], and
// those [aws] and [azure] imply). The files' tokens come from the host's
// feature.TokenSource (the OIDC token cache the guest API uses). Nothing
// runs until Start.
func (Module) Build(h feature.RunHost) (feature.Instance, error) {
	return &Refreshers{h: h}, nil
}

// Refreshers is the feature's instance: a feature.Worker (Start, Stop),
// feature.Reloader (the refreshers follow the running config),
// feature.Starter (every file written once), feature.Gauges (each file's
// series) and feature.StatusSection (token_files in the status).
type Refreshers struct {
	h       feature.RunHost
	mu      sync.Mutex
	running bool // between Start and Stop
	byPath  map[string]*fileRunner
}

// fileRunner is one refresher and what stops it.
type fileRunner struct {
	spec   config.TokenFileSpec
	ref    *tokenfile.Refresher
	cancel context.CancelFunc
	done   chan struct{}
}

// Start implements feature.Worker: a refresher per configured file.
func (f *Refreshers) Start() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.running, f.byPath = true, map[string]*fileRunner{}
	f.syncLocked()
}

// Reloaded implements feature.Reloader: the refreshers are made to match
// the running config, which the agent's reload has just swapped in.
// Files whose settings did not change keep their refresher, untouched.
func (f *Refreshers) Reloaded() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.running {
		f.syncLocked()
	}
}

func (f *Refreshers) syncLocked() {
	log := f.h.Logger()
	specs := f.h.Config().TokenFileSpecs()
	want := make(map[string]config.TokenFileSpec, len(specs))
	for _, s := range specs {
		want[s.Path] = s
	}
	// Stop the removed and changed ones first, and wait: a changed file's
	// new refresher must never race its old one on the same path.
	for path, r := range f.byPath {
		if s, ok := want[path]; ok && sameTokenFile(s, r.spec) {
			r.spec.ImpliedBy = s.ImpliedBy // for status only
			continue
		}
		r.cancel()
		<-r.done
		delete(f.byPath, path)
		log.Info("token file stopped", "token_file", path, "aud", r.spec.Audience, "file_kept", true)
	}
	for _, s := range specs {
		if f.byPath[s.Path] != nil {
			continue
		}
		r, err := f.newFileRunner(s)
		if err != nil {
			// Validation makes this unreachable; never fatal to a reload.
			log.Error("token file not started", "token_file", s.Path, "err", err)
			continue
		}
		f.byPath[s.Path] = r
	}
}

// sameTokenFile reports whether a running refresher for old can keep
// running for s: same path, audience, mode, group and refresh point.
func sameTokenFile(s, old config.TokenFileSpec) bool {
	s.ImpliedBy, old.ImpliedBy = "", ""
	return s == old
}

func (f *Refreshers) newFileRunner(s config.TokenFileSpec) (*fileRunner, error) {
	ref, err := tokenfile.NewRefresher(tokenfile.Config{
		Path: s.Path, Source: f.source(s.Path, s.Audience, s.TTL), Mode: s.Mode, GID: s.GID,
		Audience: s.Audience, RefreshFraction: s.Refresh, Logger: f.h.Logger(), Now: f.h.Now,
	})
	if err != nil {
		return nil, err
	}
	f.prepareDir(s.Path)
	ctx, cancel := context.WithCancel(f.h.Context())
	r := &fileRunner{spec: s, ref: ref, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		ref.Run(ctx)
	}()
	f.h.Logger().Info("token file started", "token_file", s.Path, "aud", s.Audience,
		"mode", fmt.Sprintf("%04o", uint32(s.Mode)), "gid", s.GID, "refresh", s.Refresh, "ttl", s.TTL, "implied_by", s.ImpliedBy)
	return r, nil
}

// prepareTokenDir creates a missing parent directory (mode 0755: the file's
// own mode and group decide who reads it, and the workload must get
// through to it) through safedir, which follows no symlink and refuses a
// directory chain another user could change. Every write applies the same
// rules (tokenfile.Write), so a refusal here only says early why the
// writes will fail.
func (f *Refreshers) prepareDir(path string) {
	d, err := safedir.MkdirAll(filepath.Dir(path), 0o755, -1, safedir.SelfOrRoot)
	if err != nil {
		f.h.Logger().Warn("token file directory refused: writes will fail", "token_file", path, "err", err)
		return
	}
	d.Close()
}

// Stop implements feature.Worker: it stops every refresher and waits for
// them; the files stay where they are (their tokens expire on their own).
// The agent calls it at shutdown, after cancelling its context.
func (f *Refreshers) Stop() {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := len(f.byPath)
	for path, r := range f.byPath {
		r.cancel()
		<-r.done
		delete(f.byPath, path)
	}
	f.running = false
	if n > 0 {
		f.h.Logger().Info("token files stopped", "count", n, "files_kept", true)
	}
}

// source is a refresher's Source: a token for aud from the host's token
// source, of life ttl when the file sets one (0: the API's token).
func (f *Refreshers) source(path, aud string, ttl time.Duration) tokenfile.Source {
	return func(ctx context.Context) (string, time.Time, error) {
		ts := f.h.TokenSource()
		if ts == nil {
			return "", time.Time{}, errors.New("no issuer configured")
		}
		tok, src, err := ts.FreshToken(ctx, aud, ttl)
		if err != nil {
			return "", time.Time{}, err
		}
		// Like every token the guest API hands out: logged by its id.
		f.h.Logger().Info("oidc token", "token_file", path, "aud", aud, "outcome", src,
			"jti", tok.ID, "expires_at", tok.Expires.Format(time.RFC3339))
		return tok.JWT, tok.Expires, nil
	}
}

// FileStatus is one file in /v1/status: the refresher's status (which
// never holds the token) and the file's settings.
type FileStatus struct {
	tokenfile.Status
	Mode      string `json:"mode"`
	GID       int    `json:"gid"`           // -1: the agent's group
	TTL       string `json:"ttl,omitempty"` // the life asked for; absent: the API's tokens
	ImpliedBy string `json:"implied_by,omitempty"`
}

// runnerView is a refresher as seen outside the lock (a reload may update
// the runner's spec meanwhile).
type runnerView struct {
	spec config.TokenFileSpec
	ref  *tokenfile.Refresher
	done <-chan struct{}
}

// runners returns the refreshers, by path.
func (f *Refreshers) runners() []runnerView {
	f.mu.Lock()
	rs := make([]runnerView, 0, len(f.byPath))
	for _, r := range f.byPath {
		rs = append(rs, runnerView{spec: r.spec, ref: r.ref, done: r.done})
	}
	f.mu.Unlock()
	sort.Slice(rs, func(i, j int) bool { return rs[i].spec.Path < rs[j].spec.Path })
	return rs
}

// StatusSection implements feature.StatusSection: every running token
// file, under token_files.
func (f *Refreshers) StatusSection() (string, any) { return "token_files", f.Files() }

// Files lists every running token file, by path.
func (f *Refreshers) Files() []FileStatus {
	out := []FileStatus{}
	for _, r := range f.runners() {
		out = append(out, FileStatus{Status: r.ref.Status(), Mode: fmt.Sprintf("%04o", uint32(r.spec.Mode)),
			GID: r.spec.GID, TTL: ttlString(r.spec.TTL), ImpliedBy: r.spec.ImpliedBy})
	}
	return out
}

// Gauges implements feature.Gauges: each file's refresh and failure
// counters and its gauges, labelled with its path (series per file, so
// not in the agent's counter list).
func (f *Refreshers) Gauges() []metrics.Sample {
	var s []metrics.Sample
	for _, r := range f.runners() {
		s = append(s, r.ref.Metrics()...)
	}
	return s
}

// WaitStarted implements feature.Starter: it waits until every token
// file kept has been written once, or ctx ends. The agent's WaitStarted
// calls it once the agent is ready, before a workload whose environment
// (WorkloadEnv) names the files is started.
func (f *Refreshers) WaitStarted(ctx context.Context) error {
	for _, r := range f.runners() {
		select {
		case <-r.ref.Written():
		case <-r.done: // removed by a reload meanwhile
		case <-ctx.Done():
			return fmt.Errorf("token file %s not written yet: %w", r.spec.Path, ctx.Err())
		}
	}
	return nil
}

// ttlString is a token file's ttl for status: "" when it has none.
func ttlString(d time.Duration) string {
	if d <= 0 {
		return ""
	}
	return d.String()
}

// Refresher returns the running refresher of the file at path, nil when
// none runs: a reload keeps an unchanged file's refresher, and replaces a
// changed file's.
func (f *Refreshers) Refresher(path string) *tokenfile.Refresher {
	f.mu.Lock()
	defer f.mu.Unlock()
	if r := f.byPath[path]; r != nil {
		return r.ref
	}
	return nil
}
