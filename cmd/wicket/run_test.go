package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/wicket-sh/wicket/internal/sockettest"
)

// The test binary doubles as the workload of `wicket agent run`: with
// probeEnv set it reports what it can see and exits, before TestMain
// builds anything. The variable is deliberately not a WICKET_ one, which
// the agent would remove.
const probeEnv = "RUNTEST_PROBE"

func init() {
	if os.Getenv(probeEnv) == "1" {
		os.Exit(probeMain(os.Args[1:]))
	}
}

// probeReport is what a workload could learn from where it stands.
type probeReport struct {
	Status map[string]string // Uid, Gid, Groups lines of /proc/self/status
	Env    []string
	// FDs are the descriptors from 3 up that survived exec (not
	// close-on-exec), with their targets.
	FDs []string
	// ParentEnviron, ParentMem: the error opening /proc/<agent>/environ
	// and mem, or "readable". ParentStatus shows /proc/<agent> is there.
	ParentEnviron, ParentMem, ParentStatus string
	// Files: for each path asked about, the error reading it or its content.
	Files    map[string]string
	Metadata sockettest.Result
	OIDC     sockettest.Result
	// TTY is what the workload did to the terminals it could reach, with
	// "inject=MARK".
	TTY *ttyReach
}

// ttyReach is what a workload could do to the terminals within its reach.
type ttyReach struct {
	// Devs: the terminal device behind each of descriptors 0–2.
	Devs map[int]uint64
	// DevTTY is the device /dev/tty opens, DevTTYErr why it would not.
	DevTTY    uint64
	DevTTYErr string
	// InjectStdin, InjectDevTTY: "ok" or why TIOCSTI failed.
	InjectStdin, InjectDevTTY string
}

// ttyDevice is the device number of the terminal behind fd (/dev/tty's own
// hides it), 0 when fd is no terminal.
func ttyDevice(fd int) uint64 {
	d, err := unix.IoctlGetUint32(fd, unix.TIOCGDEV)
	if err != nil {
		return 0
	}
	return uint64(d)
}

// tiocsti pushes s into the input of the terminal fd, as if typed there.
func tiocsti(fd int, s string) string {
	for i := 0; i < len(s); i++ {
		b := s[i]
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TIOCSTI, uintptr(unsafe.Pointer(&b))); e != 0 {
			return e.Error()
		}
	}
	return "ok"
}

// reachTTY tries to queue a line starting with mark on every terminal the
// workload can reach: its stdin and its controlling terminal.
func reachTTY(mark string) *ttyReach {
	r := &ttyReach{Devs: map[int]uint64{}}
	for fd := 0; fd < 3; fd++ {
		r.Devs[fd] = ttyDevice(fd)
	}
	r.InjectStdin = tiocsti(0, mark+"-stdin\n")
	fd, err := unix.Open("/dev/tty", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		r.DevTTYErr = err.Error()
		return r
	}
	defer unix.Close(fd)
	r.DevTTY = ttyDevice(fd)
	r.InjectDevTTY = tiocsti(fd, mark+"-devtty\n")
	return r
}

func probeMain(args []string) int {
	var r probeReport
	self := fmt.Sprintf("/proc/%d/fd", os.Getpid())
	ents, _ := os.ReadDir("/proc/self/fd")
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd < 3 {
			continue
		}
		target, _ := os.Readlink("/proc/self/fd/" + e.Name())
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		// Go opens everything close-on-exec: what is not was inherited.
		if target != self && err == nil && flags&unix.FD_CLOEXEC == 0 {
			r.FDs = append(r.FDs, e.Name()+" -> "+target)
		}
	}
	r.Status = map[string]string{}
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && (k == "Uid" || k == "Gid" || k == "Groups") {
				r.Status[k] = strings.Join(strings.Fields(v), " ")
			}
		}
	}
	r.Env = os.Environ()
	proc := fmt.Sprintf("/proc/%d/", os.Getppid())
	readable := func(p string) string {
		f, err := os.Open(p)
		if err != nil {
			return err.Error()
		}
		f.Close()
		return "readable"
	}
	r.ParentEnviron, r.ParentMem, r.ParentStatus = readable(proc+"environ"), readable(proc+"mem"), readable(proc+"status")
	r.Files = map[string]string{}
	for _, a := range args {
		if mark, ok := strings.CutPrefix(a, "inject="); ok {
			r.TTY = reachTTY(mark)
		}
		if p, ok := strings.CutPrefix(a, "read="); ok {
			if b, err := os.ReadFile(p); err != nil {
				r.Files[p] = err.Error()
			} else {
				r.Files[p] = string(b)
			}
		}
	}
	if slices.Contains(args, "api") {
		sock := os.Getenv("WICKET_SOCKET")
		// The first metadata fetch from the issuer may still be under way.
		for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			r.Metadata = sockettest.Do(sock, "GET", "/v1/metadata", "", nil)
			if r.Metadata.Status == 200 || time.Now().After(deadline) {
				break
			}
		}
		r.OIDC = sockettest.Do(sock, "POST", "/v1/tokens/oidc", `{"aud":"sts.example.com"}`, nil)
	}
	json.NewEncoder(os.Stdout).Encode(r)
	return 0
}

var (
	publicMu   sync.Mutex
	publicBins = map[string]string{}
)

