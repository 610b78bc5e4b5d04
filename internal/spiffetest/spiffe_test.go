package spiffetest

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/wicket-sh/wicket/internal/agent"
	"github.com/wicket-sh/wicket/internal/e2e"
	"github.com/wicket-sh/wicket/internal/sockettest"
	"github.com/wicket-sh/wicket/internal/wait"
)

const (
	td        = "dev.wicket.internal"
	machineID = "spiffe://" + td + "/app/web/machine/m1"
	frontend  = "spiffe://" + td + "/app/web/workload/frontend"
	backend   = "spiffe://" + td + "/app/web/workload/backend"

	uidFrontend, uidBackend, uidNobody = 65534, 65533, 65532
	gidWorkloads                       = 65534
)

// clock is the agent's clock, moved by tests.
type clock struct{ off atomic.Int64 }

func (c *clock) Now() time.Time          { return time.Now().Add(time.Duration(c.off.Load())) }
func (c *clock) Advance(d time.Duration) { c.off.Add(int64(d)) }

type env struct {
	iss   *e2e.Issuer
	ag    *e2e.Agent
	sock  string
	clock *clock
}

// setup runs an issuer and an agent whose Workload API gives root the
// machine's ID, uid 65534 "frontend" and uid 65533 "backend"; uid 65532
// has no rule. The socket is in gid 65534.
func setup(t testing.TB) *env {
	t.Helper()
	return setupWith(t, e2e.StartIssuer(t))
}

// setupWith is setup with an issuer of the caller's (federation, TLS).
func setupWith(t testing.TB, iss *e2e.Issuer) *env {
	t.Helper()
	tok := iss.MachineToken(t, "dev", "web", "m1")
	dir := e2e.ShortDir(t)
	// Other uids must reach the socket's directory (unixsock makes it
	// 0750 in the socket's group); its parent only needs to be traversable.
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "spiffe", "spiffe.sock")
	clk := &clock{}
	extra := fmt.Sprintf(`
[spiffe]
enabled = true
socket_path = %q
socket_group = "%d"

[[policy]]
name = "root"
uids = [0]
allow = ["*"]

[[policy]]
name = "frontend"
uids = [%d]
allow = ["POST /v1/svids/*"]
svid_name = "frontend"

[[policy]]
name = "backend"
uids = [%d]
allow = ["POST /v1/svids/*"]
svid_name = "backend"
`, sock, gidWorkloads, uidFrontend, uidBackend)
	ag := e2e.StartAgentWith(t, iss.URL, tok, extra, func(o *agent.Options) { o.Now = clk.Now })
	return &env{iss: iss, ag: ag, sock: sock, clock: clk}
}

