package unixsock

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/wicket-sh/wicket/internal/sockettest"
	"github.com/wicket-sh/wicket/internal/wait"
)

// sockDir returns a short private directory: t.TempDir paths can exceed the
// 107-byte sun_path limit.
func sockDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "ws")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func mustListen(t *testing.T, cfg Config) *Listener {
	t.Helper()
	l, err := Listen(cfg)
	if err != nil {
		t.Fatalf("Listen(%s): %v", cfg.Path, err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// serveCount accepts connections on l and counts them, answering nothing.
func serveCount(l net.Listener) *atomic.Int64 {
	var n atomic.Int64
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			c.Close()
		}
	}()
	return &n
}

func TestValidatePath(t *testing.T) {
	long := "/" + strings.Repeat("a", MaxPathLen)
	for _, tc := range []struct {
		path string
		ok   bool
	}{
		{"/run/wicket/api.sock", true},
		{"", false},
		{"relative.sock", false},
		{"./x.sock", false},
		{"/run/../etc/x.sock", false},
		{"/run/wicket/..", false},
		{"/run//wicket/x.sock", false},
		{"/run/./x.sock", false},
		{"/run/wicket/", false},
		{long, false},
		{long[:MaxPathLen], true},
		{"/run/x\x00.sock", false},
	} {
		err := ValidatePath(tc.path)
		if (err == nil) != tc.ok {
			t.Errorf("ValidatePath(%q) = %v, want ok=%v", tc.path, err, tc.ok)
		}
	}
}

func TestStaleSocket_SymlinkToFileRefused(t *testing.T) {
	d := sockDir(t)
	target := filepath.Join(d, "precious")
	if err := os.WriteFile(target, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(d, "api.sock")
	if err := os.Symlink(target, p); err != nil {
		t.Fatal(err)
	}
	_, err := Listen(Config{Path: p})
	if !errors.Is(err, ErrRefused) {
		t.Fatalf("Listen over symlink: err = %v, want ErrRefused", err)
	}
	if got, _ := os.ReadFile(target); string(got) != "keep me" {
		t.Errorf("symlink target changed: %q", got)
	}
	if fi, err := os.Lstat(p); err != nil || fi.Mode()&fs.ModeSymlink == 0 {
		t.Errorf("symlink itself was removed or replaced: %v %v", fi, err)
	}
}

func TestStaleSocket_SymlinkToLiveSocketNotConnected(t *testing.T) {
	d := sockDir(t)
	other := mustListen(t, Config{Path: filepath.Join(d, "other.sock")})
	accepted := serveCount(other)
	p := filepath.Join(d, "api.sock")
	if err := os.Symlink(other.Path(), p); err != nil {
		t.Fatal(err)
	}
	_, err := Listen(Config{Path: p})
	if !errors.Is(err, ErrRefused) {
		t.Fatalf("Listen over symlink to live socket: err = %v, want ErrRefused", err)
	}
	time.Sleep(50 * time.Millisecond) // give a stray connection time to be counted
	if n := accepted.Load(); n != 0 {
		t.Errorf("other service received %d connections from our startup", n)
	}
	if _, err := os.Stat(other.Path()); err != nil {
		t.Errorf("other socket gone: %v", err)
	}
}

func TestStaleSocket_RegularFileAndDirectoryRefused(t *testing.T) {
	d := sockDir(t)
	file := filepath.Join(d, "file.sock")
	if err := os.WriteFile(file, []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(d, "dir.sock")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "inside"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{file, dir} {
		if _, err := Listen(Config{Path: p}); !errors.Is(err, ErrRefused) {
			t.Errorf("Listen(%s) = %v, want ErrRefused", p, err)
		}
	}
	if got, _ := os.ReadFile(file); string(got) != "data" {
		t.Errorf("regular file changed: %q", got)
	}
	if _, err := os.Stat(filepath.Join(dir, "inside")); err != nil {
		t.Errorf("directory contents changed: %v", err)
	}
}

func TestStaleSocket_LiveSocketInUse(t *testing.T) {
	d := sockDir(t)
	p := filepath.Join(d, "api.sock")
	first := mustListen(t, Config{Path: p})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "first") })}
	go srv.Serve(first)
	t.Cleanup(func() { srv.Close() })

	_, err := Listen(Config{Path: p})
	if !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), "socket already in use") {
		t.Fatalf("second Listen: err = %v, want ErrInUse", err)
	}
	// The first listener keeps working at the same path.
	c := &http.Client{Transport: &http.Transport{DialContext: func(_ context.Context, _, _ string) (net.Conn, error) {
		return net.Dial("unix", p)
	}}}
	resp, err := c.Get("http://wicket/")
	if err != nil {
		t.Fatalf("first listener broken: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "first" {
		t.Errorf("got %q from first listener", b)
	}
}

