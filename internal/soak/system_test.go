package soak

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/wicket-sh/wicket/internal/wait"
)

// tailBuffer keeps the last max bytes a child wrote to stderr: enough to
// explain a failure, bounded however much a hostile test makes it log.
type tailBuffer struct {
	mu  sync.Mutex
	b   []byte
	max int
}

func newTail() *tailBuffer { return &tailBuffer{max: 256 << 10} }

func (l *tailBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b = append(l.b, p...)
	if over := len(l.b) - l.max; over > 0 {
		l.b = append(l.b[:0], l.b[over:]...)
	}
	return len(p), nil
}

func (l *tailBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.b)
}

// shortDir returns a private directory whose paths fit in a socket address.
func shortDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "soak")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func dialable(network, addr string) bool {
	c, err := net.DialTimeout(network, addr, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// proc is one child process of the suite.
type proc struct {
	cmd    *exec.Cmd
	logs   *tailBuffer
	exited chan struct{}
	err    error // of Wait, once exited is closed
}

func startProc(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(wicketBin, args...), logs: newTail(), exited: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stderr = p.logs
	p.cmd.Stdout = p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start wicket %s: %v", args[0], err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() { p.stop() })
	return p
}

// alive reports whether the process has not exited.
func (p *proc) alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// kill9 sends SIGKILL and waits for the process to be gone.
func (p *proc) kill9(t *testing.T) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		t.Fatalf("pid %d still there 10s after SIGKILL", p.cmd.Process.Pid)
	}
}

// freeze sends SIGSTOP and waits until every thread of the process is
// stopped. kill(2) returns once the signal is queued: the thread that
// takes it stops the others when it next runs, and until then they keep
// running, for milliseconds on a loaded machine, answering requests.
func (p *proc) freeze(t *testing.T) {
	t.Helper()
	pid := p.cmd.Process.Pid
	p.cmd.Process.Signal(syscall.SIGSTOP)
	var running []string
	if !wait.Until(10*time.Second, func() bool {
		running = runningThreads(pid)
		return len(running) == 0
	}) {
		t.Fatalf("pid %d: threads %v not stopped 10s after SIGSTOP", pid, running)
	}
}

// runningThreads lists the threads of pid not in the stopped state, each
// as "tid:state"; one whose stat cannot be read counts as running.
func runningThreads(pid int) []string {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	tids, err := os.ReadDir(dir)
	if err != nil {
		return []string{err.Error()}
	}
	var out []string
	for _, tid := range tids {
		b, err := os.ReadFile(dir + "/" + tid.Name() + "/stat")
		if err != nil {
			out = append(out, tid.Name()+":"+err.Error())
			continue
		}
		// The state follows the command name, which is in parentheses and
		// may hold any byte: read after the last ')'.
		state := byte('?')
		if i := bytes.LastIndexByte(b, ')'); i >= 0 && i+2 < len(b) {
			state = b[i+2]
		}
		if state != 'T' {
			out = append(out, tid.Name()+":"+string(state))
		}
	}
	return out
}

// stop asks for a clean shutdown, then kills.
func (p *proc) stop() {
	if !p.alive() {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(5 * time.Second):
		p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.exited
	}
}

// rssKiB reads the process's resident set size from /proc.
func (p *proc) rssKiB(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		t.Fatalf("read /proc status: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("VmRSS line %q: %v", line, err)
			}
			return n
		}
	}
	t.Fatal("no VmRSS in /proc status")
	return 0
}

// rssBoundKiB is the generous memory bound every test holds the agent to:
// The performance targets (docs/performance.md) are far lower, but timing and memory figures belong to
// the benchmark; this only catches a leak or an unbounded buffer.
const rssBoundKiB = 200 << 10

func checkRSS(t *testing.T, p *proc, what string) int64 {
	t.Helper()
	rss := p.rssKiB(t)
	t.Logf("agent RSS %s: %d KiB", what, rss)
	if rss > rssBoundKiB {
		t.Errorf("agent RSS %s: %d KiB, bound %d KiB", what, rss, rssBoundKiB)
	}
	return rss
}

// issuer is a real `wicket issuer` process with its state, listening on a
// fixed loopback address so it can be restarted in place.
type issuer struct {
	*proc
	dir, addr, sock string
	flags           []string
}

// issuerES256 makes the issuer sign with ES256: cheaper than RS256, for the
// tests that mint thousands of tokens on two cores.
const issuerES256 = "[oidc]\nalg = \"ES256\"\n"