func (e *env) client(t *testing.T) *workloadapi.Client {
	t.Helper()
	c, err := workloadapi.New(t.Context(), clientOpt(e.sock))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// go-spiffe's Workload API client gets the machine's X.509-SVID and the
// trust domain's bundle, and the SVID verifies against the bundle.
func TestGoSPIFFE_X509SVIDAndBundles(t *testing.T) {
	e := setup(t)
	c := e.client(t)
	ctx := ctxT(t)
	svid, err := c.FetchX509SVID(ctx)
	if err != nil {
		t.Fatalf("FetchX509SVID: %v", err)
	}
	if svid.ID.String() != machineID {
		t.Fatalf("svid for %s, want %s", svid.ID, machineID)
	}
	bundles, err := c.FetchX509Bundles(ctx)
	if err != nil {
		t.Fatalf("FetchX509Bundles: %v", err)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, bundles); err != nil {
		t.Fatalf("svid does not verify against the bundles: %v", err)
	}
	xc, err := c.FetchX509Context(ctx)
	if err != nil || len(xc.SVIDs) != 1 || xc.Bundles.Len() != 1 {
		t.Fatalf("FetchX509Context = %+v, %v", xc, err)
	}
	if d := time.Until(svid.Certificates[0].NotAfter); d < 50*time.Minute || d > time.Hour {
		t.Errorf("svid lives %s, want about the default 1h", d)
	}
	// A second client gets the cached SVID, not a new one.
	again, err := e.client(t).FetchX509SVID(ctx)
	if err != nil || again.Certificates[0].SerialNumber.Cmp(svid.Certificates[0].SerialNumber) != 0 {
		t.Errorf("second fetch: %v (serial changed: not served from the cache)", err)
	}
	if logs := e.ag.Logs(); !strings.Contains(logs, `msg="svid served"`) || !strings.Contains(logs, "kind=x509 spiffe_id="+machineID) {
		t.Errorf("no audit line for the hand-out:\n%s", e.ag.Logs())
	}
}

// go-spiffe fetches a JWT-SVID and validates it through the agent and
// against the JWT bundle it fetched.
func TestGoSPIFFE_JWTSVIDFetchAndValidate(t *testing.T) {
	e := setup(t)
	c := e.client(t)
	ctx := ctxT(t)
	sv, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "db", ExtraAudiences: []string{"cache"}})
	if err != nil {
		t.Fatalf("FetchJWTSVID: %v", err)
	}
	if sv.ID.String() != machineID || !slicesContain(sv.Audience, "db") {
		t.Fatalf("jwt svid %s for %v", sv.ID, sv.Audience)
	}
	got, err := c.ValidateJWTSVID(ctx, sv.Marshal(), "db")
	if err != nil || got.ID.String() != machineID {
		t.Fatalf("ValidateJWTSVID = %v, %v", got, err)
	}
	if _, err := c.ValidateJWTSVID(ctx, sv.Marshal(), "other"); status.Code(err) != codes.InvalidArgument {
		t.Errorf("validated for another audience: %v", err)
	}
	bundles, err := c.FetchJWTBundles(ctx)
	if err != nil {
		t.Fatalf("FetchJWTBundles: %v", err)
	}
	if _, err := jwtsvid.ParseAndValidate(sv.Marshal(), bundles, []string{"cache"}); err != nil {
		t.Errorf("jwt svid does not validate against the fetched bundle: %v", err)
	}
	// Asking for another identity than the caller's own is refused.
	if _, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "db", Subject: spiffeid.RequireFromString(frontend)}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("jwt svid for another identity: %v, want PermissionDenied", err)
	}
}

// The first hand-out of each kind of SVID to a process is audited, with
// the X.509-SVID's end; repeats (cached, other audiences, new clients of
// the same process) are not logged again.
func TestWorkloadAPI_AuditFirstHandOutPerProcess(t *testing.T) {
	e := setup(t)
	ctx := ctxT(t)
	for i := range 3 {
		c := e.client(t)
		if _, err := c.FetchX509SVID(ctx); err != nil {
			t.Fatalf("FetchX509SVID %d: %v", i, err)
		}
		for _, aud := range []string{"db", "cache"} {
			if _, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: aud}); err != nil {
				t.Fatalf("FetchJWTSVID %d %s: %v", i, aud, err)
			}
		}
	}
	var x509Lines, jwtLines []string
	for _, line := range strings.Split(e.ag.Logs(), "\n") {
		if !strings.Contains(line, `msg="svid served"`) || !strings.Contains(line, fmt.Sprintf("peer_pid=%d", os.Getpid())) {
			continue
		}
		switch {
		case strings.Contains(line, "kind=x509 spiffe_id="+machineID):
			x509Lines = append(x509Lines, line)
		case strings.Contains(line, "kind=jwt spiffe_id="+machineID):
			jwtLines = append(jwtLines, line)
		}
	}
	if len(x509Lines) != 1 || len(jwtLines) != 1 {
		t.Fatalf("audit lines for this process: %d x509, %d jwt, want 1 each:\n%s", len(x509Lines), len(jwtLines), e.ag.Logs())
	}
	if !strings.Contains(x509Lines[0], "expires_at=20") || !strings.Contains(x509Lines[0], fmt.Sprintf("peer_uid=%d", os.Getuid())) {
		t.Errorf("x509 audit line without its end or peer: %s", x509Lines[0])
	}
}

