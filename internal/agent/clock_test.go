package agent

// The timing of the agent's background work (token refresh, expiry, rate
// limit refill, metadata backoff, token files) is tested here inside
// testing/synctest bubbles: time is fake and jumps ahead whenever every
// goroutine in the bubble is blocked, so a 100 s token life costs no real
// time and the assertions are exact. Nothing here opens a socket (network
// I/O never blocks "durably" in a bubble): the components are driven
// directly, the issuer is a fake fetch function, and API requests go
// straight to the handler.

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/wicket-sh/wicket/internal/agent/builtin"
	"github.com/wicket-sh/wicket/internal/agent/feature"
	"github.com/wicket-sh/wicket/internal/agent/feature/oidctoken"
	"github.com/wicket-sh/wicket/internal/machinetoken"
	"github.com/wicket-sh/wicket/internal/sockettest"
	"github.com/wicket-sh/wicket/internal/unixsock"
)

// fakeIssuer stands in for the issuer's token endpoint: numbered JWT-shaped
// tokens (iat and exp set, no signature) living life, after delay; while
// down, every call fails.
type fakeIssuer struct {
	life time.Duration

	mu     sync.Mutex
	delay  time.Duration
	down   bool
	calls  []time.Time // every call, failed ones included
	issued []feature.Token
}

func (f *fakeIssuer) fetch(ctx context.Context, aud string) (feature.Token, error) {
	f.mu.Lock()
	delay := f.delay
	f.mu.Unlock()
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return feature.Token{}, ctx.Err()
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	f.calls = append(f.calls, now)
	if f.down {
		return feature.Token{}, errors.New("issuer unreachable")
	}
	n := len(f.issued)
	tok := feature.Token{JWT: fakeJWT(n, aud, now, now.Add(f.life)), ID: fmt.Sprintf("jti-%d", n), Expires: now.Add(f.life)}
	f.issued = append(f.issued, tok)
	return tok, nil
}

func (f *fakeIssuer) setDown(down bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down = down
}

func (f *fakeIssuer) setDelay(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.delay = d
}

func (f *fakeIssuer) callCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.calls)
}

// last returns the latest token handed out.
func (f *fakeIssuer) last() feature.Token {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.issued[len(f.issued)-1]
}

func (f *fakeIssuer) issuedCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.issued)
}

// fakeJWT is header.payload.signature with the claims the agent reads.
func fakeJWT(n int, aud string, iat, exp time.Time) string {
	enc := base64.RawURLEncoding.EncodeToString
	payload, _ := json.Marshal(map[string]any{"jti": fmt.Sprintf("jti-%d", n), "aud": aud, "iat": iat.Unix(), "exp": exp.Unix()})
	return enc([]byte(`{"alg":"ES256"}`)) + "." + enc(payload) + ".c2ln"
}

// bubbleAgent is an agent for a synctest bubble: New on a config with
// extra appended (its sockets are never opened, nor is its issuer URL
// dialled), and a token cache whose issuer call is is.fetch. Call it inside the bubble: everything it starts
// belongs to the bubble and stops when the test ends.
func bubbleAgent(t testing.TB, extra string, is *fakeIssuer) (*Agent, *sockettest.Buffer) {
	t.Helper()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "agent.toml")
	base := "[api]\nsocket_path = \"/run/wicket-bubble/api.sock\"\n[admin]\nsocket_path = \"/run/wicket-bubble/admin.sock\"\n" +
		"[issuer]\nurl = \"http://127.0.0.1:1\"\n"
	if err := os.WriteFile(cfg, []byte(base+extra), 0o600); err != nil {
		t.Fatal(err)
	}
	raw, _, err := machinetoken.Mint(machinetoken.NewKey(), "http://127.0.0.1:1", machinetoken.Claims{
		Org: "acme", App: "web", MachineID: "m-bubble", NotAfter: time.Now().Add(24 * time.Hour),
		Features: []machinetoken.Feature{machinetoken.FeatureMetadata, machinetoken.FeatureOIDC},
	})
	if err != nil {
		t.Fatal(err)
	}
	mt, err := ParseMachineToken(raw)
	if err != nil {
		t.Fatal(err)
	}
	logs := &sockettest.Buffer{}
	// The OIDC token feature with its issuer call replaced by is.fetch.
	feats := builtin.Features()
	for i, m := range feats {
		if _, ok := m.(oidctoken.Module); ok {
			feats[i] = oidctoken.Module{Fetch: is.fetch}
		}
	}
	a, err := New(Options{ConfigPath: cfg, MachineToken: mt, Features: feats,
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.stopBackground)
	return a, logs
}

