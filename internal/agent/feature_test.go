package agent

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wicket-sh/wicket/internal/agent/agenttest"
	"github.com/wicket-sh/wicket/internal/agent/builtin"
	"github.com/wicket-sh/wicket/internal/agent/feature"
	"github.com/wicket-sh/wicket/internal/agent/feature/metadata"
	"github.com/wicket-sh/wicket/internal/agent/feature/proxyroutes"
	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/metrics"
	"github.com/wicket-sh/wicket/internal/unixsock"
)

// probeModule is a feature with a route, a worker, a counter and a status
// field: what the core must wire in for any registered feature.
type probeModule struct{ inst *probe }

type probe struct {
	calls, stopped atomic.Int64
}

func (probeModule) Key() string                         { return "probe" }
func (probeModule) New() any                            { return &struct{}{} }
func (probeModule) Validate(any, *config.Agent) []error { return nil }
func (m probeModule) Build(feature.RunHost) (feature.Instance, error) {
	return m.inst, nil
}

func (p *probe) Routes(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/tokens/probe", func(w http.ResponseWriter, r *http.Request) {
		p.calls.Add(1)
		w.Write([]byte("probed"))
	})
}
func (p *probe) Start() {}
func (p *probe) Stop()  { p.stopped.Add(1) }
func (p *probe) Counters() metrics.CounterSet {
	return metrics.CounterSet{{Key: "probe_calls", Name: "wicket_probe_calls_total", Help: "Probe calls.", Value: func() uint64 { return uint64(p.calls.Load()) }}}
}
func (p *probe) Status() map[string]any { return map[string]any{"probe": "on"} }

// countingBody records whether a handler (or anything before it) read the
// request body.
type countingBody struct{ read atomic.Int64 }

func (b *countingBody) Read(p []byte) (int, error) {
	b.read.Add(int64(len(p)))
	return 0, io.EOF
}
func (b *countingBody) Close() error { return nil }

// TestFeatureRoutes_BehindPolicy: a registered feature's route is served
// through the core's guard: the policy refuses a caller it does not admit
// before the feature's handler runs and before a byte of the body is
// read; an admitted caller reaches the handler. The feature's counters
// and status join the agent's.
func TestFeatureRoutes_BehindPolicy(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "agent.toml")
	os.WriteFile(cfg, []byte("[api]\nsocket_path = \""+dir+"/api.sock\"\n[admin]\nsocket_path = \""+dir+"/admin.sock\"\n"+
		"[[policy]]\nuids = [1000]\nallow = [\"POST /v1/tokens/probe\"]\n"), 0o600)
	p := &probe{}
	a, err := New(Options{ConfigPath: cfg, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Features: append(builtin.Features(), probeModule{p})})
	if err != nil {
		t.Fatal(err)
	}
	h := a.apiHandler()
	call := func(uid uint32) (*httptest.ResponseRecorder, *countingBody) {
		body := &countingBody{}
		r := httptest.NewRequest("POST", "/v1/tokens/probe", strings.NewReader("x"))
		r.Body = body
		r = r.WithContext(unixsock.WithPeer(r.Context(), unixsock.Peer{UID: uid, GID: uid, PID: 1}))
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w, body
	}
	w, body := call(1001)
	if w.Code != 403 || p.calls.Load() != 0 || body.read.Load() != 0 {
		t.Errorf("refused caller: %d, handler calls %d, body bytes read %d", w.Code, p.calls.Load(), body.read.Load())
	}
	w, _ = call(1000)
	if w.Code != 200 || w.Body.String() != "probed" || p.calls.Load() != 1 {
		t.Errorf("admitted caller: %d %q, handler calls %d", w.Code, w.Body.String(), p.calls.Load())
	}
	if got := counterValue(a, "probe_calls"); got != 1 {
		t.Errorf("probe_calls = %d", got)
	}
	if st := a.upstreamStatus(); st["probe"] != "on" {
		t.Errorf("status %v lacks the feature's field", st)
	}
	a.stopBackground()
	if p.stopped.Load() != 1 {
		t.Errorf("worker stopped %d times", p.stopped.Load())
	}
}

// fallbackModule is a feature serving what no route matched, as the
// proxy does.
type fallbackModule struct {
	key   string
	calls *atomic.Int64
}

func (m fallbackModule) Key() string                       { return m.key }
func (fallbackModule) New() any                            { return &struct{}{} }
func (fallbackModule) Validate(any, *config.Agent) []error { return nil }
func (m fallbackModule) Build(feature.RunHost) (feature.Instance, error) {
	return m, nil
}
func (m fallbackModule) ServeFallback(w http.ResponseWriter, r *http.Request) {
	m.calls.Add(1)
	w.Write([]byte("fallback"))
}

// withoutKey is the builtin features without the one under key.
func withoutKey(key string) []feature.Module {
	var out []feature.Module
	for _, m := range builtin.Features() {
		if m.Key() != key {
			out = append(out, m)
		}
	}
	return out
}