// startIssuer runs `wicket issuer init` then `wicket issuer`, and waits
// until both its admin socket and its HTTP listener answer.
func startIssuer(t *testing.T, dir, extraConfig string) *issuer {
	t.Helper()
	is := &issuer{dir: dir, addr: freeAddr(t), sock: filepath.Join(dir, "issuer.sock")}
	is.flags = []string{"--state-dir", filepath.Join(dir, "state"), "--admin-socket", is.sock,
		"--listen", is.addr, "--public-url", "http://" + is.addr, "--log-level", "warn"}
	if extraConfig != "" {
		cfg := filepath.Join(dir, "issuer.toml")
		if err := os.WriteFile(cfg, []byte(extraConfig), 0o600); err != nil {
			t.Fatal(err)
		}
		is.flags = append(is.flags, "--config", cfg)
	}
	if out, err := exec.Command(wicketBin, append([]string{"issuer", "init"}, is.flags...)...).CombinedOutput(); err != nil {
		t.Fatalf("issuer init: %v\n%s", err, out)
	}
	is.start(t)
	return is
}

// start runs the issuer on its existing state and address.
func (is *issuer) start(t *testing.T) {
	t.Helper()
	is.proc = startProc(t, nil, append([]string{"issuer"}, is.flags...)...)
	ok := wait.Until(15*time.Second, func() bool {
		return is.alive() && dialable("unix", is.sock) && dialable("tcp", is.addr)
	})
	if !ok {
		t.Fatalf("issuer not up:\n%s", is.logs)
	}
}

// cli runs `wicket issuer SUBCOMMAND … --socket S` and returns stdout.
func (is *issuer) cli(t *testing.T, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, wicketBin, append(append([]string{"issuer"}, args...), "--socket", is.sock)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("wicket issuer %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return out
}

// addMachine registers dev/dev-app/NAME and returns its machine token.
func (is *issuer) addMachine(t *testing.T, name string) string {
	t.Helper()
	out := is.cli(t, "machine", "add", "--org", "dev", "--app", "dev-app", "--name", name,
		"--region", "local", "--tag", "env=soak")
	var added struct {
		Token struct {
			Token string `json:"token"`
		} `json:"token"`
	}
	if err := json.Unmarshal(out, &added); err != nil || added.Token.Token == "" {
		t.Fatalf("machine add output: %v\n%s", err, out)
	}
	return added.Token.Token
}

// agentConfig is the part of the agent's TOML a test varies; zero values
// take the suite's defaults below.
type agentConfig struct {
	MaxConns int
	// MaxConnsPerUID defaults to MaxConns: the suite's load all comes
	// from one uid, so the per-uid cap would otherwise be what it measures.
	MaxConnsPerUID    int
	ReadHeaderTimeout string
	BodyTimeout       string
	MaxHeaderBytes    int
	MaxBodyBytes      int
	RequestTimeout    string // issuer.request_timeout
	TokenRate         float64
	TokenBurst        int
	MaxAudiences      int
	// Extra is appended verbatim: policy rules, proxy routes, token files.
	Extra string
}

func (c agentConfig) render(api, admin, issuerURL string) string {
	if c.MaxConns == 0 {
		c.MaxConns = 1024
	}
	if c.MaxConnsPerUID == 0 {
		c.MaxConnsPerUID = c.MaxConns
	}
	if c.ReadHeaderTimeout == "" {
		c.ReadHeaderTimeout = "5s"
	}
	if c.BodyTimeout == "" {
		c.BodyTimeout = "10s"
	}
	if c.MaxHeaderBytes == 0 {
		c.MaxHeaderBytes = 16384
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = 65536
	}
	if c.RequestTimeout == "" {
		c.RequestTimeout = "10s"
	}
	if c.TokenRate == 0 {
		c.TokenRate = 1e6
	}
	if c.TokenBurst == 0 {
		c.TokenBurst = 1e6
	}
	if c.MaxAudiences == 0 {
		c.MaxAudiences = 1000
	}
	var b strings.Builder
	fmt.Fprintf(&b, "[api]\nsocket_path = %q\nmax_conns = %d\nmax_conns_per_uid = %d\n", api, c.MaxConns, c.MaxConnsPerUID)
	fmt.Fprintf(&b, "[admin]\nsocket_path = %q\n", admin)
	fmt.Fprintf(&b, "[http]\nread_header_timeout = %q\nmax_header_bytes = %d\n", c.ReadHeaderTimeout, c.MaxHeaderBytes)
	fmt.Fprintf(&b, "[issuer]\nurl = %q\nrequest_timeout = %q\n", issuerURL, c.RequestTimeout)
	fmt.Fprintf(&b, "[tokens]\nmax_audiences = %d\n", c.MaxAudiences)
	fmt.Fprintf(&b, "[limits]\nmax_body_bytes = %d\nbody_timeout = %q\ntoken_rate = %g\ntoken_burst = %d\n",
		c.MaxBodyBytes, c.BodyTimeout, c.TokenRate, c.TokenBurst)
	// warn: the suite's load would otherwise log a line per token request.
	b.WriteString("[log]\nlevel = \"warn\"\n")
	b.WriteString(c.Extra)
	return b.String()
}

// agent is a real `wicket agent` process.
type agent struct {
	*proc
	dir, cfgPath, api, admin, token string
}

// startAgent writes the config and runs `wicket agent` with the machine
// token in WICKET_MACHINE_TOKEN, then waits until metadata is served.
func startAgent(t *testing.T, dir string, is *issuer, token string, c agentConfig) *agent {
	t.Helper()
	a := &agent{dir: dir, cfgPath: filepath.Join(dir, "agent.toml"), token: token,
		api: filepath.Join(dir, "run", "api.sock"), admin: filepath.Join(dir, "run", "admin.sock")}
	a.writeConfig(t, c, is)
	a.start(t)
	return a
}

func (a *agent) writeConfig(t *testing.T, c agentConfig, is *issuer) {
	t.Helper()
	body := c.render(a.api, a.admin, "http://"+is.addr)
	// Written whole, then renamed into place: a reload never reads half a file.
	tmp := a.cfgPath + ".new"
	if err := os.WriteFile(tmp, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, a.cfgPath); err != nil {
		t.Fatal(err)
	}
}

// start runs the agent on its config and waits for metadata to be served.
func (a *agent) start(t *testing.T) {
	t.Helper()
	a.proc = startProc(t, []string{"WICKET_MACHINE_TOKEN=" + a.token}, "agent", "--config", a.cfgPath)
	c := newClient(a.api, 1)
	defer c.close()
	ok := wait.Until(15*time.Second, func() bool {
		if !a.alive() {
			return false
		}
		r := c.do("GET", "/v1/metadata", "", nil)
		return r.err == nil && r.status == 200
	})
	if !ok {
		t.Fatalf("agent never served metadata:\n%s", a.logs)
	}
}

// status is the part of the admin /v1/status reply the suite reads.
type status struct {
	ConfigGeneration uint64 `json:"config_generation"`
	Sockets          map[string]struct {
		Open     int64  `json:"open"`
		Accepted uint64 `json:"accepted"`
		Rejected uint64 `json:"rejected_over_cap"`
		Max      int64  `json:"max"`
	} `json:"sockets"`
	Counters map[string]uint64 `json:"counters"`
	Upstream struct {
		CachedAudiences int `json:"cached_audiences"`
		Metadata        struct {
			Failing bool   `json:"failing"`
			ETag    string `json:"etag"`
			Waiters int64  `json:"waiters"`
		} `json:"metadata"`
	} `json:"upstream"`
}

func (a *agent) status(t *testing.T) status {
	t.Helper()
	c := newClient(a.admin, 1)
	defer c.close()
	r := c.do("GET", "/v1/status", "", nil)
	if r.err != nil || r.status != 200 {
		t.Fatalf("admin status: %d %v %s", r.status, r.err, r.body)
	}
	var s status
	if err := json.Unmarshal(r.body, &s); err != nil {
		t.Fatalf("admin status: %v\n%s", err, r.body)
	}
	return s
}

// metric returns the value of one sample line of the admin /metrics
// exposition, e.g. `wicket_connections_rejected_total{socket="api"}`.
func (a *agent) metric(t *testing.T, series string) float64 {
	t.Helper()
	c := newClient(a.admin, 1)
	defer c.close()
	r := c.do("GET", "/metrics", "", nil)
	if r.err != nil || r.status != 200 {
		t.Fatalf("admin metrics: %d %v", r.status, r.err)
	}
	for _, line := range strings.Split(string(r.body), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("metric line %q: %v", line, err)
			}
			return f
		}
	}
	t.Fatalf("no %s in /metrics:\n%s", series, r.body)
	return 0
}