// publicCopy copies an executable where any uid may run it: go test and
// TestMain build in private 0700 directories. The copies live next to
// wicketBin, so TestMain's cleanup removes them too.
func publicCopy(t *testing.T, src string) string {
	t.Helper()
	publicMu.Lock()
	defer publicMu.Unlock()
	if p, ok := publicBins[src]; ok {
		return p
	}
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(filepath.Dir(wicketBin), "public")
	// Search, not read, for others on the private directory above.
	if err := os.Chmod(filepath.Dir(wicketBin), 0o711); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, strconv.Itoa(len(publicBins))+"-"+filepath.Base(src))
	if err := os.WriteFile(p, data, 0o755); err != nil {
		t.Fatal(err)
	}
	publicBins[src] = p
	return p
}

// probeBinary is the test binary, runnable by the workload's uid.
func probeBinary(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return publicCopy(t, self)
}

func requireRunRoot(t *testing.T) {
	t.Helper()
	sockettest.RequireRoot(t, "`wicket agent run` tests need root to switch the workload's uid")
}

// runDir is a directory the workload can traverse and write to, with an
// agent config whose sockets live under it.
func runDir(t *testing.T, extra string) (dir, cfg, api string) {
	t.Helper()
	dir = shortDir(t)
	if err := os.Chmod(dir, 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	api = filepath.Join(dir, "run", "api.sock")
	cfg = filepath.Join(dir, "agent.toml")
	body := fmt.Sprintf("[api]\nsocket_path = %q\n[admin]\nsocket_path = %q\n%s", api, filepath.Join(dir, "run", "admin.sock"), extra)
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir, cfg, api
}

// wicketRun is one `wicket agent run` process.
type wicketRun struct {
	cmd            *exec.Cmd
	stdout, stderr *sockettest.Buffer
	done           chan struct{}
	code           int
}

// startRun starts wicket with args; setup may adjust the command.
func startRun(t *testing.T, env []string, setup func(*exec.Cmd), args ...string) *wicketRun {
	t.Helper()
	w := &wicketRun{stdout: &sockettest.Buffer{}, stderr: &sockettest.Buffer{}, done: make(chan struct{})}
	w.cmd = exec.Command(wicketBin, append([]string{"agent", "run"}, args...)...)
	w.cmd.Env = append([]string{"PATH=/usr/local/bin:/usr/bin:/bin"}, env...)
	w.cmd.Stdout, w.cmd.Stderr = w.stdout, w.stderr
	w.cmd.Dir = "/"
	if setup != nil {
		setup(w.cmd)
	}
	if err := w.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		w.cmd.Wait()
		w.code = w.cmd.ProcessState.ExitCode()
		close(w.done)
	}()
	t.Cleanup(func() {
		w.cmd.Process.Kill()
		<-w.done
	})
	return w
}

func (w *wicketRun) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-w.done:
		return w.code
	case <-time.After(d):
		t.Fatalf("wicket agent run still running after %v\nstderr:\n%s", d, w.stderr)
	}
	return 0
}

func (w *wicketRun) waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	// Generous: a loaded machine forks slowly, and a passing
	// condition returns at once.
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		select {
		case <-w.done:
			if cond() {
				return
			}
			t.Fatalf("wicket exited (%d) before %s\nstderr:\n%s", w.code, what, w.stderr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s\nstderr:\n%s", what, w.stderr)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (w *wicketRun) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := w.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %v: %v", sig, err)
	}
}

func (w *wicketRun) report(t *testing.T) probeReport {
	t.Helper()
	var r probeReport
	if err := json.Unmarshal([]byte(w.stdout.String()), &r); err != nil {
		t.Fatalf("probe output %q: %v\nstderr:\n%s", w.stdout, err, w.stderr)
	}
	return r
}

func exists(p string) func() bool {
	return func() bool { _, err := os.Stat(p); return err == nil }
}

// memberUser finds a non-root user that /etc/group lists as a member of a
// group other than its primary one, for the supplementary groups case.
func memberUser(t *testing.T) (name string, primary, member string) {
	t.Helper()
	pw, _ := os.ReadFile("/etc/passwd")
	gr, _ := os.ReadFile("/etc/group")
	primaryOf := map[string]string{}
	for _, l := range strings.Split(string(pw), "\n") {
		if f := strings.Split(l, ":"); len(f) >= 7 && f[2] != "0" {
			primaryOf[f[0]] = f[3]
		}
	}
	for _, l := range strings.Split(string(gr), "\n") {
		f := strings.Split(l, ":")
		if len(f) < 4 || f[3] == "" {
			continue
		}
		for _, m := range strings.Split(f[3], ",") {
			if p, ok := primaryOf[m]; ok && p != f[2] {
				return m, p, f[2]
			}
		}
	}
	return "", "", ""
}