func TestStaleSocket_DeadSocketReplaced(t *testing.T) {
	d := sockDir(t)
	p := filepath.Join(d, "api.sock")
	// A socket file whose owner died: bound, never listened on, fd closed.
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: p}); err != nil {
		t.Fatal(err)
	}
	syscall.Close(fd)
	l := mustListen(t, Config{Path: p})
	accepted := serveCount(l)
	c, err := net.Dial("unix", p)
	if err != nil {
		t.Fatalf("new socket not accepting: %v", err)
	}
	c.Close()
	wait.Eventually(t, 5*time.Second, func() bool { return accepted.Load() == 1 })
}

func TestSocketMode_NeverLooserThanConfigured(t *testing.T) {
	// A permissive umask must not widen the socket, not even for an instant.
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	d := sockDir(t)
	for _, mode := range []fs.FileMode{0o600, 0o660} {
		p := filepath.Join(d, "m.sock")
		var (
			stop    atomic.Bool
			wg      sync.WaitGroup
			looser  atomic.Value
			samples atomic.Int64
		)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				if fi, err := os.Lstat(p); err == nil {
					samples.Add(1)
					if fi.Mode().Perm()&^mode != 0 {
						looser.Store(fi.Mode().Perm())
					}
				}
			}
		}()
		for i := 0; i < 200; i++ {
			l, err := Listen(Config{Path: p, Mode: mode})
			if err != nil {
				stop.Store(true)
				wg.Wait()
				t.Fatal(err)
			}
			fi, err := os.Lstat(p)
			if err != nil || fi.Mode().Perm() != mode {
				t.Errorf("mode right after Listen = %v (%v), want %v", fi.Mode().Perm(), err, mode)
			}
			l.Close()
		}
		stop.Store(true)
		wg.Wait()
		if v := looser.Load(); v != nil {
			t.Errorf("observed socket with mode %v, looser than %v", v, mode)
		}
		t.Logf("mode %v: %d observations during creation", mode, samples.Load())
	}
}

func TestSocketOwner_GroupApplied(t *testing.T) {
	sockettest.RequireRoot(t, "chown to another group needs root")
	d := sockDir(t)
	p := filepath.Join(d, "g.sock")
	mustListen(t, Config{Path: p, Mode: 0o660, SetGroup: true, GID: 65534})
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	if gid := fi.Sys().(*syscall.Stat_t).Gid; gid != 65534 {
		t.Errorf("socket gid = %d, want 65534", gid)
	}
}

func TestParentDir(t *testing.T) {
	d := sockDir(t)
	t.Run("created with DirMode", func(t *testing.T) {
		p := filepath.Join(d, "new", "api.sock")
		mustListen(t, Config{Path: p, DirMode: 0o750})
		fi, err := os.Lstat(filepath.Dir(p))
		if err != nil || fi.Mode().Perm() != 0o750 {
			t.Errorf("parent mode = %v (%v), want 0750", fi.Mode().Perm(), err)
		}
	})
	t.Run("symlink parent refused", func(t *testing.T) {
		real := filepath.Join(d, "real")
		os.Mkdir(real, 0o700)
		link := filepath.Join(d, "link")
		os.Symlink(real, link)
		if _, err := Listen(Config{Path: filepath.Join(link, "api.sock")}); err == nil || !strings.Contains(err.Error(), "symlink") {
			t.Errorf("err = %v, want symlink refusal", err)
		}
		if _, err := os.Lstat(filepath.Join(real, "api.sock")); err == nil {
			t.Error("socket created through the symlinked parent")
		}
	})
	t.Run("group-writable parent refused", func(t *testing.T) {
		gw := filepath.Join(d, "gw")
		os.Mkdir(gw, 0o700)
		os.Chmod(gw, 0o770)
		if _, err := Listen(Config{Path: filepath.Join(gw, "api.sock")}); err == nil || !strings.Contains(err.Error(), "writable") {
			t.Errorf("err = %v, want writable refusal", err)
		}
	})
	t.Run("world-writable non-sticky refused", func(t *testing.T) {
		ww := filepath.Join(d, "ww")
		os.Mkdir(ww, 0o700)
		os.Chmod(ww, 0o777)
		if _, err := Listen(Config{Path: filepath.Join(ww, "api.sock")}); err == nil {
			t.Error("world-writable parent accepted")
		}
	})
	t.Run("root-owned sticky accepted", func(t *testing.T) {
		fi, err := os.Lstat("/tmp")
		if err != nil || fi.Mode()&fs.ModeSticky == 0 || fi.Sys().(*syscall.Stat_t).Uid != 0 {
			sockettest.Unavailable(t, "/tmp is not a root-owned sticky directory here")
		}
		p := filepath.Join("/tmp", filepath.Base(d)+"-sticky.sock")
		mustListen(t, Config{Path: p})
	})
}

