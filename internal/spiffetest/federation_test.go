package spiffetest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/e2e"
	"github.com/wicket-sh/wicket/internal/issuer"
	"github.com/wicket-sh/wicket/internal/sockettest"
	"github.com/wicket-sh/wicket/internal/spiffe"
	"github.com/wicket-sh/wicket/internal/wait"
)

var foreignTD = spiffeid.RequireTrustDomainFromString("spire.test")

// foreignDomain stands in for another SPIFFE system: a CA, a JWT key and
// an https_web bundle endpoint serving the bundle of the moment.
type foreignDomain struct {
	srv    *httptest.Server
	caFile string
	jwtKey *ecdsa.PrivateKey
	doc    atomic.Pointer[[]byte]
}

func newForeignDomain(t *testing.T) *foreignDomain {
	t.Helper()
	f := &foreignDomain{}
	f.jwtKey, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	f.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(*f.doc.Load())
	}))
	f.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	f.srv.StartTLS()
	t.Cleanup(f.srv.Close)
	f.caFile = filepath.Join(t.TempDir(), "foreign-endpoint-ca.pem")
	if err := os.WriteFile(f.caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// serve makes the endpoint serve a bundle of cas and the JWT key, with a
// refresh hint of 1 s.
func (f *foreignDomain) serve(t *testing.T, seq uint64, cas ...*spiffe.CA) {
	t.Helper()
	keys := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: f.jwtKey.Public(), KeyID: "foreign-1", Algorithm: "ES256", Use: "jwt-svid"}}}
	b, err := spiffe.NewBundle(foreignTD, cas, keys, time.Second, seq)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	f.doc.Store(&doc)
}

// jwtSVID is a JWT-SVID of the foreign domain for sub and aud, with a
// claim of wicket's name the agent must not pass on as if it were its own.
func (f *foreignDomain) jwtSVID(t *testing.T, sub, aud string) string {
	t.Helper()
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: f.jwtKey, KeyID: "foreign-1"}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tok, err := jwt.Signed(sig).Claims(jwt.Claims{Subject: sub, Audience: jwt.Audience{aud}, Expiry: jwt.NewNumericDate(now.Add(5 * time.Minute)),
		IssuedAt: jwt.NewNumericDate(now)}).Claims(map[string]any{"org": "dev"}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func newCA(t *testing.T, td spiffeid.TrustDomain) *spiffe.CA {
	t.Helper()
	ca, err := spiffe.NewCA(td, time.Now(), 24*time.Hour, 0)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// federatingIssuer is an issuer whose org dev federates with f's domain,
// fetching it as often as it asks (1 s) and telling agents to refetch
// their bundles every second.
func federatingIssuer(t *testing.T, f *foreignDomain) *e2e.Issuer {
	return e2e.StartIssuerOpts(t, func(c *config.Issuer) {
		c.SPIFFE.BundleRefreshHint = config.Duration{Duration: time.Second}
		c.SPIFFE.Federation = []config.SPIFFEFederation{{TrustDomain: foreignTD.Name(), BundleEndpointURL: f.srv.URL + "/bundle",
			Profile: config.ProfileHTTPSWeb, CAFile: f.caFile, Orgs: []string{"dev"}}}
	}, func(o *issuer.Options) { o.FederationRefreshMin = time.Millisecond })
}

type bundleWatcher struct {
	mu   sync.Mutex
	seen []*workloadapi.X509Context
}

func (w *bundleWatcher) OnX509ContextUpdate(c *workloadapi.X509Context) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.seen = append(w.seen, c)
}
func (w *bundleWatcher) OnX509ContextWatchError(error) {}

// foreignCAs is how many CAs of spire.test the latest update holds.
func (w *bundleWatcher) foreignCAs() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.seen) == 0 {
		return 0
	}
	b, ok := w.seen[len(w.seen)-1].Bundles.Get(foreignTD)
	if !ok {
		return 0
	}
	return len(b.X509Authorities())
}