// TestFeatureFallback_BehindPolicy: the feature that serves unrouted
// requests (the proxy's place) gets them only through the core's guard: a
// caller the policy refuses never reaches it, and the guest API's own
// paths never do, whoever asks; an admitted caller does. A second such
// feature is refused at New.
func TestFeatureFallback_BehindPolicy(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "agent.toml")
	os.WriteFile(cfg, []byte("[api]\nsocket_path = \""+dir+"/api.sock\"\n[admin]\nsocket_path = \""+dir+"/admin.sock\"\n"+
		"[[policy]]\nuids = [1000]\nallow = [\"GET /elsewhere\", \"GET /v1/metadata/nope/x\"]\n"), 0o600)
	var calls atomic.Int64
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	a, err := New(Options{ConfigPath: cfg, Logger: log, Features: append(withoutKey(proxyroutes.Key), fallbackModule{"probe", &calls})})
	if err != nil {
		t.Fatal(err)
	}
	h := a.apiHandler()
	call := func(uid uint32, path string) *httptest.ResponseRecorder {
		r := httptest.NewRequest("GET", path, nil)
		r = r.WithContext(unixsock.WithPeer(r.Context(), unixsock.Peer{UID: uid, GID: uid, PID: 1}))
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	if w := call(1001, "/elsewhere"); w.Code != 403 || calls.Load() != 0 {
		t.Errorf("refused caller: %d, fallback calls %d", w.Code, calls.Load())
	}
	if w := call(1000, "/v1/metadata/nope/x"); w.Code != 404 || calls.Load() != 0 {
		t.Errorf("reserved path: %d, fallback calls %d", w.Code, calls.Load())
	}
	if w := call(1000, "/elsewhere"); w.Code != 200 || w.Body.String() != "fallback" || calls.Load() != 1 {
		t.Errorf("admitted caller: %d %q, fallback calls %d", w.Code, w.Body.String(), calls.Load())
	}
	a.stopBackground()

	// With the builtin proxy still registered, a second fallback is one
	// too many.
	_, err = New(Options{ConfigPath: cfg, Logger: log, Features: append(builtin.Features(), fallbackModule{"probe", &calls})})
	if err == nil || !strings.Contains(err.Error(), "second feature") {
		t.Errorf("two fallbacks: err = %v", err)
	}
}

// TestMetadataFeature_StatusGaugeAndStart: the metadata feature's state
// reaches the core through the feature interfaces: its status under
// upstream.metadata, its waiters gauge on /metrics, the machine id and the
// proxy's variables (feature.Metadata), and WaitStarted (feature.Starter).
// Without the feature, the guest API's metadata paths are 404 and the
// variables are never known.
func TestMetadataFeature_StatusGaugeAndStart(t *testing.T) {
	is := agenttest.New(t)
	g := startGuest(t, is, "")
	g.waitMetadata(t)
	a := g.agent
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.WaitStarted(ctx); err != nil {
		t.Fatalf("WaitStarted: %v", err)
	}
	meta, _ := a.upstreamStatus()["metadata"].(map[string]any)
	if meta["available"] != true || meta["failing"] != false || meta["etag"] == nil {
		t.Errorf("upstream.metadata = %v", meta)
	}
	found := false
	for _, s := range a.Metrics() {
		found = found || s.Name == "wicket_metadata_waiters"
	}
	if !found {
		t.Error("no wicket_metadata_waiters on /metrics")
	}
	if id := a.MachineID(); id == "" {
		t.Error("MachineID empty after the first fetch")
	}
	if v, ok := (runHost{a}).RouteVars(); !ok || v.Self != a.MachineID() || v.App == "" {
		t.Errorf("RouteVars = %+v, %v", v, ok)
	}

	dir := t.TempDir()
	cfg := filepath.Join(dir, "agent.toml")
	os.WriteFile(cfg, []byte("[api]\nsocket_path = \""+dir+"/api.sock\"\n[admin]\nsocket_path = \""+dir+"/admin.sock\"\n"), 0o600)
	b, err := New(Options{ConfigPath: cfg, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Features: withoutKey(metadata.Key)})
	if err != nil {
		t.Fatal(err)
	}
	r := httptest.NewRequest("GET", "/v1/metadata", nil)
	r = r.WithContext(unixsock.WithPeer(r.Context(), unixsock.Peer{UID: uint32(os.Geteuid()), GID: uint32(os.Getegid()), PID: 1}))
	w := httptest.NewRecorder()
	b.apiHandler().ServeHTTP(w, r)
	if w.Code != 404 {
		t.Errorf("GET /v1/metadata without the feature: %d", w.Code)
	}
	if _, ok := (runHost{b}).RouteVars(); ok || b.MachineID() != "" {
		t.Error("variables known without the metadata feature")
	}
}