// The workload runs as exactly the uid, gid and groups asked for; root only
// when explicitly allowed; an unknown uid never silently gets gid 0.
func TestAgentRun_Identity(t *testing.T) {
	requireRunRoot(t)
	probe := probeBinary(t)
	user, primary, member := memberUser(t)
	groups := []string{primary, member}
	slices.SortFunc(groups, func(a, b string) int { x, _ := strconv.Atoi(a); y, _ := strconv.Atoi(b); return x - y })
	tests := []struct {
		name     string
		flags    []string
		needUser bool
		want     map[string]string // probe's /proc/self/status; nil: no workload
		code     int
		stderr   string
	}{
		{name: "uid and gid", flags: []string{"--user", "4242", "--group", "4243"},
			want: map[string]string{"Uid": "4242 4242 4242 4242", "Gid": "4243 4243 4243 4243", "Groups": ""}},
		{name: "user name: primary and supplementary groups", needUser: true, flags: []string{"--user", user},
			want: map[string]string{"Gid": strings.Repeat(primary+" ", 3) + primary, "Groups": strings.Join(groups, " ")}},
		{name: "user name with --group: no supplementary groups", needUser: true, flags: []string{"--user", user, "--group", "4243"},
			want: map[string]string{"Gid": "4243 4243 4243 4243", "Groups": ""}},
		{name: "root refused by default", code: 1, stderr: "refusing to run the workload as root"},
		{name: "uid 0 refused", flags: []string{"--user", "0", "--group", "4243"}, code: 1, stderr: "refusing to run the workload as root"},
		{name: "root allowed explicitly", flags: []string{"--user", "root", "--allow-root-workload"},
			want: map[string]string{"Uid": "0 0 0 0", "Gid": "0 0 0 0"}},
		{name: "unknown uid needs a group", flags: []string{"--user", "4242"}, code: 1, stderr: "give a group"},
		{name: "unknown user", flags: []string{"--user", "no-such-user-here"}, code: 1, stderr: "unknown user"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.needUser && user == "" {
				t.Skip("skipping: no non-root user with a supplementary group in /etc/group")
			}
			_, cfg, _ := runDir(t, "")
			args := append([]string{"--config", cfg}, tt.flags...)
			w := startRun(t, []string{probeEnv + "=1"}, nil, append(args, "--", probe)...)
			code := w.wait(t, 60*time.Second)
			if code != tt.code || !strings.Contains(w.stderr.String(), tt.stderr) {
				t.Fatalf("exit %d, want %d with %q in stderr:\n%s", code, tt.code, tt.stderr, w.stderr)
			}
			if tt.want == nil {
				if w.stdout.String() != "" {
					t.Errorf("the workload ran: %s", w.stdout)
				}
				return
			}
			r := w.report(t)
			for k, v := range tt.want {
				if r.Status[k] != v {
					t.Errorf("%s: %q, want %q", k, r.Status[k], v)
				}
			}
		})
	}
	t.Run("command not found", func(t *testing.T) {
		_, cfg, _ := runDir(t, "")
		w := startRun(t, nil, nil, "--config", cfg, "--user", "4242", "--group", "4242", "--", "no-such-command-here")
		if code := w.wait(t, 60*time.Second); code != 127 {
			t.Errorf("exit %d, want 127\n%s", code, w.stderr)
		}
	})
}

// issuerEnv is a real `wicket issuer` with one registered machine.
type issuerEnv struct {
	url, token, name string
}

