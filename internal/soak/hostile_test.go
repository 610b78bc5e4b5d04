package soak

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// recorder is the proxy upstream of TestHostileInputs: it keeps
// everything it is sent, so the test can check that no hostile byte ever
// got through the agent.
type recorder struct {
	mu   sync.Mutex
	hits int
	seen bytes.Buffer
}

func (u *recorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	u.mu.Lock()
	u.hits++
	fmt.Fprintf(&u.seen, "%s %s\n", r.Method, r.RequestURI)
	r.Header.Write(&u.seen)
	u.seen.Write(body)
	u.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.Write([]byte(`{"ok":true}`))
}

func (u *recorder) snapshot() (int, string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.hits, u.seen.String()
}

// hostileCase is one raw request; MARK in it is replaced by a marker unique
// to the run, which must never come back in a reply.
type hostileCase struct {
	name string
	raw  string
	want []int // statuses allowed, in order, one per reply
}

// protocol5xx are the two refusals net/http makes itself, before any
// wicket code runs, with the 5xx status RFC 9112 prescribes: 501 for a
// transfer coding it does not implement, 505 for an HTTP version it does
// not speak. They are the only 5xx allowed.
var protocol5xx = map[string]bool{"unsupported transfer coding": true, "unsupported HTTP version": true}

// raw builds hostile requests with MARK already replaced by the marker, so
// that Content-Length and chunk sizes frame what is actually sent.
type raw struct{ marker string }

func (m raw) mark(s string) string { return strings.ReplaceAll(s, "MARK", m.marker) }

func (m raw) get(path string, headers ...string) string {
	return m.mark("GET " + path + " HTTP/1.1\r\nHost: wicket\r\n" + strings.Join(headers, "") + "Connection: close\r\n\r\n")
}

func (m raw) post(path, body string, headers ...string) string {
	body = m.mark(body)
	return m.mark(fmt.Sprintf("POST %s HTTP/1.1\r\nHost: wicket\r\n%sContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
		path, strings.Join(headers, ""), len(body), body))
}