// counterValue is the agent's counter under key (as status shows it).
func counterValue(a *Agent, key string) uint64 {
	for _, c := range a.counters() {
		if c.Key == key {
			return c.Value()
		}
	}
	panic("no counter " + key)
}

// postToken asks the guest API handler for a token for aud, as this
// process.
func postToken(a *Agent, aud string) *httptest.ResponseRecorder {
	body := ""
	if aud != "" {
		body = `{"aud":"` + aud + `"}`
	}
	r := httptest.NewRequest("POST", "/v1/tokens/oidc", strings.NewReader(body))
	r = r.WithContext(unixsock.WithPeer(r.Context(), unixsock.Peer{UID: uint32(os.Geteuid()), GID: uint32(os.Getegid()), PID: int32(os.Getpid())}))
	w := httptest.NewRecorder()
	a.apiHandler().ServeHTTP(w, r)
	return w
}

// The cache renews a token in use at refresh_at (0.8) of its life, in the
// background: callers get the cached token meanwhile and never wait. A
// token nobody asked for since its renewal lapses instead of being renewed
// forever.
func TestTokenCache_RefreshAtFraction(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		is := &fakeIssuer{life: 100 * time.Second}
		a, _ := bubbleAgent(t, "", is)
		c := a.tokens
		refreshes := func() uint64 { return counterValue(a, "token_refreshes") }
		ctx := context.Background()
		start := time.Now()

		first, src, err := c.Token(ctx, "aud")
		if err != nil || src != oidctoken.SourceIssuer {
			t.Fatalf("first get: %v, source %q", err, src)
		}
		time.Sleep(80*time.Second - time.Millisecond)
		synctest.Wait()
		if n := is.callCount(); n != 1 {
			t.Fatalf("%d issuer calls before the refresh point, want 1", n)
		}
		if tok, src, _ := c.Token(ctx, "aud"); tok.JWT != first.JWT || src != oidctoken.SourceCache {
			t.Errorf("before the refresh point: source %q, same token %v", src, tok.JWT == first.JWT)
		}

		// The renewal is slow; callers still get the cached token at once.
		is.setDelay(5 * time.Second)
		time.Sleep(time.Millisecond)
		synctest.Wait()
		if el := time.Since(start); el != 80*time.Second {
			t.Fatalf("clock at %v", el)
		}
		if tok, src, _ := c.Token(ctx, "aud"); tok.JWT != first.JWT || src != oidctoken.SourceCache || time.Since(start) != 80*time.Second {
			t.Errorf("during the renewal: source %q, same token %v, waited %v", src, tok.JWT == first.JWT, time.Since(start)-80*time.Second)
		}
		time.Sleep(5 * time.Second)
		synctest.Wait()
		if n, r := is.callCount(), refreshes(); n != 2 || r != 1 {
			t.Fatalf("after the refresh point: %d issuer calls, %d refreshes; want 2 and 1", n, r)
		}
		second, src, _ := c.Token(ctx, "aud")
		if second.JWT == first.JWT || src != oidctoken.SourceCache {
			t.Errorf("after the renewal: source %q, same token %v", src, second.JWT == first.JWT)
		}

		// Used once after its renewal, the second token is renewed too;
		// the third, never asked for, is not: it lapses.
		time.Sleep(200 * time.Second)
		synctest.Wait()
		if n := is.callCount(); n != 3 {
			t.Errorf("%d issuer calls after the unused third token's life, want 3", n)
		}
		if tok, src, _ := c.Token(ctx, "aud"); src != oidctoken.SourceIssuer || tok.JWT == second.JWT {
			t.Errorf("lapsed token: source %q", src)
		}
	})
}