// checkAlive fails the test if the agent process has exited.
func (a *agent) checkAlive(t *testing.T) {
	t.Helper()
	if !a.alive() {
		t.Fatalf("agent exited (%v):\n%s", a.err, a.logs)
	}
	if strings.Contains(a.logs.String(), "panic") {
		t.Errorf("agent log mentions a panic:\n%s", a.logs)
	}
}

// healthy checks that the agent is alive and answers health on the API
// socket.
func (a *agent) healthy(t *testing.T) {
	t.Helper()
	a.checkAlive(t)
	c := newClient(a.api, 1)
	defer c.close()
	if r := c.do("GET", "/v1/health", "", nil); r.err != nil || r.status != 200 || string(r.body) != "{\"status\":\"ok\"}\n" {
		t.Fatalf("health: %d %v %q", r.status, r.err, r.body)
	}
}

// system is one issuer with one registered machine and its agent.
type system struct {
	issuer *issuer
	agent  *agent
}

func startSystem(t *testing.T, c agentConfig, issuerConfig string) *system {
	t.Helper()
	dir := shortDir(t)
	is := startIssuer(t, dir, issuerConfig)
	tok := is.addMachine(t, "soak-1")
	return &system{issuer: is, agent: startAgent(t, dir, is, tok, c)}
}
