package agent

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/agent/agenttest"
	"github.com/wicket-sh/wicket/internal/sockettest"
)

// svidCfg serves the Workload API next to the guest API and gives uid 0
// the machine's identity and uid 65534 the "frontend" workload's; uid
// 65533 has no rule.
const svidCfg = `
[spiffe]
enabled = true
socket_path = "%[1]s/spiffe.sock"
socket_group = "65534"

[[policy]]
name = "root"
uids = [0]
allow = ["*"]

[[policy]]
name = "frontend"
uids = [65534]
allow = ["POST /v1/svids/*"]
svid_name = "frontend"
`

const bodyForbidden = "{\"error\":\"forbidden\",\"code\":\"forbidden\"}\n"

// curlResult is one curl run: status, headers (lower-case names) and body.
type curlResult struct {
	status int
	header map[string]string
	body   string
}

// curl runs the real curl against the agent's API socket, as uid in the
// sockets' group 65534 when uid is not 0.
func curl(t *testing.T, sock string, uid uint32, args ...string) curlResult {
	t.Helper()
	bin, err := exec.LookPath("curl")
	if err != nil {
		sockettest.Unavailable(t, "curl not installed: %v", err)
		return curlResult{}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	// Headers and body both on stdout: the test's temporary directories
	// are not for other uids.
	cmd := exec.CommandContext(ctx, bin, append([]string{"-sS", "--unix-socket", sock, "-D", "-"}, args...)...)
	cmd.Dir = "/"
	if uid != 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: 65534, Groups: []uint32{}}}
	}
	var stderr sockettest.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("curl %v: %v\n%s", args, err, stderr.String())
	}
	h, b, _ := strings.Cut(string(out), "\r\n\r\n")
	res := curlResult{header: map[string]string{}, body: b}
	for i, line := range strings.Split(h, "\r\n") {
		if i == 0 {
			f := strings.Fields(line)
			if len(f) >= 2 {
				res.status, _ = strconv.Atoi(f[1])
			}
			continue
		}
		if k, v, ok := strings.Cut(line, ":"); ok {
			res.header[strings.ToLower(k)] = strings.TrimSpace(v)
		}
	}
	return res
}

// checkX509 checks a guest API X.509-SVID: the key is the certificate's,
// the URI SAN is id and the chain verifies against the bundle.
func checkX509(t *testing.T, id string, chainPEM, keyPEM, bundlePEM []byte) *x509.Certificate {
	t.Helper()
	sv, err := x509svid.Parse(chainPEM, keyPEM)
	if err != nil {
		t.Fatalf("svid and key do not parse as a pair: %v", err)
	}
	if sv.ID.String() != id {
		t.Errorf("svid for %s, want %s", sv.ID, id)
	}
	if len(bundlePEM) > 0 {
		b, err := x509bundle.Parse(sv.ID.TrustDomain(), bundlePEM)
		if err != nil {
			t.Fatalf("bundle: %v", err)
		}
		if _, _, err := x509svid.Verify(sv.Certificates, b); err != nil {
			t.Errorf("svid does not chain to the bundle: %v", err)
		}
	}
	return sv.Certificates[0]
}

func machineSPIFFEID(is *agenttest.Issuer) string {
	m := is.Machine()
	return "spiffe://" + is.TrustDomain().Name() + "/app/" + m.App + "/machine/" + m.MachineName
}

func workloadSPIFFEID(is *agenttest.Issuer, name string) string {
	return "spiffe://" + is.TrustDomain().Name() + "/app/" + is.Machine().App + "/workload/" + name
}

