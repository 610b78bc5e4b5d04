package spiffe

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wicket-sh/wicket/internal/agent/feature"
	"github.com/wicket-sh/wicket/internal/agent/feature/spiffe/workloadapi"
	"github.com/wicket-sh/wicket/internal/metrics"
	"github.com/wicket-sh/wicket/internal/safedir"
	"github.com/wicket-sh/wicket/internal/tokenfile"
)

// The [[svid_file]] writers. Each keeps one directory holding one
// identity's X.509-SVID from the Workload API's cache (so the files, the
// Workload API and the guest API hand out the same SVID, renewed once):
// it writes when it starts, then whenever the cache says something
// changed (a renewal of any SVID, a bundle whose authorities changed) and
// its identity's SVID or the bundle differ from what it last wrote.
//
// Each file is replaced atomically by tokenfile.WriteOwned (a temporary
// file in the same directory, fsynced, chowned, chmodded, renamed over
// the old one; the directory opened once without following symlinks, and
// refused unless it and its ancestors are root's or the agent's), in this
// order: bundle.pem, svid_key.pem, svid.pem. The bundle goes first since
// a new one still holds the old CAs; the key before the certificate, so a
// reader that reads svid.pem and then svid_key.pem never pairs a new
// certificate with an old key. The signal or command comes once all three
// are in place, so a program that reloads on it reads a matching set.

var (
	_ feature.Reloader      = (*Feature)(nil)
	_ feature.StatusSection = (*Feature)(nil)
	_ feature.Starter       = (*Feature)(nil)
)

// Reloaded implements feature.Reloader. A reload may have changed the
// [[policy]] rules that name the callers' identities, so every open
// Workload API stream decides its caller's again (a caller no longer
// admitted loses its stream, a renamed one gets its new SVID); and
// [[svid_file]] is dynamic: the writers follow the running config.
func (f *Feature) Reloaded() {
	if f.srv != nil {
		f.srv.PolicyChanged()
	}
	if f.files != nil {
		f.files.sync()
	}
}

// StatusSection implements feature.StatusSection: every running
// [[svid_file]], under svid_files.
func (f *Feature) StatusSection() (string, any) {
	if f.files == nil {
		return "svid_files", []FileStatus{}
	}
	return "svid_files", f.files.statuses()
}

// WaitStarted implements feature.Starter: every [[svid_file]] written
// once, so a workload started next to the agent finds its files.
func (f *Feature) WaitStarted(ctx context.Context) error {
	if f.files == nil {
		return nil
	}
	return f.files.waitWritten(ctx)
}

// Backoff bounds of a writer whose fetch or write failed.
const (
	fileMinBackoff = time.Second
	fileMaxBackoff = time.Minute
)

// commandTimeout bounds a [[svid_file]] command; maxCommandOutput is how
// much of its output is kept, and loggedOutput how much is logged.
const (
	commandTimeout   = 30 * time.Second
	maxCommandOutput = 4096
	loggedOutput     = 512
)

// commandEnv is a command's whole environment: nothing of the agent's
// (which may hold an admin token's variable or the machine token's path).
var commandEnv = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}

// FileStatus is one [[svid_file]] in the status document (svid_files). It
// never holds a key or a certificate.
type FileStatus struct {
	Dir                 string    `json:"dir"`
	SVIDName            string    `json:"svid_name,omitempty"`
	SPIFFEID            string    `json:"spiffe_id,omitempty"`
	LastWrite           time.Time `json:"last_write,omitzero"`
	ExpiresAt           time.Time `json:"expires_at,omitzero"`
	Writes              uint64    `json:"writes"`
	Failures            uint64    `json:"failures"`
	ConsecutiveFailures int       `json:"consecutive_failures"`
	LastError           string    `json:"last_error,omitempty"`
	Notified            uint64    `json:"notified"`
	NotifyFailures      uint64    `json:"notify_failures"`
	LastNotifyError     string    `json:"last_notify_error,omitempty"`
}

// fileWriters are the running writers, one per directory.
type fileWriters struct {
	f       *Feature
	mu      sync.Mutex
	running bool
	byDir   map[string]*fileRunner
}

type fileRunner struct {
	spec   fileSpec
	w      *fileWriter
	cancel context.CancelFunc
	done   chan struct{}
}

func (fw *fileWriters) start() {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	fw.running, fw.byDir = true, map[string]*fileRunner{}
	fw.syncLocked()
}

// sync makes the writers match the running config: unchanged entries
// keep their writer; removed ones stop (their files stay); changed ones
// restart.
func (fw *fileWriters) sync() {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if fw.running {
		fw.syncLocked()
	}
}