// The federated domain's bundle reaches go-spiffe through every call of
// the Workload API that carries bundles, JWT-SVIDs of that domain
// validate (with only sub, exp and aud passed on), and a new bundle of
// the domain arrives on an open stream.
func TestGoSPIFFE_FederatedBundleAndUpdateOnStream(t *testing.T) {
	f := newForeignDomain(t)
	ca1 := newCA(t, foreignTD)
	f.serve(t, 1, ca1)
	e := setupWith(t, federatingIssuer(t, f))
	c := e.client(t)
	ctx := ctxT(t)

	w := &bundleWatcher{}
	wctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- c.WatchX509Context(wctx, w) }()
	defer func() { cancel(); <-done }()
	wait.Eventually(t, 30*time.Second, func() bool { return w.foreignCAs() == 1 }, "spire.test's bundle on the X.509 stream")

	bundles, err := c.FetchX509Bundles(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fb, ok := bundles.Get(foreignTD)
	if !ok || !fb.HasX509Authority(ca1.Cert) || bundles.Len() != 2 {
		t.Fatalf("FetchX509Bundles: %d bundles, spire.test %v", bundles.Len(), ok)
	}
	if own, ok := bundles.Get(spiffeid.RequireTrustDomainFromString(td)); !ok || own.HasX509Authority(ca1.Cert) {
		t.Fatal("the foreign CA is among the machine's own trust domain's")
	}
	// The raw answer: FederatedBundles beside the SVID, keyed by trust
	// domain ID as the specification says.
	raw := rawX509SVIDResponse(t, e.sock)
	if der, ok := raw.FederatedBundles[foreignTD.IDString()]; !ok || len(der) == 0 {
		t.Fatalf("X509SVIDResponse.FederatedBundles keys: %v", keys(raw.FederatedBundles))
	}
	jb, err := c.FetchJWTBundles(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if fj, ok := jb.Get(foreignTD); !ok || !fj.HasJWTAuthority("foreign-1") {
		t.Fatal("FetchJWTBundles lacks spire.test's key")
	}
	foreignID := "spiffe://spire.test/workload/db-client"
	sv, err := c.ValidateJWTSVID(ctx, f.jwtSVID(t, foreignID, "db"), "db")
	if err != nil || sv.ID.String() != foreignID {
		t.Fatalf("ValidateJWTSVID of a federated domain's JWT-SVID: %v, %v", sv, err)
	}
	// go-spiffe reads the claims from the token itself: the agent's own
	// answer passes on only sub, exp and aud of a foreign JWT-SVID.
	vr := rawValidate(t, e.sock, f.jwtSVID(t, foreignID, "db"), "db")
	if got := vr.Claims.AsMap(); len(got) != 3 || got["sub"] != foreignID || got["exp"] == nil || got["aud"] == nil {
		t.Errorf("claims of a foreign JWT-SVID passed on: %v", got)
	}
	// Signed by a key no bundle holds: refused.
	stranger := &foreignDomain{}
	stranger.jwtKey, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if _, err := c.ValidateJWTSVID(ctx, stranger.jwtSVID(t, foreignID, "db"), "db"); err == nil {
		t.Error("a JWT-SVID signed by an unknown key validated")
	}

	var st struct {
		Upstream struct {
			SPIFFE struct {
				Federated []string `json:"federated_trust_domains"`
			} `json:"spiffe"`
		} `json:"upstream"`
	}
	body := sockettest.Do(e.ag.AdminSocket, "GET", "/v1/status", "", nil).Body
	if err := json.Unmarshal([]byte(body), &st); err != nil || strings.Join(st.Upstream.SPIFFE.Federated, ",") != "spire.test" {
		t.Errorf("agent status does not name the federated domain (%v): %s", err, body)
	}

	// spire.test adds a CA: the stream gets a new message with both.
	f.serve(t, 2, ca1, newCA(t, foreignTD))
	wait.Eventually(t, 30*time.Second, func() bool { return w.foreignCAs() == 2 }, "the updated spire.test bundle on the open stream")
}

// rawClient is a bare gRPC client of the Workload API, for what go-spiffe
// does not show as the agent sent it.
func rawClient(t *testing.T, sock string) (workload.SpiffeWorkloadAPIClient, context.Context) {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return workload.NewSpiffeWorkloadAPIClient(conn), metadata.AppendToOutgoingContext(ctxT(t), "workload.spiffe.io", "true")
}

func rawValidate(t *testing.T, sock, svid, aud string) *workload.ValidateJWTSVIDResponse {
	t.Helper()
	c, ctx := rawClient(t, sock)
	resp, err := c.ValidateJWTSVID(ctx, &workload.ValidateJWTSVIDRequest{Svid: svid, Audience: aud})
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func rawX509SVIDResponse(t *testing.T, sock string) *workload.X509SVIDResponse {
	t.Helper()
	c, ctx := rawClient(t, sock)
	st, err := c.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