func startIssuer(t *testing.T) issuerEnv {
	t.Helper()
	dir := shortDir(t)
	addr := freeAddr(t)
	sock := filepath.Join(dir, "issuer.sock")
	flags := []string{"--state-dir", filepath.Join(dir, "state"), "--admin-socket", sock, "--listen", addr, "--public-url", "http://" + addr}
	if out, errOut, code := run(t, append([]string{"issuer", "init"}, flags...)...); code != 0 {
		t.Fatalf("issuer init: %s %s", out, errOut)
	}
	cmd := exec.Command(wicketBin, append([]string{"issuer"}, flags...)...)
	logs := &sockettest.Buffer{}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(logs.String(), "issuer ready") {
		if time.Now().After(deadline) {
			t.Fatalf("issuer not ready:\n%s", logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
	out, errOut, code := run(t, "issuer", "machine", "add", "--socket", sock, "--org", "dev", "--app", "dev-app", "--name", "run-1", "--region", "local")
	if code != 0 {
		t.Fatalf("machine add: %s", errOut)
	}
	var added struct {
		Token struct {
			Token string `json:"token"`
		} `json:"token"`
	}
	if err := json.Unmarshal([]byte(out), &added); err != nil || !strings.HasPrefix(added.Token.Token, "fm2_") {
		t.Fatalf("machine add output %q: %v", out, err)
	}
	return issuerEnv{url: "http://" + addr, token: added.Token.Token, name: "run-1"}
}

// The workload gets OIDC tokens and metadata through WICKET_SOCKET, and
// never the machine token: not in its environment, not through the
// agent's /proc environ or memory, not in an inherited descriptor, not in
// a file it can read — whether the token came by environment, descriptor
// or file, and even when the workload runs as the agent's own uid.
func TestAgentRun_MachineTokenStaysWithAgent(t *testing.T) {
	requireRunRoot(t)
	iss := startIssuer(t)
	probe := probeBinary(t)
	const adminToken = "admin-token-0123456789abcdef"

	// tokenRun is how one case hands the token to the agent.
	type tokenRun struct {
		env, flags []string
		read       string // a path the workload tries to read
		sameUID    bool
		cmd        func(*exec.Cmd)
	}
	tests := []struct {
		name  string
		extra string // agent config
		setup func(t *testing.T, dir string) tokenRun
	}{
		{
			name:  "token in the environment",
			extra: "token_env = \"MY_ADMIN_TOKEN\"\n", // lands in [admin]
			setup: func(t *testing.T, dir string) tokenRun {
				// A descriptor leaked to the agent, open on a copy of
				// the token: the workload must not inherit it.
				p := filepath.Join(dir, "leaked")
				os.WriteFile(p, []byte(iss.token), 0o600)
				f, err := os.Open(p)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { f.Close() })
				return tokenRun{
					env:  []string{"WICKET_MACHINE_TOKEN=" + iss.token, "WICKET_SOCKET=/elsewhere.sock", "WICKET_SEAL_KEY=secret", "MY_ADMIN_TOKEN=" + adminToken},
					read: p,
					cmd:  func(c *exec.Cmd) { c.ExtraFiles = []*os.File{f} },
				}
			},
		},
		{
			name: "token on a descriptor",
			setup: func(t *testing.T, dir string) tokenRun {
				r, w, err := os.Pipe()
				if err != nil {
					t.Fatal(err)
				}
				w.WriteString(iss.token)
				w.Close()
				t.Cleanup(func() { r.Close() })
				return tokenRun{flags: []string{"--token-fd", "3"}, cmd: func(c *exec.Cmd) { c.ExtraFiles = []*os.File{r} }}
			},
		},
		{
			name: "token in a file, unlinked",
			setup: func(t *testing.T, dir string) tokenRun {
				p := filepath.Join(dir, "token")
				os.WriteFile(p, []byte(iss.token), 0o600)
				appendConfig(t, dir, fmt.Sprintf("token_file = %q\ntoken_unlink = true\n", p))
				return tokenRun{read: p}
			},
		},
		{
			name: "agent and workload share a uid",
			setup: func(t *testing.T, dir string) tokenRun {
				// Only non-dumpable keeps a same-uid workload out of the
				// agent's /proc/<pid>/environ, where the token stays.
				for _, p := range []string{dir, filepath.Join(dir, "agent.toml")} {
					if err := os.Chown(p, 4250, 4250); err != nil {
						t.Fatal(err)
					}
				}
				os.Chmod(dir, 0o755)
				bin := publicCopy(t, wicketBin)
				return tokenRun{
					env:     []string{"WICKET_MACHINE_TOKEN=" + iss.token},
					sameUID: true,
					cmd: func(c *exec.Cmd) {
						c.Path = bin
						c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 4250, Gid: 4250, Groups: []uint32{}}}
					},
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir, cfg, api := runDir(t, tt.extra+fmt.Sprintf("[issuer]\nurl = %q\n", iss.url))
			tr := tt.setup(t, dir)
			args := append([]string{"--config", cfg}, tr.flags...)
			if !tr.sameUID {
				args = append(args, "--user", "4242", "--group", "4242")
			}
			args = append(args, "--", probe, "api")
			if tr.read != "" {
				args = append(args, "read="+tr.read)
			}
			w := startRun(t, append([]string{probeEnv + "=1"}, tr.env...), tr.cmd, args...)
			read := tr.read
			if code := w.wait(t, 60*time.Second); code != 0 {
				t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, w.stdout, w.stderr)
			}
			r := w.report(t)
			body := strings.TrimPrefix(iss.token, "fm2_")
			for _, s := range []string{body, body[len(body)/2 : len(body)/2+32], adminToken} {
				if strings.Contains(w.stdout.String(), s) {
					t.Errorf("the workload found a secret (%.12s…):\n%s", s, w.stdout)
				}
				if strings.Contains(w.stderr.String(), s) {
					t.Errorf("a secret (%.12s…) in the agent's log", s)
				}
			}
			for _, kv := range r.Env {
				if strings.HasPrefix(kv, "WICKET_") && kv != "WICKET_SOCKET="+api {
					t.Errorf("workload environment has %q", kv)
				}
				if strings.HasPrefix(kv, "MY_ADMIN_TOKEN=") {
					t.Error("workload environment has the admin token")
				}
			}
			if !slices.Contains(r.Env, "WICKET_SOCKET="+api) {
				t.Errorf("WICKET_SOCKET not %s: %q", api, r.Env)
			}
			if len(r.FDs) != 0 {
				t.Errorf("workload inherited descriptors: %q", r.FDs)
			}
			if r.ParentStatus != "readable" {
				t.Errorf("/proc/<agent>/status: %s (the probe looked in the wrong place?)", r.ParentStatus)
			}
			for name, got := range map[string]string{"environ": r.ParentEnviron, "mem": r.ParentMem} {
				if !strings.Contains(got, "permission denied") && !strings.Contains(got, "operation not permitted") {
					t.Errorf("/proc/<agent>/%s: %q, want EACCES or EPERM", name, got)
				}
			}
			if read != "" {
				if got := r.Files[read]; !strings.Contains(got, "permission denied") && !strings.Contains(got, "no such file") {
					t.Errorf("reading %s: %q", read, got)
				}
			}
			if strings.Contains(tt.name, "unlinked") {
				if _, err := os.Lstat(read); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("token file still there: %v", err)
				}
			}
			var meta map[string]any
			if r.Metadata.Status != 200 || json.Unmarshal([]byte(r.Metadata.Body), &meta) != nil || meta["machine_name"] != iss.name {
				t.Errorf("metadata through WICKET_SOCKET: %+v", r.Metadata)
			}
			if r.OIDC.Status != 200 {
				t.Fatalf("OIDC token through WICKET_SOCKET: %+v", r.OIDC)
			}
			parts := strings.Split(r.OIDC.Body, ".")
			var claims struct {
				Sub string `json:"sub"`
				Aud any    `json:"aud"`
			}
			if len(parts) != 3 {
				t.Fatalf("OIDC token is not a JWT: %q", r.OIDC.Body)
			}
			payload, _ := base64.RawURLEncoding.DecodeString(parts[1])
			if err := json.Unmarshal(payload, &claims); err != nil || claims.Sub != "dev:dev-app:"+iss.name || fmt.Sprint(claims.Aud) != "sts.example.com" {
				t.Errorf("OIDC claims %s: %v", payload, err)
			}
		})
	}
}