func (m raw) chunked(path string, chunks ...string) string {
	var b strings.Builder
	b.WriteString("POST " + path + " HTTP/1.1\r\nHost: wicket\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
	for _, c := range chunks {
		c = m.mark(c)
		fmt.Fprintf(&b, "%x\r\n%s\r\n", len(c), c)
	}
	b.WriteString("0\r\n\r\n")
	return m.mark(b.String())
}

// hostileCases are built for one machine id (the {self} of proxy routes)
// and one marker.
func hostileCases(self, marker string) []hostileCase {
	m := raw{marker}
	get, post, chunked := m.get, m.post, m.chunked
	big := strings.Repeat("a", 40000)
	bad := []int{400}
	machines := "/v1/apps/dev-app/machines/"
	var manyHeaders strings.Builder
	for i := 0; i < 2000; i++ {
		fmt.Fprintf(&manyHeaders, "X-H%d: MARK\r\n", i)
	}
	cases := []hostileCase{
		// Size caps (S-limits).
		{"oversized header", get("/v1/health", "X-Big: MARK"+big+"\r\n"), []int{431}},
		{"oversized request line", get("/v1/metadata/MARK" + big), []int{431, 414}},
		{"too many headers", get("/v1/health", manyHeaders.String()), []int{431}},
		{"oversized body", post("/v1/tokens/oidc", `{"aud":"MARK`+strings.Repeat("b", 100000)+`"}`), []int{413}},
		{"body one byte over the cap", post("/v1/tokens/oidc", `{"aud":"MARK`+strings.Repeat("b", 65536-len(`{"aud":"MARK"}`)+1)+`"}`), []int{413}},
		{"oversized chunked body", chunked("/v1/tokens/oidc", `{"aud":"MARK`, strings.Repeat("c", 40000), strings.Repeat("c", 40000), `"}`), []int{413}},
		{"oversized body with Expect", "POST /v1/tokens/oidc HTTP/1.1\r\nHost: wicket\r\nExpect: 100-continue\r\nContent-Length: 99999999\r\nConnection: close\r\n\r\nMARK", []int{413, 417}},

		// Invalid UTF-8 and NUL bytes in paths, queries, headers, bodies.
		{"invalid UTF-8 in path", get("/v1/metadata/\xff\xfeMARK"), []int{400, 404}},
		{"invalid UTF-8 in tag path", get("/v1/metadata/tags/\xc3\x28MARK"), []int{400, 404}},
		{"invalid UTF-8 in query", get("/v1/metadata?wait=true&timeout=1s&etag=\xff\xfeMARK"), []int{200, 400}},
		{"NUL in path", get("/v1/metadata/\x00MARK"), bad},
		{"NUL in query", get("/v1/metadata?etag=\x00MARK"), bad},
		{"encoded NUL in path", get("/v1/metadata/%00MARK"), bad},
		{"encoded NUL in query", get("/v1/metadata?wait=true&timeout=1s&etag=%00MARK"), []int{200, 400}},
		{"NUL in header", get("/v1/health", "X-A: \x00MARK\r\n"), bad},
		{"NUL in body", post("/v1/tokens/oidc", "{\"aud\":\"\x00MARK\"}"), bad},
		{"escaped NUL in body", post("/v1/tokens/oidc", `{"aud":"\u0000MARK"}`), bad},
		{"invalid UTF-8 in body", post("/v1/tokens/oidc", "{\"aud\":\"\xff\xfeMARK\"}"), bad},
		{"binary body", post("/v1/tokens/oidc", "\x00\x01\x02MARK\xff"), bad},

		// Path traversal.
		{"dot-dot to admin", get("/v1/../admin/MARK"), bad},
		{"dot-dot out of metadata", get("/v1/metadata/../../x/MARK"), bad},
		{"dot segment", get("/v1/metadata/./MARK"), bad},
		{"double slash", get("//v1/health/MARK"), bad},
		{"dot-dot from a proxy route", get(machines + self + "/../../../admin/MARK"), bad},
		{"absolute-form URI", "GET http://evil.example/v1/metadata/MARK HTTP/1.1\r\nHost: wicket\r\nConnection: close\r\n\r\n", []int{400, 404}},

		// Encoded separators in proxy-looking routes.
		{"encoded dot-dot in proxy route", get(machines + "%2e%2e/MARK"), bad},
		{"encoded dot-dot slash in proxy route", get(machines + self + "/%2E%2E%2F%2E%2E%2FMARK"), bad},
		{"encoded slash in proxy route", get("/v1/apps/dev-app%2fmachines/" + self + "%2fMARK"), bad},
		{"encoded slash in {self}", get(machines + self + "%2fMARK"), bad},
		{"encoded backslash in proxy route", get(machines + "..%5cMARK"), bad},
		{"raw backslash in proxy route", get(machines + self + "\\..\\MARK"), bad},
		{"double-encoded dot-dot", get(machines + "%252e%252e%252fMARK"), []int{400, 404}},
		{"encoded dot-dot POST", post(machines+self+"/%2e%2e/%2e%2e/MARK", `{"MARK":1}`), bad},

		// Token requests with bad audiences, never echoed.
		{"huge aud", post("/v1/tokens/oidc", `{"aud":"MARK`+strings.Repeat("h", 300)+`"}`), bad},
		{"aud near the body cap", post("/v1/tokens/oidc", `{"aud":"MARK`+strings.Repeat("h", 60000)+`"}`), bad},
		{"aud with a space", post("/v1/tokens/oidc", `{"aud":"MARK x"}`), bad},
		{"aud not a string", post("/v1/tokens/oidc", `{"aud":["MARK"]}`), bad},
		{"unknown field", post("/v1/tokens/oidc", `{"aud":"ok","MARK":1}`), bad},
		{"two JSON documents", post("/v1/tokens/oidc", `{"aud":"ok"}{"aud":"MARK"}`), bad},
		{"truncated JSON", post("/v1/tokens/oidc", `{"aud":"MARK`), bad},

		// Duplicate and bad query parameters: a clear 2xx/4xx.
		{"duplicate wait", get("/v1/metadata?wait=true&wait=false"), []int{200, 400}},
		{"duplicate wait with marker", get("/v1/metadata?wait=true&wait=false&etag=MARK"), []int{200, 400}},
		{"duplicate timeout", get("/v1/metadata?wait=true&timeout=1s&timeout=MARK"), []int{200, 400}},
		{"duplicate etag", get("/v1/metadata/region?wait=true&timeout=1s&etag=MARK&etag=x"), []int{200, 400}},
		{"bad wait", get("/v1/metadata?wait=MARK"), bad},
		{"bad timeout", get("/v1/metadata?wait=true&timeout=MARK"), bad},
		{"huge etag", get("/v1/metadata?wait=true&timeout=1s&etag=MARK" + strings.Repeat("e", 2000)), bad},
		{"bad percent-encoding in query", get("/v1/metadata?wait=true&timeout=1s&etag=%zzMARK"), []int{200, 400}},

		// Unknown things are refused without being named.
		{"unknown metadata key", get("/v1/metadata/MARK"), []int{404}},
		{"unknown tag", get("/v1/metadata/tags/MARK"), []int{404}},
		{"unknown route", get("/v1/MARK"), []int{404}},
		{"unknown method", "MARK /v1/health HTTP/1.1\r\nHost: wicket\r\nConnection: close\r\n\r\n", []int{405}},
		{"unknown method on a proxy route", "MARK " + machines + self + " HTTP/1.1\r\nHost: wicket\r\nConnection: close\r\n\r\n", []int{404, 405}},
		{"host header ignored", "GET /v1/health HTTP/1.1\r\nHost: MARK.evil.example\r\nConnection: close\r\n\r\n", []int{200}},

		// Framing attacks.
		{"two Content-Lengths", "POST /v1/tokens/oidc HTTP/1.1\r\nHost: wicket\r\nContent-Length: 3\r\nContent-Length: 12\r\nConnection: close\r\n\r\n{}\nMARK", bad},
		{"Content-Length and chunked", fmt.Sprintf("POST /v1/tokens/oidc HTTP/1.1\r\nHost: wicket\r\nContent-Length: %d\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n%x\r\n%s\r\n0\r\n\r\n", len(marker), len(marker), marker), bad},
		{"bad chunk size", "POST /v1/tokens/oidc HTTP/1.1\r\nHost: wicket\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\nMARK\r\n0\r\n\r\n", bad},
		{"negative Content-Length", "POST /v1/tokens/oidc HTTP/1.1\r\nHost: wicket\r\nContent-Length: -1\r\nConnection: close\r\n\r\nMARK", bad},
		{"space in header name", get("/v1/health", "X MARK: 1\r\n"), bad},
		{"unsupported transfer coding", "POST /v1/tokens/oidc HTTP/1.1\r\nHost: wicket\r\nTransfer-Encoding: MARK\r\nConnection: close\r\n\r\n", []int{501}},
		{"unsupported HTTP version", "GET /v1/metadata/MARK HTTP/2.0\r\nHost: wicket\r\nConnection: close\r\n\r\n", []int{505}},
		{"HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nMARK", []int{400}},
		{"pipelined second request", "GET /v1/health HTTP/1.1\r\nHost: wicket\r\n\r\n" + get("/v1/metadata/MARK"), []int{200, 404}},

		// Proxied route: caller credentials and hop-by-hop headers never
		// reach the upstream (checked on the recorder below).
		{"credentials to a proxy route", get(machines+self,
			"Authorization: Bearer MARK\r\n", "Cookie: s=MARK\r\n", "Proxy-Authorization: Basic MARK\r\n",
			"Connection: X-Hop-MARK\r\n", "X-Hop-MARK: 1\r\n", "Proxy-Connection: MARK\r\n"), []int{200}},
	}
	for i := range cases {
		cases[i].raw = m.mark(cases[i].raw)
	}
	return cases
}

// sendHostile sends one hostile request raw to socket and checks the
// reply: the allowed status, no 5xx, no byte of the marker, agent alive.
func sendHostile(t *testing.T, a *agent, socket string, tc hostileCase, marker string) {
	t.Helper()
	method := strings.SplitN(tc.raw, " ", 2)[0]
	out, err := rawExchange(socket, []byte(tc.raw), 10*time.Second)
	if err != nil {
		t.Errorf("%s: %v (got %q)", tc.name, err, out)
		return
	}
	if bytes.Contains(bytes.ToLower(out), []byte(marker)) {
		t.Errorf("%s: reply echoes the input:\n%q", tc.name, out)
	}
	rs, _, err := parseReplies(out, method)
	if err != nil {
		t.Errorf("%s: reply %q: %v", tc.name, out, err)
		return
	}
	var got []int
	for _, r := range rs {
		got = append(got, r.StatusCode)
	}
	switch {
	case len(rs) == 0:
		t.Errorf("%s: no reply at all", tc.name)
	case tc.name == "pipelined second request":
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: statuses %v, want %v", tc.name, got, tc.want)
		}
	case len(rs) != 1 || !slices.Contains(tc.want, got[0]):
		t.Errorf("%s: statuses %v, want one of %v\n%q", tc.name, got, tc.want, out)
	}
	t.Logf("%-40s → %v", tc.name, got)
	for _, s := range got {
		if s >= 500 && !protocol5xx[tc.name] {
			t.Errorf("%s: server error %d", tc.name, s)
		}
	}
	if !a.alive() {
		t.Fatalf("agent died on %q:\n%s", tc.name, a.logs)
	}
}