func (fw *fileWriters) syncLocked() {
	log := fw.f.host.Logger()
	specs := fileSpecs(fw.f.host.Config())
	want := map[string]fileSpec{}
	for _, s := range specs {
		want[s.dir] = s
	}
	// Stop the removed and changed ones first, and wait: two writers never
	// race on one directory.
	for dir, r := range fw.byDir {
		if s, ok := want[dir]; ok && s == r.spec {
			continue
		}
		r.cancel()
		<-r.done
		delete(fw.byDir, dir)
		log.Info("svid file stopped", "dir", dir, "files_kept", true)
	}
	for _, s := range specs {
		if fw.byDir[s.dir] != nil {
			continue
		}
		w := &fileWriter{spec: s, srv: fw.f.srv, log: log, now: fw.f.host.Now, written: make(chan struct{})}
		ctx, cancel := context.WithCancel(fw.f.host.Context())
		r := &fileRunner{spec: s, w: w, cancel: cancel, done: make(chan struct{})}
		go func() {
			defer close(r.done)
			w.run(ctx)
		}()
		fw.byDir[s.dir] = r
		log.Info("svid file started", "dir", s.dir, "svid_name", s.svidName, "uid", s.uid, "gid", s.gid,
			"key_mode", fmt.Sprintf("%04o", uint32(s.keyMode)), "signal", signalName(s.signal), "pid_file", s.pidFile, "command", len(s.args()) > 0)
	}
}

func (fw *fileWriters) stop() {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	for dir, r := range fw.byDir {
		r.cancel()
		<-r.done
		delete(fw.byDir, dir)
	}
	fw.running = false
}

func (fw *fileWriters) runners() []*fileRunner {
	fw.mu.Lock()
	out := make([]*fileRunner, 0, len(fw.byDir))
	for _, r := range fw.byDir {
		out = append(out, r)
	}
	fw.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].spec.dir < out[j].spec.dir })
	return out
}

func (fw *fileWriters) statuses() []FileStatus {
	out := []FileStatus{}
	for _, r := range fw.runners() {
		out = append(out, r.w.status())
	}
	return out
}

// samples are each directory's series: writes, failures, and the
// seconds its SVID has left.
func (fw *fileWriters) samples(now time.Time) []metrics.Sample {
	var s []metrics.Sample
	for _, r := range fw.runners() {
		st := r.w.status()
		lb := map[string]string{"dir": st.Dir}
		s = append(s,
			metrics.Sample{Name: "wicket_svid_file_writes_total", Help: "SVID file sets written.", Type: metrics.Counter, Labels: lb, Value: float64(st.Writes)},
			metrics.Sample{Name: "wicket_svid_file_failures_total", Help: "Failed SVID file fetches or writes.", Type: metrics.Counter, Labels: lb, Value: float64(st.Failures)},
			metrics.Sample{Name: "wicket_svid_file_notify_failures_total", Help: "Failed signals or commands after an SVID file write.", Type: metrics.Counter, Labels: lb, Value: float64(st.NotifyFailures)},
		)
		if !st.ExpiresAt.IsZero() {
			s = append(s, metrics.Sample{Name: "wicket_svid_file_seconds_to_expiry", Help: "Seconds until the SVID in the files expires.", Type: metrics.Gauge, Labels: lb, Value: st.ExpiresAt.Sub(now).Seconds()})
		}
	}
	return s
}

// waitWritten waits until every writer has written once.
func (fw *fileWriters) waitWritten(ctx context.Context) error {
	for _, r := range fw.runners() {
		select {
		case <-r.w.written:
		case <-r.done:
		case <-ctx.Done():
			return fmt.Errorf("svid file %s not written yet: %w", r.spec.dir, ctx.Err())
		}
	}
	return nil
}

// fileWriter keeps one directory.
type fileWriter struct {
	spec    fileSpec
	srv     *workloadapi.Server
	log     *slog.Logger
	now     func() time.Time
	written chan struct{} // closed at the first write

	mu sync.Mutex
	st FileStatus
}

func (w *fileWriter) status() FileStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	st := w.st
	st.Dir, st.SVIDName = w.spec.dir, w.spec.svidName
	return st
}