// appendConfig adds lines to the [issuer] table written last by runDir.
func appendConfig(t *testing.T, dir, lines string) {
	t.Helper()
	p := filepath.Join(dir, "agent.toml")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, append(b, lines...), 0o600); err != nil {
		t.Fatal(err)
	}
}

// A kept token file owned by the workload's uid would be readable by it:
// refused before anything starts.
func TestAgentRun_TokenFileOwnedByWorkloadRefused(t *testing.T) {
	requireRunRoot(t)
	iss := startIssuer(t)
	dir, cfg, _ := runDir(t, "")
	p := filepath.Join(dir, "token")
	os.WriteFile(p, []byte(iss.token), 0o600)
	os.Chown(p, 4242, 4242)
	appendConfig(t, dir, fmt.Sprintf("[issuer]\nurl = %q\ntoken_file = %q\n", iss.url, p))
	w := startRun(t, nil, nil, "--config", cfg, "--user", "4242", "--group", "4242", "--", "/bin/true")
	code := w.wait(t, 60*time.Second)
	// The agent's own owner rule (root or its uid) or run mode's check
	// may refuse it first; either names the reason.
	refused := strings.Contains(w.stderr.String(), "could read the machine token") ||
		strings.Contains(w.stderr.String(), "is owned by uid 4242")
	if code != 1 || !refused {
		t.Errorf("exit %d, want 1 and a refusal:\n%s", code, w.stderr)
	}
}

// Exit status: the workload's own, 128+N when signal N killed it.
func TestAgentRun_ExitStatus(t *testing.T) {
	requireRunRoot(t)
	for _, tt := range []struct {
		script string
		want   int
	}{
		{"exit 0", 0},
		{"exit 7", 7},
		{"kill -KILL $$", 137},
	} {
		t.Run(tt.script, func(t *testing.T) {
			_, cfg, api := runDir(t, "")
			w := startRun(t, nil, nil, "--config", cfg, "--user", "4242", "--group", "4242", "--", "/bin/sh", "-c", tt.script)
			if code := w.wait(t, 60*time.Second); code != tt.want {
				t.Errorf("exit %d, want %d\n%s", code, tt.want, w.stderr)
			}
			// A clean shutdown removes the agent's sockets (S-cleanup).
			if _, err := os.Lstat(api); !errors.Is(err, os.ErrNotExist) || !strings.Contains(w.stderr.String(), "agent shutting down") {
				t.Errorf("agent did not shut down cleanly (api socket: %v):\n%s", err, w.stderr)
			}
		})
	}
}

// Signals reach the workload; SIGHUP reloads the agent (or, with
// --sighup=forward, reaches the workload); SIGTERM ends it gracefully.
func TestAgentRun_Signals(t *testing.T) {
	requireRunRoot(t)
	t.Run("forwarded, SIGHUP reloads", func(t *testing.T) {
		dir, cfg, _ := runDir(t, "")
		log, ready := filepath.Join(dir, "log"), filepath.Join(dir, "ready")
		script := fmt.Sprintf(`trap 'echo usr1 >> %[1]s' USR1; trap 'echo winch >> %[1]s' WINCH; trap 'echo hup >> %[1]s' HUP
touch %[2]s; while :; do sleep 0.05; done`, log, ready)
		w := startRun(t, nil, nil, "--config", cfg, "--user", "4242", "--group", "4242", "--", "/bin/sh", "-c", script)
		w.waitFor(t, "workload ready", exists(ready))
		logged := func(s string) func() bool {
			return func() bool { b, _ := os.ReadFile(log); return strings.Contains(string(b), s) }
		}
		w.signal(t, syscall.SIGUSR1)
		w.waitFor(t, "SIGUSR1 in the workload", logged("usr1"))
		w.signal(t, syscall.SIGWINCH)
		w.waitFor(t, "SIGWINCH in the workload", logged("winch"))
		w.signal(t, syscall.SIGHUP)
		w.waitFor(t, "config reload", func() bool { return strings.Contains(w.stderr.String(), "generation=2") })
		start := time.Now()
		w.signal(t, syscall.SIGTERM)
		if code := w.wait(t, 30*time.Second); code != 143 {
			t.Errorf("exit %d after SIGTERM, want 143\n%s", code, w.stderr)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("graceful stop took %v", d)
		}
		if logged("hup")() {
			t.Error("SIGHUP reached the workload in reload mode")
		}
	})
	t.Run("--sighup=forward", func(t *testing.T) {
		dir, cfg, _ := runDir(t, "")
		ready := filepath.Join(dir, "ready")
		script := fmt.Sprintf(`trap 'exit 42' HUP; touch %s; while :; do sleep 0.05; done`, ready)
		w := startRun(t, nil, nil, "--config", cfg, "--user", "4242", "--group", "4242", "--sighup", "forward", "--", "/bin/sh", "-c", script)
		w.waitFor(t, "workload ready", exists(ready))
		w.signal(t, syscall.SIGHUP)
		if code := w.wait(t, 30*time.Second); code != 42 {
			t.Errorf("exit %d, want 42 from the workload's HUP trap\n%s", code, w.stderr)
		}
		if strings.Contains(w.stderr.String(), "config reloaded") {
			t.Error("agent reloaded although SIGHUP is forwarded")
		}
	})
	t.Run("stop timeout escalates to SIGKILL", func(t *testing.T) {
		dir, cfg, _ := runDir(t, "")
		ready := filepath.Join(dir, "ready")
		script := fmt.Sprintf(`trap '' TERM; touch %s; while :; do sleep 0.05; done`, ready)
		w := startRun(t, nil, nil, "--config", cfg, "--user", "4242", "--group", "4242", "--stop-timeout", "1s", "--", "/bin/sh", "-c", script)
		w.waitFor(t, "workload ready", exists(ready))
		start := time.Now()
		w.signal(t, syscall.SIGTERM)
		code := w.wait(t, 30*time.Second)
		took := time.Since(start)
		if code != 137 {
			t.Errorf("exit %d, want 137\n%s", code, w.stderr)
		}
		if took < time.Second || took > 8*time.Second {
			t.Errorf("exited %v after SIGTERM, want just after the 1s stop timeout", took)
		}
	})
}