// adminHostileCases are sent to the admin socket (as root, who may use it).
func adminHostileCases(marker string) []hostileCase {
	m := raw{marker}
	bad := []int{400}
	return []hostileCase{
		{"admin: oversized header", m.get("/v1/status", "X-Big: MARK"+strings.Repeat("a", 40000)+"\r\n"), []int{431}},
		{"admin: oversized body", m.post("/v1/reload", `{"MARK":"`+strings.Repeat("b", 100000)+`"}`), []int{413}},
		{"admin: oversized chunked body", m.chunked("/v1/reload", "MARK", strings.Repeat("c", 40000), strings.Repeat("c", 40000)), []int{413}},
		{"admin: dot-dot", m.get("/v1/../v1/status/MARK"), bad},
		{"admin: dot-dot to reload", m.post("/v1/status/../reload", "MARK"), bad},
		{"admin: NUL in path", m.get("/v1/status\x00MARK"), bad},
		{"admin: invalid UTF-8 in path", m.get("/v1/status/\xff\xfeMARK"), []int{400, 404}},
		{"admin: encoded slash", m.get("/v1%2fstatus%2fMARK"), []int{400, 404}},
		{"admin: unknown command", m.get("/v1/MARK"), []int{404}},
		{"admin: unknown method", m.mark("MARK /v1/status HTTP/1.1\r\nHost: wicket\r\nConnection: close\r\n\r\n"), []int{405}},
		{"admin: bad chunk size", m.mark("POST /v1/reload HTTP/1.1\r\nHost: wicket\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\nMARK\r\n0\r\n\r\n"), bad},
	}
}