func (w *fileWriter) run(ctx context.Context) {
	w.prepare()
	var lastLeaf, lastBundle []byte
	backoff := fileMinBackoff
	for {
		changed := w.srv.Changed()
		sv, err := w.srv.X509SVIDFor(ctx, w.spec.svidName)
		if err == nil {
			bundle := bytes.Join(sv.Bundle, nil)
			if !bytes.Equal(sv.Chain[0], lastLeaf) || !bytes.Equal(bundle, lastBundle) {
				if err = w.write(sv); err == nil {
					lastLeaf, lastBundle = sv.Chain[0], bundle
					w.notify(ctx)
				}
			}
		}
		var retry <-chan time.Time
		var timer *time.Timer
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			w.failed(err)
			timer = time.NewTimer(backoff)
			retry = timer.C
			backoff = min(2*backoff, fileMaxBackoff)
		} else {
			backoff = fileMinBackoff
		}
		select {
		case <-ctx.Done():
			if timer != nil {
				timer.Stop()
			}
			return
		case <-changed:
		case <-retry:
		}
		if timer != nil {
			timer.Stop()
		}
	}
}

// prepare creates a missing directory (0755, through safedir: no
// symlink followed, every ancestor root's or the agent's) and removes
// temporary files a crashed writer left. Every write applies the same
// rules again, so a refusal here only says early why writes will fail.
func (w *fileWriter) prepare() {
	d, err := safedir.MkdirAll(w.spec.dir, 0o755, -1, safedir.SelfOrRoot)
	if err != nil {
		w.log.Warn("svid file directory refused: writes will fail", "dir", w.spec.dir, "err", err)
		return
	}
	d.Close()
	for _, base := range []string{BundleFileName, KeyFileName, SVIDFileName} {
		tokenfile.RemoveStale(filepath.Join(w.spec.dir, base))
	}
}

// write replaces the three files, in the order the package comment
// gives. Its errors name a file, never hold its content.
func (w *fileWriter) write(sv *workloadapi.X509SVID) error {
	s := w.spec
	files := []struct {
		base string
		data []byte
		mode os.FileMode
	}{
		{BundleFileName, appendPEM(nil, "CERTIFICATE", sv.Bundle...), certMode},
		{KeyFileName, appendPEM(nil, "PRIVATE KEY", sv.Key), s.keyMode},
		{SVIDFileName, appendPEM(nil, "CERTIFICATE", sv.Chain...), certMode},
	}
	for _, f := range files {
		err := tokenfile.WriteOwned(filepath.Join(s.dir, f.base), f.data, f.mode, s.uid, s.gid)
		clear(f.data)
		if err != nil {
			return err
		}
	}
	now := w.now()
	w.mu.Lock()
	w.st.SPIFFEID, w.st.LastWrite, w.st.ExpiresAt = sv.ID.String(), now, sv.ExpiresAt
	w.st.Writes++
	w.st.ConsecutiveFailures, w.st.LastError = 0, ""
	first := w.st.Writes == 1
	w.mu.Unlock()
	if first {
		close(w.written)
	}
	w.log.Info("svid file written", "dir", s.dir, "spiffe_id", sv.ID.String(), "expires_at", sv.ExpiresAt.UTC().Format(time.RFC3339))
	return nil
}

func (w *fileWriter) failed(err error) {
	w.mu.Lock()
	w.st.Failures++
	w.st.ConsecutiveFailures++
	w.st.LastError = err.Error()
	n := w.st.ConsecutiveFailures
	w.mu.Unlock()
	w.log.Warn("svid file not written", "dir", w.spec.dir, "consecutive_failures", n, "err", err)
}

func (w *fileWriter) notifyFailed(err error) {
	w.mu.Lock()
	w.st.NotifyFailures++
	w.st.LastNotifyError = err.Error()
	w.mu.Unlock()
	w.log.Warn("svid file notification failed", "dir", w.spec.dir, "err", err)
}

// notify sends the signal and runs the command, once the files are in
// place.
func (w *fileWriter) notify(ctx context.Context) {
	s := w.spec
	ok := true
	if s.signal != 0 {
		var pid int
		target, err := readPID(s.pidFile)
		if err == nil {
			pid = target.pid
			err = target.signal(s.signal)
			target.close()
		}
		if err != nil {
			ok = false
			w.notifyFailed(fmt.Errorf("signal %s via %s: %w", signalName(s.signal), s.pidFile, err))
		} else {
			w.log.Info("svid file signalled", "dir", s.dir, "signal", signalName(s.signal), "pid", pid)
		}
	}
	if args := s.args(); len(args) > 0 {
		if err := w.runCommand(ctx, args); err != nil {
			ok = false
			w.notifyFailed(err)
		}
	}
	if ok && (s.signal != 0 || s.command != "") {
		w.mu.Lock()
		w.st.Notified++
		w.st.LastNotifyError = ""
		w.mu.Unlock()
	}
}

