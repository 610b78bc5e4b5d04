package agent

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/metrics"
	"github.com/wicket-sh/wicket/internal/safedir"
	"github.com/wicket-sh/wicket/internal/tokenfile"
)

// tokenFiles runs one tokenfile.Refresher per configured token file
// ([[token_file]], and those [aws] and [azure] imply). The files' tokens
// come from the agent's own OIDC token cache, the one the guest API uses.
// The zero value is ready: nothing runs until start.
type tokenFiles struct {
	mu      sync.Mutex
	running bool            // between start and stop
	ctx     context.Context // parent of every refresher
	byPath  map[string]*fileRunner
}

// fileRunner is one refresher and what stops it.
type fileRunner struct {
	spec   config.TokenFileSpec
	ref    *tokenfile.Refresher
	cancel context.CancelFunc
	done   chan struct{}
}

// startTokenFiles starts a refresher per configured file; Run calls it.
func (a *Agent) startTokenFiles() {
	f := &a.files
	f.mu.Lock()
	defer f.mu.Unlock()
	f.running, f.ctx, f.byPath = true, a.stop, map[string]*fileRunner{}
	a.syncTokenFilesLocked()
}

// syncTokenFiles makes the refreshers match the running config: Reload
// calls it after swapping the config in. Files whose settings did not
// change keep their refresher, untouched.
func (a *Agent) syncTokenFiles() {
	f := &a.files
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.running {
		a.syncTokenFilesLocked()
	}
}

func (a *Agent) syncTokenFilesLocked() {
	f := &a.files
	specs := a.rt.Load().cfg.TokenFileSpecs()
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
		a.log.Info("token file stopped", "token_file", path, "aud", r.spec.Audience, "file_kept", true)
	}
	for _, s := range specs {
		if f.byPath[s.Path] != nil {
			continue
		}
		r, err := a.newFileRunner(s)
		if err != nil {
			// Validation makes this unreachable; never fatal to a reload.
			a.log.Error("token file not started", "token_file", s.Path, "err", err)
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

func (a *Agent) newFileRunner(s config.TokenFileSpec) (*fileRunner, error) {
	ref, err := tokenfile.NewRefresher(tokenfile.Config{
		Path: s.Path, Source: a.tokenFileSource(s.Path, s.Audience, s.TTL), Mode: s.Mode, GID: s.GID,
		Audience: s.Audience, RefreshFraction: s.Refresh, Logger: a.log, Now: a.now,
	})
	if err != nil {
		return nil, err
	}
	a.prepareTokenDir(s.Path)
	ctx, cancel := context.WithCancel(a.files.ctx)
	r := &fileRunner{spec: s, ref: ref, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		ref.Run(ctx)
	}()
	a.log.Info("token file started", "token_file", s.Path, "aud", s.Audience,
		"mode", fmt.Sprintf("%04o", uint32(s.Mode)), "gid", s.GID, "refresh", s.Refresh, "ttl", s.TTL, "implied_by", s.ImpliedBy)
	return r, nil
}

// prepareTokenDir creates a missing parent directory (mode 0755: the file's
// own mode and group decide who reads it, and the workload must get
// through to it) through safedir, which follows no symlink and refuses a
// directory chain another user could change. Every write applies the same
// rules (tokenfile.Write), so a refusal here only says early why the
// writes will fail.
func (a *Agent) prepareTokenDir(path string) {
	d, err := safedir.MkdirAll(filepath.Dir(path), 0o755, -1, safedir.SelfOrRoot)
	if err != nil {
		a.log.Warn("token file directory refused: writes will fail", "token_file", path, "err", err)
		return
	}
	d.Close()
}

// stopTokenFiles stops every refresher and waits for them; the files stay
// where they are (their tokens expire on their own). Run's shutdown calls
// it after cancelling the agent's context.
func (a *Agent) stopTokenFiles() {
	f := &a.files
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
		a.log.Info("token files stopped", "count", n, "files_kept", true)
	}
}

// tokenFileSource is a refresher's Source: a token for aud from the
// agent's cache, of life ttl when the file sets one (0: the API's token).
func (a *Agent) tokenFileSource(path, aud string, ttl time.Duration) tokenfile.Source {
	return func(ctx context.Context) (string, time.Time, error) {
		if a.tokens == nil {
			return "", time.Time{}, errors.New("no issuer configured")
		}
		tok, src, err := a.tokens.FreshToken(ctx, aud, ttl)
		if err != nil {
			return "", time.Time{}, err
		}
		// Like every token the guest API hands out: logged by its id.
		a.log.Info("oidc token", "token_file", path, "aud", aud, "outcome", src,
			"jti", tok.ID, "expires_at", tok.Expires.Format(time.RFC3339))
		return tok.JWT, tok.Expires, nil
	}
}

// tokenFileStatus is one file in /v1/status: the refresher's status (which
// never holds the token) and the file's settings.
type tokenFileStatus struct {
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
func (a *Agent) runners() []runnerView {
	f := &a.files
	f.mu.Lock()
	rs := make([]runnerView, 0, len(f.byPath))
	for _, r := range f.byPath {
		rs = append(rs, runnerView{spec: r.spec, ref: r.ref, done: r.done})
	}
	f.mu.Unlock()
	sort.Slice(rs, func(i, j int) bool { return rs[i].spec.Path < rs[j].spec.Path })
	return rs
}

// tokenFilesStatus lists every running token file.
func (a *Agent) tokenFilesStatus() []tokenFileStatus {
	out := []tokenFileStatus{}
	for _, r := range a.runners() {
		out = append(out, tokenFileStatus{Status: r.ref.Status(), Mode: fmt.Sprintf("%04o", uint32(r.spec.Mode)),
			GID: r.spec.GID, TTL: ttlString(r.spec.TTL), ImpliedBy: r.spec.ImpliedBy})
	}
	return out
}

// tokenFilesMetrics returns each file's refresh and failure counters,
// labelled with its path.
func (a *Agent) tokenFilesMetrics() []metrics.Sample {
	var s []metrics.Sample
	for _, r := range a.runners() {
		s = append(s, r.ref.Metrics()...)
	}
	return s
}

// WaitTokenFiles waits until the agent is ready and every token file it
// keeps has been written once, or ctx ends. A supervisor calls it before
// starting a workload whose environment (WorkloadEnv) names the files.
func (a *Agent) WaitTokenFiles(ctx context.Context) error {
	select {
	case <-a.ready:
	case <-ctx.Done():
		return ctx.Err()
	}
	for _, r := range a.runners() {
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
