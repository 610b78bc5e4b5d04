package spiffetest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/wicket-sh/wicket/internal/e2e"
	"github.com/wicket-sh/wicket/internal/sockettest"
)

// Open Workload API streams follow a reload of the agent's policy: a
// caller whose rule now names another workload gets that workload's SVID
// on the stream it holds, and a caller the policy no longer admits gets
// PermissionDenied on every stream, which ends them. Envoy's SDS stream
// follows the same way.
func TestWorkloadAPI_StreamsFollowPolicyReload(t *testing.T) {
	iss := e2e.StartIssuer(t)
	tok := iss.MachineToken(t, "dev", "web", "m1")
	sock := filepath.Join(e2e.ShortDir(t), "spiffe.sock")
	me := os.Getuid()
	policy := func(uid int, name string) string {
		return fmt.Sprintf("[[policy]]\nname = \"me\"\nuids = [%d]\nallow = [\"POST /v1/svids/*\"]\nsvid_name = %q\n", uid, name)
	}
	ag := e2e.StartAgent(t, iss.URL, tok, fmt.Sprintf("[spiffe]\nenabled = true\nsocket_path = %q\n", sock)+policy(me, "a"))
	cfgPath := filepath.Join(ag.Dir, "agent.toml")
	reload := func(uid int, name string) {
		t.Helper()
		raw, err := os.ReadFile(cfgPath)
		if err != nil {
			t.Fatal(err)
		}
		head, _, _ := strings.Cut(string(raw), "[[policy]]")
		if err := os.WriteFile(cfgPath, []byte(head+policy(uid, name)), 0o600); err != nil {
			t.Fatal(err)
		}
		if r := sockettest.Do(ag.AdminSocket, "POST", "/v1/reload", "", nil); r.Status != 200 {
			t.Fatalf("reload: %d %s", r.Status, r.Body)
		}
	}

	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := workload.NewSpiffeWorkloadAPIClient(conn)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true")
	x509s, err := c.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	x509b, err := c.FetchX509Bundles(ctx, &workload.X509BundlesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	jwtb, err := c.FetchJWTBundles(ctx, &workload.JWTBundlesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	// Envoy's SDS stream, all of the caller's Secrets (no header: SDS).
	sds, err := secretv3.NewSecretDiscoveryServiceClient(conn).StreamSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := sds.Send(sdsRequest()); err != nil {
		t.Fatal(err)
	}
	sdsID := func(t *testing.T) string {
		t.Helper()
		m, err := sds.Recv()
		if err != nil {
			t.Fatalf("StreamSecrets: %v", err)
		}
		for name, sec := range secretsOf(t, m) {
			if sec.GetTlsCertificate() != nil {
				if id := svidOf(t, sec).ID.String(); id != name {
					t.Fatalf("svid for %s named %s", id, name)
				}
				return name
			}
		}
		t.Fatal("no tls_certificate on the SDS stream")
		return ""
	}
	idOf := func(t *testing.T) string {
		t.Helper()
		m, err := x509s.Recv()
		if err != nil {
			t.Fatalf("FetchX509SVID stream: %v", err)
		}
		certs, err := x509svid.ParseRaw(m.Svids[0].X509Svid, m.Svids[0].X509SvidKey)
		if err != nil {
			t.Fatal(err)
		}
		if m.Svids[0].SpiffeId != certs.ID.String() {
			t.Fatalf("svid for %s named %s", certs.ID, m.Svids[0].SpiffeId)
		}
		return certs.ID.String()
	}
	if id := idOf(t); id != "spiffe://"+td+"/app/web/workload/a" {
		t.Fatalf("first svid for %s", id)
	}
	if _, err := x509b.Recv(); err != nil {
		t.Fatal(err)
	}
	if _, err := jwtb.Recv(); err != nil {
		t.Fatal(err)
	}
	if id := sdsID(t); id != "spiffe://"+td+"/app/web/workload/a" {
		t.Fatalf("first SDS svid for %s", id)
	}

	// Renamed: the open stream gets the new identity's SVID.
	reload(me, "b")
	if id := idOf(t); id != "spiffe://"+td+"/app/web/workload/b" {
		t.Fatalf("after the rule was renamed, the stream sent an svid for %s", id)
	}
	if id := sdsID(t); id != "spiffe://"+td+"/app/web/workload/b" {
		t.Fatalf("after the rule was renamed, the SDS stream sent an svid for %s", id)
	}

	// No longer admitted: every stream ends with PermissionDenied.
	reload(me+1, "b")
	if _, err := x509s.Recv(); status.Code(err) != codes.PermissionDenied {
		t.Errorf("FetchX509SVID after the caller's rule went: %v, want PermissionDenied", err)
	}
	for name, recv := range map[string]func() error{
		"FetchX509Bundles": func() error { _, err := x509b.Recv(); return err },
		"FetchJWTBundles":  func() error { _, err := jwtb.Recv(); return err },
		"StreamSecrets":    func() error { _, err := sds.Recv(); return err },
	} {
		if err := recv(); status.Code(err) != codes.PermissionDenied {
			t.Errorf("%s after the caller's rule went: %v, want PermissionDenied", name, err)
		}
	}
	// And a new call is refused too.
	st, err := c.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	if err == nil {
		_, err = st.Recv()
	}
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("new FetchX509SVID: %v, want PermissionDenied", err)
	}
}