func slicesContain(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

type x509Watcher struct {
	mu      sync.Mutex
	serials []string
}

func (w *x509Watcher) OnX509ContextUpdate(c *workloadapi.X509Context) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.serials = append(w.serials, c.DefaultSVID().Certificates[0].SerialNumber.String())
}
func (w *x509Watcher) OnX509ContextWatchError(error) {}
func (w *x509Watcher) seen() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.serials...)
}

// The agent renews an X.509-SVID at half-life on its own clock and pushes
// the new one on the open stream.
func TestGoSPIFFE_RotationArrivesOnStream(t *testing.T) {
	e := setup(t)
	c := e.client(t)
	w := &x509Watcher{}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- c.WatchX509Context(ctx, w) }()
	defer func() { cancel(); <-done }()
	wait.Eventually(t, 30*time.Second, func() bool { return len(w.seen()) == 1 }, "first svid on the stream")
	// Half-life of a 1h SVID, jittered by up to 6 min: 40 min is past it.
	e.clock.Advance(40 * time.Minute)
	wait.Eventually(t, 30*time.Second, func() bool { return len(w.seen()) >= 2 }, "renewed svid pushed on the stream")
	s := w.seen()
	if s[0] == s[1] {
		t.Errorf("the stream repeated the same svid %s", s[0])
	}
	if !strings.Contains(e.iss.Logs(), "x509 svid issued") {
		t.Error("no issuer audit line")
	}
}

// Two workloads of the same machine complete mTLS using only the Workload
// API, each authorizing the other's SPIFFE ID; a third identity is refused.
func TestGoSPIFFE_MTLSBetweenWorkloads(t *testing.T) {
	e := setup(t)
	srv := serveAs(t, uidFrontend, gidWorkloads, e.sock, backend)
	res := runAs(t, uidBackend, gidWorkloads, helperSpec{Mode: "dial", Socket: e.sock, Addr: srv.addr, Authorize: frontend})
	if res["reply"] != "hello "+backend {
		t.Fatalf("backend → frontend: %v", res)
	}
	// The machine's own identity (root here) is not the one the server
	// authorizes: the handshake fails.
	third := dial(ctxT(t), e.sock, srv.addr, frontend)
	if third["reply"] != "" {
		t.Fatalf("a third identity was served: %v", third)
	}
	// And a client that expects another server identity refuses this one.
	wrong := runAs(t, uidBackend, gidWorkloads, helperSpec{Mode: "dial", Socket: e.sock, Addr: srv.addr, Authorize: machineID})
	if wrong["reply"] != "" || !strings.Contains(wrong["err"], "unexpected ID") {
		t.Fatalf("client authorizing another server id: %v", wrong)
	}
}

// A caller the policy gives no identity gets PermissionDenied, and the
// denial is logged and counted.
func TestWorkloadAPI_PolicyDeniedPermissionDenied(t *testing.T) {
	e := setup(t)
	res := runAs(t, uidNobody, gidWorkloads, helperSpec{Mode: "fetch", Socket: e.sock})
	if res["code"] != codes.PermissionDenied.String() {
		t.Fatalf("uid %d without a rule: %v, want PermissionDenied", uidNobody, res)
	}
	if res := runAs(t, uidFrontend, gidWorkloads, helperSpec{Mode: "fetch", Socket: e.sock}); res["id"] != frontend {
		t.Fatalf("uid %d: %v, want %s", uidFrontend, res, frontend)
	}
	if logs := e.ag.Logs(); !strings.Contains(logs, "socket=spiffe") || !strings.Contains(logs, fmt.Sprintf("peer_uid=%d", uidNobody)) {
		t.Errorf("denial not logged:\n%s", logs)
	}
}