// TestHostileInputs guards S-errors and S-limits against hostile bytes sent
// raw over the API socket: oversized headers (431) and bodies (413),
// invalid UTF-8 and NUL bytes, path traversal, encoded separators in
// proxy-looking routes, bad audiences (400), duplicate query parameters,
// framing tricks. No reply is a 5xx, none echoes the input (a marker unique
// to the run never appears in any reply byte, header or body), nothing
// reaches the proxy upstream that should not, and the agent stays up. Then
// 10,000 distinct audiences from one uid: each is served or refused with
// 429, the cache stays within max_audiences, memory stays bounded.
func TestHostileInputs(t *testing.T) {
	skipShort(t)
	up := &recorder{}
	upstream := httptest.NewServer(up)
	defer upstream.Close()
	const maxAudiences = 100
	routes := fmt.Sprintf(`[[proxy.route]]
match = "GET /v1/apps/{app}/machines/{self}"
upstream = %[1]q

[[proxy.route]]
match = "POST /v1/apps/{app}/machines/{self}/*"
upstream = %[1]q
`, upstream.URL)
	sys := startSystem(t, agentConfig{MaxAudiences: maxAudiences, TokenRate: 2000, TokenBurst: 500, Extra: routes}, issuerES256)
	a := sys.agent
	c := newClient(a.api, 16)
	defer c.close()

	var meta struct {
		MachineID string `json:"machine_id"`
	}
	if r := c.do("GET", "/v1/metadata", "", nil); r.status != 200 || json.Unmarshal(r.body, &meta) != nil || meta.MachineID == "" {
		t.Fatalf("metadata: %s", r)
	}
	// The proxy route works for a legitimate call, so its refusals below
	// are the guards at work, not a missing route.
	if r := c.do("GET", "/v1/apps/dev-app/machines/"+meta.MachineID, "", nil); r.status != 200 {
		t.Fatalf("legitimate proxied call: %s", r)
	}

	var rnd [8]byte
	rand.Read(rnd[:])
	marker := "zqxmark" + hex.EncodeToString(rnd[:])
	for _, tc := range hostileCases(meta.MachineID, marker) {
		sendHostile(t, a, a.api, tc, marker)
	}
	// The admin socket holds to the same rules.
	for _, tc := range adminHostileCases(marker) {
		sendHostile(t, a, a.admin, tc, marker)
	}
	if g := a.status(t).ConfigGeneration; g != 1 {
		t.Errorf("a refused request to /v1/reload reloaded the config: generation %d", g)
	}
	hits, seen := up.snapshot()
	if strings.Contains(strings.ToLower(seen), marker) {
		t.Errorf("hostile bytes reached the proxy upstream:\n%s", seen)
	}
	// The legitimate call and the credentials case only.
	if hits != 2 {
		t.Errorf("proxy upstream got %d requests, want 2:\n%s", hits, seen)
	}
	a.healthy(t)

	// 10,000 distinct audiences from one uid.
	const nAuds = 10000
	var auds tally
	next := make(chan int, nAuds)
	for i := 0; i < nAuds; i++ {
		next <- i
	}
	close(next)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	workers(ctx, 16, nAuds, func(ctx context.Context, w, i int) {
		n, ok := <-next
		if !ok {
			return
		}
		r := c.token(fmt.Sprintf("https://aud-%05d.soak.example", n))
		if auds.add(r, 200, 429) && r.status == 200 && strings.Count(string(r.body), ".") != 2 {
			auds.fail("200 without a JWT")
		}
	})
	st := a.status(t)
	t.Logf("%d audiences: %s; cached %d (cap %d), issued %d", nAuds, &auds, st.Upstream.CachedAudiences, maxAudiences, st.Counters["tokens_issued"])
	if auds.failed.Load() != 0 {
		t.Errorf("distinct audiences: %s", &auds)
	}
	if n := auds.ok.Load(); n != nAuds {
		t.Errorf("%d of %d audience requests answered", n, nAuds)
	}
	if auds.status(200) <= maxAudiences {
		t.Errorf("only %d audiences served: the cache cap was never exercised", auds.status(200))
	}
	if st.Upstream.CachedAudiences > maxAudiences {
		t.Errorf("token cache holds %d audiences, cap %d", st.Upstream.CachedAudiences, maxAudiences)
	}
	a.healthy(t)
	checkRSS(t, a.proc, "after hostile inputs")
}