// POST /v1/svids/x509 with curl: JSON by default, PEM (chain, then key)
// with Accept: application/x-pem-file; the same cached SVID both times,
// not to be stored, audited once per process without the key.
func TestSVIDRoutes_X509JSONAndPEM(t *testing.T) {
	sockettest.RequireRoot(t, "the policy names uid 0")
	is := agenttest.New(t)
	g := startGuest(t, is, svidCfg)
	id := machineSPIFFEID(is)

	j := curl(t, g.api, 0, "-X", "POST", "http://wicket/v1/svids/x509")
	if j.status != 200 || !strings.HasPrefix(j.header["content-type"], "application/json") || j.header["cache-control"] != "no-store" {
		t.Fatalf("json: %d %v %.200q", j.status, j.header, j.body)
	}
	var rep api.X509SVIDGuestReply
	if err := json.Unmarshal([]byte(j.body), &rep); err != nil {
		t.Fatal(err)
	}
	leaf := checkX509(t, id, []byte(rep.X509SVID), []byte(rep.X509SVIDKey), []byte(rep.Bundle))
	if rep.SPIFFEID != id || !rep.ExpiresAt.Equal(leaf.NotAfter) {
		t.Errorf("reply for %s expiring %s; leaf ends %s", rep.SPIFFEID, rep.ExpiresAt, leaf.NotAfter)
	}

	p := curl(t, g.api, 0, "-X", "POST", "-H", "Accept: application/x-pem-file", "http://wicket/v1/svids/x509")
	if p.status != 200 || p.header["content-type"] != api.PEMContentType || p.header["cache-control"] != "no-store" {
		t.Fatalf("pem: %d %v", p.status, p.header)
	}
	var types []string
	rest := []byte(p.body)
	for {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		types = append(types, b.Type)
	}
	if strings.Join(types, ",") != "CERTIFICATE,PRIVATE KEY" || len(strings.TrimSpace(string(rest))) != 0 {
		t.Errorf("pem blocks %v (trailing %q), want the chain then the key", types, rest)
	}
	if pemLeaf := checkX509(t, id, []byte(p.body), []byte(p.body), nil); !pemLeaf.Equal(leaf) {
		t.Error("the pem reply holds another svid than the json one: not the cached svid")
	}
	if n := is.X509SVIDCalls.Load(); n != 1 {
		t.Errorf("issuer signed %d svids, want 1", n)
	}
	// Bodies other than none or {} are refused.
	if r := curl(t, g.api, 0, "-X", "POST", "-d", `{"csr":"AAAA"}`, "http://wicket/v1/svids/x509"); r.status != 400 || r.body != bodyBadRequest {
		t.Errorf("x509 with a body: %d %q", r.status, r.body)
	}

	logs := g.logs.String()
	if !strings.Contains(logs, `msg="svid served" kind=x509 spiffe_id=`+id+" via=http") {
		t.Errorf("no audit line for the hand-out:\n%s", logs)
	}
	keyBody := strings.Split(rep.X509SVIDKey, "\n")[1]
	for _, where := range []string{logs, g.do("GET", g.admin, "/v1/status", "", nil).Body, g.do("GET", g.admin, "/metrics", "", nil).Body} {
		if strings.Contains(where, keyBody[:32]) {
			t.Error("the private key appears in the logs, status or metrics")
		}
	}
}