// A call without the workload.spiffe.io security header is refused, with
// InvalidArgument as the spec says.
func TestWorkloadAPI_SecurityHeaderRequired(t *testing.T) {
	e := setup(t)
	conn, err := grpc.NewClient("unix://"+e.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := workload.NewSpiffeWorkloadAPIClient(conn)
	ctx := ctxT(t)
	if _, err := c.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: []string{"db"}}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("FetchJWTSVID without the header: %v, want InvalidArgument", err)
	}
	st, err := c.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	if err == nil {
		_, err = st.Recv()
	}
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("FetchX509SVID without the header: %v, want InvalidArgument", err)
	}
	bad := metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "yes")
	if _, err := c.FetchJWTSVID(bad, &workload.JWTSVIDRequest{Audience: []string{"db"}}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("header with another value: %v, want InvalidArgument", err)
	}
	good := metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true")
	if _, err := c.FetchJWTSVID(good, &workload.JWTSVIDRequest{Audience: []string{"db"}}); err != nil {
		t.Errorf("with the header: %v", err)
	}
}

// The Workload API socket is made by unixsock like every socket: its mode
// and group as configured, and a peer uid's connections capped.
func TestWorkloadAPI_SocketRules(t *testing.T) {
	e := setup(t)
	fi, err := os.Lstat(e.sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o660 {
		t.Errorf("socket mode %v, want a 0660 socket", fi.Mode())
	}
	st := sockettest.Do(e.ag.AdminSocket, "GET", "/v1/status", "", nil)
	if st.Status != 200 || !strings.Contains(st.Body, `"spiffe"`) || !strings.Contains(st.Body, e.sock) {
		t.Errorf("status does not show the spiffe socket: %d %s", st.Status, st.Body)
	}
	// Per-uid cap: 1024/4 = 256 connections of one uid at most; hold them
	// and the next one is closed at once (and counted).
	held := sockettest.HoldAs(t, uidNobody, gidWorkloads, e.sock, 260, "")
	defer held.Release()
	wait.Eventually(t, 30*time.Second, func() bool {
		m := sockettest.Do(e.ag.AdminSocket, "GET", "/metrics", "", nil)
		return strings.Contains(m.Body, `wicket_connections_rejected_per_uid_total{socket="spiffe"} 4`)
	}, "4 connections over the per-uid cap rejected on the spiffe socket")
}

// Private keys never appear in logs, status, metrics, errors or files the
// workload could not already read.
func TestWorkloadAPI_PrivateKeysNeverLeak(t *testing.T) {
	e := setup(t)
	c := e.client(t)
	ctx := ctxT(t)
	svid, err := c.FetchX509SVID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "db"}); err != nil {
		t.Fatal(err)
	}
	// An error path too: a bad validation request.
	c.ValidateJWTSVID(ctx, "not.a.jwt", "db")
	der, err := x509.MarshalPKCS8PrivateKey(svid.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	pemKey := string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	needles := map[string]string{
		"base64 der": base64.StdEncoding.EncodeToString(der)[:32],
		"pem body":   strings.Split(pemKey, "\n")[1][:32],
		"hex der":    hex.EncodeToString(der)[:32],
	}
	var hay strings.Builder
	hay.WriteString(e.ag.Logs())
	hay.WriteString(e.iss.Logs())
	for _, p := range []string{"/v1/status", "/metrics"} {
		hay.WriteString(sockettest.Do(e.ag.AdminSocket, "GET", p, "", nil).Body)
	}
	filepath.WalkDir(e.ag.Dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			b, _ := os.ReadFile(p)
			hay.Write(b)
		}
		return nil
	})
	filepath.WalkDir(filepath.Dir(e.sock), func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			b, _ := os.ReadFile(p)
			hay.Write(b)
		}
		return nil
	})
	for name, n := range needles {
		if strings.Contains(hay.String(), n) {
			t.Errorf("the private key (%s) appears in logs, status, metrics or files", name)
		}
	}
}