// limitedBuffer keeps the first n bytes written to it.
type limitedBuffer struct {
	buf bytes.Buffer
	n   int
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := b.n - b.buf.Len(); room > 0 {
		b.buf.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}

// runCommand runs args without a shell, in /, with commandEnv, for at
// most commandTimeout; its output is logged cut short.
func (w *fileWriter) runCommand(ctx context.Context, args []string) error {
	ctx, cancel := context.WithTimeout(ctx, commandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Env, cmd.Dir = commandEnv, "/"
	cmd.WaitDelay = 2 * time.Second
	out := &limitedBuffer{n: maxCommandOutput}
	cmd.Stdout, cmd.Stderr = out, out
	start := time.Now()
	err := cmd.Run()
	logged := out.buf.String()
	if len(logged) > loggedOutput {
		logged = logged[:loggedOutput] + "…"
	}
	if err != nil {
		return fmt.Errorf("command %s: %w (output %q)", args[0], err, logged)
	}
	w.log.Info("svid file command run", "dir", w.spec.dir, "command", args[0], "took", time.Since(start).Round(time.Millisecond), "output", logged)
	return nil
}

// readPID reads the pid a pid file names, refusing what the signal must
// not reach: the file must be a regular file reached without a symlink
// anywhere on its path (one openat2 with RESOLVE_NO_SYMLINKS, so nothing
// can be swapped between a check and the open); the signal goes where
// the file's owner could send it with kill(1), never to pid 1 or below.
// A pid file of root or the agent may name any process, so it is taken
// only from a directory chain no other user can change (internal/
// safedir's rule): in a directory the workload may write, a hard link
// could put a root daemon's pid file there. Any other user's pid file
// must name a process of that user.
// pidTarget is the process a pid file named, held by a pidfd from before
// the checks on it, so the signal reaches the process checked even if
// the pid is reused meanwhile.
type pidTarget struct {
	pid, fd int
}

func (p pidTarget) signal(sig syscall.Signal) error {
	return unix.PidfdSendSignal(p.fd, sig, nil, 0)
}

func (p pidTarget) close() { unix.Close(p.fd) }

func readPID(path string) (pidTarget, error) {
	if !filepath.IsAbs(path) || filepath.Clean(path) != path {
		return pidTarget{}, errors.New("pid file path must be absolute and clean")
	}
	fd, err := unix.Openat2(unix.AT_FDCWD, path, &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_NONBLOCK | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.EXDEV) {
			return pidTarget{}, errors.New("pid file path is missing or goes through a symlink")
		}
		return pidTarget{}, fmt.Errorf("pid file path is missing or goes through a symlink: %w", err)
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return pidTarget{}, err
	}
	if !fi.Mode().IsRegular() {
		return pidTarget{}, errors.New("pid file is not a regular file")
	}
	b, err := io.ReadAll(io.LimitReader(f, 32))
	if err != nil {
		return pidTarget{}, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return pidTarget{}, errors.New("pid file does not hold a pid above 1")
	}
	owner, _ := safedir.UID(fi)
	pfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return pidTarget{}, fmt.Errorf("pid %d: %w", pid, err)
	}
	target := pidTarget{pid: pid, fd: pfd}
	if owner == 0 || owner == uint32(os.Geteuid()) {
		d, err := safedir.Open(filepath.Dir(path), safedir.Options{})
		if err != nil {
			target.close()
			return pidTarget{}, fmt.Errorf("pid file of root or the agent in a directory another user can change: %w", err)
		}
		d.Close()
		return target, nil
	}
	// Read after the pidfd is held: the uid is the held process's.
	puid, err := processUID(pid)
	if err == nil && puid != owner {
		err = fmt.Errorf("pid file of uid %d names pid %d of uid %d", owner, pid, puid)
	}
	if err != nil {
		target.close()
		return pidTarget{}, err
	}
	return target, nil
}

// processUID is pid's real uid, from /proc.
func processUID(pid int) (uint32, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(io.LimitReader(f, 64<<10))
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "Uid:"); ok {
			fields := strings.Fields(rest)
			if len(fields) > 0 {
				n, err := strconv.ParseUint(fields[0], 10, 32)
				return uint32(n), err
			}
		}
	}
	return 0, errors.New("no Uid in /proc status")
}

func signalName(s syscall.Signal) string {
	for name, v := range signals {
		if v == s {
			return name
		}
	}
	return ""
}