// POST /v1/svids/jwt with curl: a JWT-SVID of the caller's identity for
// the audiences asked, signed by the trust domain's key; bad bodies are
// 400 without a call to the issuer.
func TestSVIDRoutes_JWT(t *testing.T) {
	sockettest.RequireRoot(t, "the policy names uid 0")
	is := agenttest.New(t)
	g := startGuest(t, is, svidCfg)
	r := curl(t, g.api, 0, "-X", "POST", "-d", `{"audience":["db","cache"]}`, "http://wicket/v1/svids/jwt")
	if r.status != 200 || r.header["cache-control"] != "no-store" || !strings.HasPrefix(r.header["content-type"], "application/json") {
		t.Fatalf("jwt: %d %v %.200q", r.status, r.header, r.body)
	}
	var rep api.JWTSVIDReply
	if err := json.Unmarshal([]byte(r.body), &rep); err != nil {
		t.Fatal(err)
	}
	sv, err := jwtsvid.ParseAndValidate(rep.Token, is.Bundle(t), []string{"db"})
	if err != nil {
		t.Fatalf("jwt svid: %v", err)
	}
	if sv.ID.String() != machineSPIFFEID(is) || rep.SPIFFEID != sv.ID.String() || !rep.ExpiresAt.Equal(sv.Expiry) || len(sv.Audience) != 2 {
		t.Errorf("jwt svid %s (reply %s) for %v, expires %s (reply %s)", sv.ID, rep.SPIFFEID, sv.Audience, sv.Expiry, rep.ExpiresAt)
	}
	calls := is.JWTSVIDCalls.Load()
	for _, body := range []string{
		``, `{}`, `{"audience":[]}`, `{"audience":[""]}`, `{"audience":["has space"]}`,
		`{"audience":["a","b","c","d","e","f","g","h","i","j","k"]}`, `{"audience":["db"],"spiffe_id":"spiffe://x/y"}`,
		`{"aud":["db"]}`, `not json`,
	} {
		if r := curl(t, g.api, 0, "-X", "POST", "-d", body, "http://wicket/v1/svids/jwt"); r.status != 400 || r.body != bodyBadRequest {
			t.Errorf("jwt body %q: %d %q", body, r.status, r.body)
		}
	}
	if n := is.JWTSVIDCalls.Load(); n != calls {
		t.Errorf("bad requests reached the issuer (%d calls)", n-calls)
	}
	if logs := g.logs.String(); !strings.Contains(logs, "kind=jwt spiffe_id="+machineSPIFFEID(is)+" via=http") || strings.Contains(logs, rep.Token) {
		t.Errorf("jwt hand-out not audited, or the token logged:\n%s", logs)
	}
}

// The policy decides as for every route: uid 65534 gets its rule's
// svid_name, uid 65533 (no rule) the 403 every denied route gets.
func TestSVIDRoutes_PolicyAndSVIDName(t *testing.T) {
	sockettest.RequireRoot(t, "callers of other uids")
	is := agenttest.New(t)
	g := startGuest(t, is, svidCfg)
	r := curl(t, g.api, 65534, "-X", "POST", "http://wicket/v1/svids/x509")
	if r.status != 200 {
		t.Fatalf("uid 65534: %d %q", r.status, r.body)
	}
	var rep api.X509SVIDGuestReply
	json.Unmarshal([]byte(r.body), &rep)
	checkX509(t, workloadSPIFFEID(is, "frontend"), []byte(rep.X509SVID), []byte(rep.X509SVIDKey), []byte(rep.Bundle))
	j := curl(t, g.api, 65534, "-X", "POST", "-d", `{"audience":["db"]}`, "http://wicket/v1/svids/jwt")
	if j.status != 200 || !strings.Contains(j.body, `"spiffe_id":"`+workloadSPIFFEID(is, "frontend")+`"`) {
		t.Errorf("uid 65534 jwt: %d %.200q", j.status, j.body)
	}
	// Its rule allows only the SVID routes.
	if r := curl(t, g.api, 65534, "http://wicket/v1/metadata"); r.status != 403 || r.body != bodyForbidden {
		t.Errorf("uid 65534 metadata: %d %q", r.status, r.body)
	}
	before := is.X509SVIDCalls.Load() + is.JWTSVIDCalls.Load()
	for _, path := range []string{"/v1/svids/x509", "/v1/svids/jwt"} {
		if r := curl(t, g.api, 65533, "-X", "POST", "-d", `{"audience":["db"]}`, "http://wicket"+path); r.status != 403 || r.body != bodyForbidden {
			t.Errorf("uid 65533 %s: %d %q, want the 403 of every denied route", path, r.status, r.body)
		}
	}
	if n := is.X509SVIDCalls.Load() + is.JWTSVIDCalls.Load(); n != before {
		t.Error("a denied caller's request reached the issuer")
	}
	if logs := g.logs.String(); !strings.Contains(logs, "peer_uid=65533") || !strings.Contains(logs, `route=/v1/svids/x509`) {
		t.Errorf("denial not logged:\n%s", logs)
	}
}