// Issuer down: the cached token is still served until it is no longer
// usable (its life minus a tenth, at most 30 s), then the exact 503;
// renewal attempts meanwhile are spaced out; the issuer back, tokens flow
// again without a restart.
func TestTokenCache_IssuerDownServesCachedUntilExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		is := &fakeIssuer{life: 100 * time.Second}
		a, _ := bubbleAgent(t, noLimits, is)
		start := time.Now()
		w := postToken(a, "x")
		if w.Code != 200 {
			t.Fatalf("token: %d", w.Code)
		}
		tok := w.Body.String()
		is.setDown(true)
		if r := postToken(a, "never-cached"); r.Code != 503 || r.Body.String() != bodyTokenUnavai {
			t.Errorf("uncached audience while down: %d %q", r.Code, r.Body.String())
		}
		callsBefore := is.callCount()

		time.Sleep(90*time.Second - time.Nanosecond)
		if r := postToken(a, "x"); r.Code != 200 || r.Body.String() != tok {
			t.Errorf("cached token while down, just before it becomes unusable: %d", r.Code)
		}
		time.Sleep(time.Nanosecond)
		if r := postToken(a, "x"); r.Code != 503 || r.Body.String() != bodyTokenUnavai {
			t.Errorf("at 90%% of the life (%v): %d %q, want the 503", time.Since(start), r.Code, r.Body.String())
		}
		// Renewal attempts from 80 s on, at least 500 ms apart.
		if n := is.callCount() - callsBefore; n < 2 || n > 2+int(10*time.Second/(500*time.Millisecond)) {
			t.Errorf("%d issuer calls while down", n)
		}

		is.setDown(false)
		r := postToken(a, "x")
		if r.Code != 200 || r.Body.String() == tok {
			t.Errorf("issuer back: %d, same token %v", r.Code, r.Body.String() == tok)
		}
	})
}

// The per-uid bucket refills at token_rate; Retry-After says when the next
// token is there, in whole seconds rounded up.
func TestRateLimit_RefillAndRetryAfter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		is := &fakeIssuer{life: time.Hour}
		a, _ := bubbleAgent(t, "[limits]\ntoken_rate = 0.5\ntoken_burst = 2\n", is)
		for i, want := range []int{200, 200, 429} {
			if r := postToken(a, ""); r.Code != want {
				t.Fatalf("request %d: %d, want %d", i, r.Code, want)
			}
		}
		if r := postToken(a, ""); r.Header().Get("Retry-After") != "2" {
			t.Errorf("empty bucket: Retry-After %q, want 2", r.Header().Get("Retry-After"))
		}
		time.Sleep(time.Second)
		if r := postToken(a, ""); r.Code != 429 || r.Header().Get("Retry-After") != "1" {
			t.Errorf("half a token: %d, Retry-After %q; want 429 and 1", r.Code, r.Header().Get("Retry-After"))
		}
		time.Sleep(time.Second - time.Millisecond)
		if r := postToken(a, ""); r.Code != 429 {
			t.Errorf("just before a whole token: %d", r.Code)
		}
		time.Sleep(time.Millisecond)
		if r := postToken(a, ""); r.Code != 200 {
			t.Errorf("after 2 s at 0.5/s: %d", r.Code)
		}
		// Refill stops at the burst.
		time.Sleep(time.Hour)
		for i, want := range []int{200, 200, 429} {
			if r := postToken(a, ""); r.Code != want {
				t.Errorf("after an hour, request %d: %d, want %d", i, r.Code, want)
			}
		}
		if n := a.rateLimitedN.Load(); n != 5 {
			t.Errorf("rate_limited counter %d, want 5", n)
		}
	})
}

// A token file is written at once and replaced at its refresh point with
// the token the cache renewed meanwhile, never rewritten with one it
// already held, even when the issuer is slow and both renew at the same
// moment (tokens.refresh_at and the file's refresh both 80%).
func TestTokenFiles_RefreshTakesRenewedToken(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// A slow issuer, as a remote one is: the cache's renewal is still
		// under way when the file's refresh asks.
		is := &fakeIssuer{life: 100 * time.Second}
		is.setDelay(60 * time.Millisecond)
		path := filepath.Join(t.TempDir(), "tokens", "app")
		a, _ := bubbleAgent(t, tokenFileCfg(path, "app.example"), is)
		a.tokenFiles().Start()
		time.Sleep(time.Second) // past the issuer's delay
		synctest.Wait()
		if got := readToken(t, path); got != is.last().JWT {
			t.Fatal("first write does not hold the issued token")
		}
		for round := 1; round <= 5; round++ {
			time.Sleep(80 * time.Second)
			synctest.Wait()
			last := is.last()
			if readToken(t, path) != last.JWT {
				t.Fatalf("round %d: the file does not hold the latest token (%d issued)", round, is.issuedCount())
			}
			if left := time.Until(last.Expires); left < 50*time.Second {
				t.Errorf("round %d: the file's token has %v left", round, left)
			}
		}
		st := a.tokenFiles().Files()
		if len(st) != 1 || int(st[0].Refreshes) > is.issuedCount() || st[0].Failures != 0 {
			t.Errorf("%d issued, status %+v", is.issuedCount(), st)
		}
	})
}