func TestPeerCredentials(t *testing.T) {
	d := sockDir(t)
	l := mustListen(t, Config{Path: filepath.Join(d, "p.sock")})
	got := make(chan Peer, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		got <- c.(*Conn).Peer()
		c.Close()
	}()
	c, err := net.Dial("unix", l.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p := <-got
	if p.UID != uint32(os.Getuid()) || p.GID != uint32(os.Getgid()) || p.PID != int32(os.Getpid()) {
		t.Errorf("peer = %+v, want uid=%d gid=%d pid=%d", p, os.Getuid(), os.Getgid(), os.Getpid())
	}
}

func TestConnectionCap_ExcessClosedAndCounted(t *testing.T) {
	d := sockDir(t)
	// The per-uid cap is set to the socket cap: every client here is us.
	l := mustListen(t, Config{Path: filepath.Join(d, "cap.sock"), MaxConns: 2, MaxConnsPerUID: 2})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })

	var held []net.Conn
	for i := 0; i < 2; i++ {
		c, err := net.Dial("unix", l.Path())
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	wait.Eventually(t, 5*time.Second, func() bool { return l.Stats().Open == 2 })
	// The third is accepted by the kernel and then closed by us at once.
	extra, err := net.Dial("unix", l.Path())
	if err != nil {
		t.Fatal(err)
	}
	extra.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := extra.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("excess connection: read n=%d err=%v, want EOF", n, err)
	}
	extra.Close()
	if s := l.Stats(); s.Rejected != 1 || s.Open != 2 {
		t.Errorf("stats = %+v, want rejected=1 open=2", s)
	}
	// Freeing a slot lets a new client in: the server stayed healthy.
	held[0].Close()
	wait.Eventually(t, 5*time.Second, func() bool { return l.Stats().Open == 1 })
	c := &http.Client{Transport: &http.Transport{DialContext: func(_ context.Context, _, _ string) (net.Conn, error) {
		return net.Dial("unix", l.Path())
	}}}
	resp, err := c.Get("http://wicket/")
	if err != nil {
		t.Fatalf("after freeing a slot: %v", err)
	}
	resp.Body.Close()
	held[1].Close()
}

func TestCleanup_RemovesOwnSocketOnly(t *testing.T) {
	d := sockDir(t)
	p := filepath.Join(d, "c.sock")
	l, err := Listen(Config{Path: p})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("own socket not removed: %v", err)
	}

	// Someone else's socket placed at the path after ours stays.
	l, err = Listen(Config{Path: p})
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(p)
	theirs := mustListen(t, Config{Path: p})
	l.Close()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatalf("someone else's socket was removed: %v", err)
	}
	if fi.Mode()&fs.ModeSocket == 0 {
		t.Errorf("path is no longer a socket: %v", fi.Mode())
	}
	_ = theirs
}

// S-stale: two instances racing past the stale check at once — the loser's
// failed bind must leave the winner's live socket in place.
func TestBindRace_LoserDoesNotRemoveWinner(t *testing.T) {
	d := sockDir(t)
	p := filepath.Join(d, "race.sock")
	winner := mustListen(t, Config{Path: p})
	accepted := serveCount(winner)
	// The loser as it would run if its stale check had found nothing.
	_, _, err := bindListen(Config{Path: p, Mode: 0o600}.withDefaults())
	if !errors.Is(err, ErrInUse) {
		t.Fatalf("loser's bind: %v, want ErrInUse", err)
	}
	c, err := net.Dial("unix", p)
	if err != nil {
		t.Fatalf("winner's socket gone after the loser failed: %v", err)
	}
	c.Close()
	wait.Eventually(t, 5*time.Second, func() bool { return accepted.Load() == 1 })
}

// S-path: a symlink planted where the socket directory is about to be
// created is neither followed nor chmodded; the directory it points at
// keeps its mode.
func TestCreateDir_PlantedSymlinkNotFollowed(t *testing.T) {
	d := sockDir(t)
	victim := filepath.Join(d, "victim")
	if err := os.Mkdir(victim, 0o755); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(d, "sockets")
	// As if planted right before prepareDir looks.
	if err := os.Symlink(victim, dir); err != nil {
		t.Fatal(err)
	}
	if err := prepareDir(dir, 0o700, -1); err == nil || !strings.Contains(err.Error(), "symlink") {
		t.Fatalf("prepareDir over a planted symlink: %v, want a symlink refusal", err)
	}
	if fi, _ := os.Stat(victim); fi.Mode().Perm() != 0o755 {
		t.Errorf("symlink target chmodded to %v", fi.Mode().Perm())
	}
	if _, err := Listen(Config{Path: filepath.Join(dir, "api.sock")}); err == nil || !strings.Contains(err.Error(), "symlink") {
		t.Errorf("Listen through the planted symlink: %v", err)
	}
}