// Both surfaces hand out the same SVIDs: go-spiffe's X.509-SVID from the
// Workload API is the one curl got, and the same JWT-SVID for the same
// audience.
func TestSVIDRoutes_SameSVIDOnBothSurfaces(t *testing.T) {
	sockettest.RequireRoot(t, "the policy names uid 0")
	is := agenttest.New(t)
	g := startGuest(t, is, svidCfg)
	r := curl(t, g.api, 0, "-X", "POST", "http://wicket/v1/svids/x509")
	var rep api.X509SVIDGuestReply
	if err := json.Unmarshal([]byte(r.body), &rep); err != nil || r.status != 200 {
		t.Fatalf("x509: %d %v", r.status, err)
	}
	leaf := checkX509(t, machineSPIFFEID(is), []byte(rep.X509SVID), []byte(rep.X509SVIDKey), []byte(rep.Bundle))
	c, err := workloadapi.New(t.Context(), workloadapi.WithAddr("unix://"+filepath.Join(g.dir, "run", "spiffe.sock")))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	sv, err := c.FetchX509SVID(ctx)
	if err != nil {
		t.Fatalf("FetchX509SVID: %v", err)
	}
	if !sv.Certificates[0].Equal(leaf) {
		t.Error("the Workload API served another X.509-SVID than the guest API")
	}
	jr := curl(t, g.api, 0, "-X", "POST", "-d", `{"audience":["db"]}`, "http://wicket/v1/svids/jwt")
	var jrep api.JWTSVIDReply
	json.Unmarshal([]byte(jr.body), &jrep)
	js, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "db"})
	if err != nil {
		t.Fatalf("FetchJWTSVID: %v", err)
	}
	if js.Marshal() != jrep.Token || jrep.Token == "" {
		t.Error("the Workload API served another JWT-SVID than the guest API")
	}
	if n := is.X509SVIDCalls.Load(); n != 1 {
		t.Errorf("issuer signed %d X.509-SVIDs, want 1", n)
	}
}

// Issuer unreachable and nothing cached: 503 with the standard envelope,
// on both routes; the cause is logged, not sent.
func TestSVIDRoutes_IssuerDownNothingCached503(t *testing.T) {
	sockettest.RequireRoot(t, "the policy names uid 0")
	is := agenttest.New(t)
	g := startGuest(t, is, svidCfg)
	is.Stop()
	const want = "{\"error\":\"svid unavailable\",\"code\":\"upstream_unavailable\"}\n"
	for _, tc := range []struct{ path, body string }{{"/v1/svids/x509", ""}, {"/v1/svids/jwt", `{"audience":["db"]}`}} {
		r := curl(t, g.api, 0, "-X", "POST", "-d", tc.body, "http://wicket"+tc.path)
		if r.status != 503 || r.body != want {
			t.Errorf("%s with the issuer down: %d %q, want 503 %q", tc.path, r.status, r.body, want)
		}
	}
	if logs := g.logs.String(); !strings.Contains(logs, `msg="request failed" status=503`) {
		t.Errorf("the cause is not logged:\n%s", logs)
	}
}

// Without [spiffe] enabled the routes are not served: 404, as every guest
// API path no feature serves.
func TestSVIDRoutes_DisabledNotFound(t *testing.T) {
	is := agenttest.New(t)
	g := startGuest(t, is, "")
	for _, path := range []string{"/v1/svids/x509", "/v1/svids/jwt"} {
		if r := g.req(t, "POST", path, `{"audience":["db"]}`, nil); r.Status != 404 || r.Body != bodyNotFound {
			t.Errorf("%s disabled: %d %q", path, r.Status, r.Body)
		}
	}
	if n := is.X509SVIDCalls.Load() + is.JWTSVIDCalls.Load() + is.BundleCalls.Load(); n != 0 {
		t.Errorf("%d svid calls to the issuer with the feature disabled", n)
	}
}