// procChildren lists the children of ppid as /proc shows them: pid → state.
func procChildren(ppid int) map[int]byte {
	out := map[int]byte{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) >= 2 {
			if p, _ := strconv.Atoi(f[1]); p == ppid {
				out[pid] = f[0][0]
			}
		}
	}
	return out
}

// As PID 1 of a PID namespace, and as a subreaper outside one, the agent
// reaps every orphan: a burst of 100 leaves no zombie.
func TestAgentRun_ReapsOrphans(t *testing.T) {
	requireRunRoot(t)
	for _, tt := range []struct {
		name  string
		flags uintptr
	}{
		{"subreaper", 0},
		{"pid 1 in a pid namespace", syscall.CLONE_NEWPID},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir, cfg, _ := runDir(t, "")
			burst := filepath.Join(dir, "burst")
			script := fmt.Sprintf(`i=0; while [ $i -lt 100 ]; do (sleep 0.5 &); i=$((i+1)); done; touch %s; exec sleep 60`, burst)
			w := startRun(t, nil, func(c *exec.Cmd) {
				c.SysProcAttr = &syscall.SysProcAttr{Cloneflags: tt.flags}
			}, "--config", cfg, "--user", "4242", "--group", "4242", "--", "/bin/sh", "-c", script)
			pid := w.cmd.Process.Pid
			if tt.flags != 0 {
				st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
				if !regexpNSpid1(string(st)) {
					t.Fatalf("wicket is not PID 1 in its namespace:\n%s", st)
				}
			}
			seen := map[int]bool{}
			w.waitFor(t, "burst of orphans", func() bool {
				for c := range procChildren(pid) {
					seen[c] = true
				}
				return exists(burst)()
			})
			var last map[int]byte
			w.waitFor(t, "every orphan reaped", func() bool {
				last = procChildren(pid)
				for c := range last {
					seen[c] = true
				}
				if len(last) != 1 {
					return false
				}
				for _, st := range last {
					return st != 'Z'
				}
				return false
			})
			if len(seen) < 10 {
				t.Errorf("saw only %d children of the agent: orphans were not reparented to it", len(seen))
			}
			w.signal(t, syscall.SIGTERM)
			if code := w.wait(t, 30*time.Second); code != 143 {
				t.Errorf("exit %d, want 143\n%s", code, w.stderr)
			}
		})
	}
}

// regexpNSpid1 reports whether a /proc/<pid>/status says the process is
// PID 1 in its innermost namespace.
func regexpNSpid1(status string) bool {
	for _, l := range strings.Split(status, "\n") {
		if v, ok := strings.CutPrefix(l, "NSpid:"); ok {
			f := strings.Fields(v)
			return len(f) > 1 && f[len(f)-1] == "1"
		}
	}
	return false
}

// A socket directory that existed before, closed to the workload, is
// named in the log: the agent only sets the group of one it creates.
func TestAgentRun_WarnsWhenSocketUnreachable(t *testing.T) {
	requireRunRoot(t)
	dir, cfg, _ := runDir(t, "")
	if err := os.Mkdir(filepath.Join(dir, "run"), 0o700); err != nil {
		t.Fatal(err)
	}
	w := startRun(t, nil, nil, "--config", cfg, "--user", "4242", "--group", "4242", "--", "/bin/true")
	if code := w.wait(t, 60*time.Second); code != 0 {
		t.Fatalf("exit %d\n%s", code, w.stderr)
	}
	if !strings.Contains(w.stderr.String(), "the workload cannot reach the API socket") || !strings.Contains(w.stderr.String(), filepath.Join(dir, "run")+" (mode 0700") {
		t.Errorf("no warning naming the closed directory:\n%s", w.stderr)
	}
	// The usual case: no warning.
	_, cfg, _ = runDir(t, "")
	w = startRun(t, nil, nil, "--config", cfg, "--user", "4242", "--group", "4242", "--", "/bin/true")
	if code := w.wait(t, 60*time.Second); code != 0 || strings.Contains(w.stderr.String(), "cannot reach") {
		t.Errorf("exit %d, unexpected warning:\n%s", code, w.stderr)
	}
}