// While the issuer is down the file keeps its token, even once expired,
// and failures are counted with a generic error; the issuer back, the next
// retry (at most the refresher's 60 s backoff cap) replaces it.
func TestTokenFiles_IssuerDown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		is := &fakeIssuer{life: 100 * time.Second}
		path := filepath.Join(t.TempDir(), "app")
		a, _ := bubbleAgent(t, tokenFileCfg(path, "app.example"), is)
		a.tokenFiles().Start()
		synctest.Wait()
		old := readToken(t, path)
		is.setDown(true)
		time.Sleep(5 * time.Minute)
		synctest.Wait()
		if readToken(t, path) != old {
			t.Error("file changed while the issuer was down")
		}
		st := a.tokenFiles().Files()[0]
		if st.Failures < 1 || st.ConsecutiveFailures < 1 || st.LastError != "fetch token failed" {
			t.Errorf("status while down: %+v", st)
		}
		// Backoff: doubling from 1 s, capped at 60 s, jittered to at least
		// half: a handful of tries in four minutes, not a hammering.
		if n := st.Failures; n > 12 {
			t.Errorf("%d failed refreshes in 5 minutes", n)
		}
		is.setDown(false)
		time.Sleep(time.Minute)
		synctest.Wait()
		if got := readToken(t, path); got == old || got != is.last().JWT {
			t.Error("file not refreshed once the issuer was back")
		}
		if st := a.tokenFiles().Files()[0]; st.ConsecutiveFailures != 0 || st.LastError != "" {
			t.Errorf("status after recovery: %+v", st)
		}
	})
}

// A local long poll answers at once when the caller's etag is not the
// current one (quoted or not), waits its full timeout when nothing
// changes, and wakes the moment the metadata changes.
func TestMetadata_LongPollTiming(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, _ := bubbleAgent(t, "", &fakeIssuer{})
		mf := metaFeature(a)
		if err := mf.Install([]byte(fuzzMetadata), `"e1"`); err != nil {
			t.Fatal(err)
		}
		get := func(path string) (*httptest.ResponseRecorder, time.Duration) {
			r := httptest.NewRequest("GET", path, nil)
			r = r.WithContext(unixsock.WithPeer(r.Context(), unixsock.Peer{UID: uint32(os.Geteuid()), GID: uint32(os.Getegid()), PID: int32(os.Getpid())}))
			w := httptest.NewRecorder()
			start := time.Now()
			a.apiHandler().ServeHTTP(w, r)
			return w, time.Since(start)
		}
		if w, el := get(`/v1/metadata?wait=true&etag=%22other%22&timeout=30s`); w.Code != 200 || w.Header().Get("Etag") != `"e1"` || el != 0 {
			t.Errorf("other etag: %d %q after %v, want at once", w.Code, w.Header().Get("Etag"), el)
		}
		if w, el := get(`/v1/metadata/region?wait=true&timeout=1s&etag=%22e1%22`); w.Code != 200 || w.Body.String() != "ams" || el != time.Second {
			t.Errorf("same etag: %d %q after %v, want the 1s timeout", w.Code, w.Body.String(), el)
		}
		if w, el := get(`/v1/metadata?wait=true&timeout=7s&etag=e1`); w.Code != 200 || el != 7*time.Second {
			t.Errorf("unquoted etag: %d after %v, want the 7s timeout", w.Code, el)
		}
		type reply struct {
			w  *httptest.ResponseRecorder
			el time.Duration
		}
		done := make(chan reply, 1)
		go func() {
			w, el := get(`/v1/metadata/tags/role?wait=true&timeout=120s&etag=%22e1%22`)
			done <- reply{w, el}
		}()
		time.Sleep(5 * time.Second)
		synctest.Wait()
		if n := mf.Waiters(); n != 1 {
			t.Fatalf("%d waiters, want 1", n)
		}
		if err := mf.Install([]byte(strings.Replace(fuzzMetadata, `"role":"fz"`, `"role":"backend"`, 1)), `"e2"`); err != nil {
			t.Fatal(err)
		}
		r := <-done
		if r.w.Code != 200 || r.w.Body.String() != "backend" || r.w.Header().Get("Etag") != `"e2"` || r.el != 5*time.Second {
			t.Errorf("woken poll: %d %q %q after %v, want the change at 5s", r.w.Code, r.w.Body.String(), r.w.Header().Get("Etag"), r.el)
		}
	})
}