// runDocs returns the "Running as the machine's init" section: in
// README.md once merged there, in docs/run.md until then.
func runDocs(t *testing.T) string {
	t.Helper()
	const heading = "## Running as the machine's init"
	for _, p := range []string{"../../README.md", "../../docs/run.md"} {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		s := string(b)
		if i := strings.Index(s, heading); i >= 0 {
			s = s[i+len(heading):]
			if j := strings.Index(s, "\n## "); j >= 0 {
				s = s[:j]
			}
			return s
		}
	}
	t.Fatalf("no %q section in README.md or docs/run.md", heading)
	return ""
}

// Every ENTRYPOINT in the docs parses and its flags exist, and the curl
// examples work from inside a workload against a real issuer.
func TestAgentRun_DocExamples(t *testing.T) {
	docs := runDocs(t)
	var entrypoints int
	for _, l := range strings.Split(docs, "\n") {
		i := strings.Index(l, "ENTRYPOINT [")
		if i < 0 {
			continue
		}
		j := strings.Index(l[i:], "]")
		var argv []string
		if j < 0 || json.Unmarshal([]byte(l[i+len("ENTRYPOINT "):i+j+1]), &argv) != nil || len(argv) < 4 || argv[len(argv)-1] != "--" {
			t.Errorf("ENTRYPOINT that is not a JSON argv ending in --: %s", l)
			continue
		}
		entrypoints++
		args := append(slices.Clone(argv[1:len(argv)-1]), "--help")
		if out, errOut, code := run(t, args...); code != 0 || !strings.Contains(out, "--stop-timeout") {
			t.Errorf("%v: exit %d %s", args, code, errOut)
		}
	}
	if entrypoints < 2 {
		t.Errorf("found %d ENTRYPOINT examples, want the full and the short one", entrypoints)
	}

	requireRunRoot(t)
	if _, err := exec.LookPath("curl"); err != nil {
		sockettest.Unavailable(t, "curl not installed; the curl examples need it")
	}
	var curls []string
	for _, l := range strings.Split(docs, "\n") {
		if strings.HasPrefix(l, "curl ") {
			curls = append(curls, l+" --fail --silent --show-error --max-time 20")
		}
	}
	if len(curls) < 2 {
		t.Fatalf("curl examples: %q", curls)
	}
	iss := startIssuer(t)
	_, cfg, _ := runDir(t, fmt.Sprintf("[issuer]\nurl = %q\n", iss.url))
	script := "set -e\nfor i in $(seq 100); do " + curls[0] + " >/dev/null 2>&1 && break; sleep 0.1; done\n" + strings.Join(curls, "\necho\n")
	w := startRun(t, []string{"WICKET_MACHINE_TOKEN=" + iss.token}, nil, "--config", cfg, "--user", "4242", "--group", "4242", "--", "/bin/sh", "-c", script)
	if code := w.wait(t, 60*time.Second); code != 0 {
		t.Fatalf("examples failed: exit %d\nstdout:\n%s\nstderr:\n%s", code, w.stdout, w.stderr)
	}
	if out := w.stdout.String(); !strings.Contains(out, `"machine_name":"`+iss.name+`"`) || !strings.Contains(out, "\neyJ") {
		t.Errorf("example output:\n%s", out)
	}
}

// In run mode the workload starts with its cloud SDK environment ready:
// the token file [aws] implies is already written, readable by the
// workload's group (not by others), and the role session names the machine.
func TestAgentRun_AWSTokenFileReadyForWorkload(t *testing.T) {
	requireRunRoot(t)
	iss := startIssuer(t)
	probe := probeBinary(t)
	dir, cfg, _ := runDir(t, "")
	tokFile := filepath.Join(dir, "tokens", "aws")
	appendConfig(t, dir, fmt.Sprintf("[issuer]\nurl = %q\n[aws]\nrole_arn = \"arn:aws:iam::123456789012:role/app\"\ntoken_file = %q\n", iss.url, tokFile))
	w := startRun(t, []string{probeEnv + "=1", "WICKET_MACHINE_TOKEN=" + iss.token}, nil,
		"--config", cfg, "--user", "4242", "--group", "4242", "--", probe, "read="+tokFile)
	if code := w.wait(t, 60*time.Second); code != 0 {
		t.Fatalf("exit %d\nstderr:\n%s", code, w.stderr)
	}
	r := w.report(t)
	env := map[string]string{}
	for _, kv := range r.Env {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	if env["AWS_WEB_IDENTITY_TOKEN_FILE"] != tokFile || env["AWS_ROLE_ARN"] == "" {
		t.Fatalf("AWS environment: %q", r.Env)
	}
	if s := env["AWS_ROLE_SESSION_NAME"]; s == "" || s == "wicket" {
		t.Errorf("AWS_ROLE_SESSION_NAME = %q, want the machine id", s)
	}
	if got := r.Files[tokFile]; len(strings.Split(got, ".")) != 3 {
		t.Errorf("workload reading %s at start: %q, want a JWT", tokFile, got)
	}
	fi, err := os.Stat(tokFile)
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); st.Gid != 4242 || fi.Mode().Perm()&0o007 != 0 {
		t.Errorf("token file gid %d mode %v: want the workload's group and nothing for others", st.Gid, fi.Mode().Perm())
	}
}

// invokerTerminal opens a pseudo-terminal to stand for the terminal
// `wicket agent run` is started from: the test types at master and reads
// what is displayed (out); slave becomes wicket's stdin, stdout and
// controlling terminal.
func invokerTerminal(t *testing.T) (master *os.File, slave *os.File, out *sockettest.Buffer) {
	t.Helper()
	// Non-blocking, so the master is pollable and Close ends its reader.
	mfd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		sockettest.Unavailable(t, "no pseudo-terminal: %v", err)
	}
	master = os.NewFile(uintptr(mfd), "ptmx")
	if err := unix.IoctlSetPointerInt(mfd, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(mfd, unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	sfd, err := unix.Open(fmt.Sprintf("/dev/pts/%d", n), unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	slave, out = os.NewFile(uintptr(sfd), "pts"), &sockettest.Buffer{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			n, err := master.Read(buf)
			out.Write(buf[:n])
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() {
		master.Close()
		<-done
		slave.Close()
	})
	return master, slave, out
}

// S-tty: `wicket agent run` from an interactive (root) shell: the
// workload, another uid, has neither a descriptor to the invoker's
// terminal nor that terminal as its controlling terminal, so nothing it
// pushes with TIOCSTI is left for the shell to run after wicket exits.
// Its output still reaches the terminal, whose mode is restored.
func TestAgentRun_WorkloadCannotInjectIntoInvokerTTY(t *testing.T) {
	requireRunRoot(t)
	const knob = "/proc/sys/dev/tty/legacy_tiocsti"
	tiocstiOn := true
	if b, err := os.ReadFile(knob); err == nil && strings.TrimSpace(string(b)) != "1" {
		// Make the attack real where the kernel has TIOCSTI off.
		if err := os.WriteFile(knob, []byte("1"), 0o644); err != nil {
			t.Logf("cannot enable %s (%v): checking isolation only", knob, err)
			tiocstiOn = false
		} else {
			t.Cleanup(func() { os.WriteFile(knob, b, 0o644) })
		}
	}
	_, slave, shown := invokerTerminal(t)
	invoker := ttyDevice(int(slave.Fd()))
	before, err := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	_, cfg, _ := runDir(t, "")
	const mark = "INJECTED-BY-WORKLOAD"
	w := startRun(t, []string{probeEnv + "=1"}, func(c *exec.Cmd) {
		c.Stdin, c.Stdout = slave, slave
		c.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	}, "--config", cfg, "--user", "65534", "--group", "65534", "--", probeBinary(t), "inject="+mark)
	if code := w.wait(t, 60*time.Second); code != 0 {
		t.Fatalf("exit %d\nstderr:\n%s", code, w.stderr)
	}
	// The report went through the workload's terminal to the invoker's.
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(shown.String(), `"TTY":`) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	out := shown.String()
	i := strings.Index(out, `{"Status"`)
	if i < 0 {
		t.Fatalf("the terminal never showed the workload's report: %q\nstderr:\n%s", out, w.stderr)
	}
	var r probeReport
	if err := json.NewDecoder(strings.NewReader(out[i:])).Decode(&r); err != nil || r.TTY == nil {
		t.Fatalf("report %q: %v", out[i:], err)
	}
	for fd, dev := range r.TTY.Devs {
		if dev == invoker {
			t.Errorf("workload fd %d is the invoker's terminal", fd)
		}
	}
	if r.TTY.DevTTYErr == "" && r.TTY.DevTTY == invoker {
		t.Errorf("the invoker's terminal is the workload's controlling terminal")
	}
	if tiocstiOn && r.TTY.InjectStdin != "ok" {
		t.Errorf("TIOCSTI on the workload's own terminal: %s, want ok (else this test proves nothing)", r.TTY.InjectStdin)
	}
	after, err := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	if *after != *before {
		t.Errorf("terminal mode not restored:\nbefore %+v\nafter  %+v", before, after)
	}
	// What the invoker's shell would read next: everything queued, line
	// complete or not.
	peek := *after
	peek.Lflag &^= unix.ICANON | unix.ECHO
	peek.Cc[unix.VMIN], peek.Cc[unix.VTIME] = 0, 0
	if err := unix.IoctlSetTermios(int(slave.Fd()), unix.TCSETS, &peek); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, _ := unix.Read(int(slave.Fd()), buf)
	if n > 0 && strings.Contains(string(buf[:n]), mark) {
		t.Errorf("the workload queued input for the invoker's shell (TIOCSTI on fd 0: %s, on /dev/tty: %s): %q", r.TTY.InjectStdin, r.TTY.InjectDevTTY, buf[:n])
	}
}
