package spiffetest

import (
	"crypto/x509"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"

	"github.com/wicket-sh/wicket/internal/wait"
)

// The tests speak to the agent with go-control-plane's generated SDS
// client: the protos Envoy itself uses (Envoy cannot run here). Like
// Envoy, they never send the workload.spiffe.io header.

const secretTypeURL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

// envoyNode is what Envoy says of itself on its first request.
var envoyNode = &corev3.Node{
	Id: "sidecar", Cluster: "web", UserAgentName: "envoy",
	UserAgentVersionType: &corev3.Node_UserAgentBuildVersion{UserAgentBuildVersion: &corev3.BuildVersion{
		Version: &typev3.SemanticVersion{MajorNumber: 1, MinorNumber: 34},
	}},
}

func sdsConn(t testing.TB, sock string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func sdsRequest(names ...string) *discoveryv3.DiscoveryRequest {
	return &discoveryv3.DiscoveryRequest{Node: envoyNode, TypeUrl: secretTypeURL, ResourceNames: names}
}

// secretsOf decodes a response's Secrets by name.
func secretsOf(t testing.TB, resp *discoveryv3.DiscoveryResponse) map[string]*tlsv3.Secret {
	t.Helper()
	if resp.TypeUrl != secretTypeURL {
		t.Errorf("type_url %q, want %q", resp.TypeUrl, secretTypeURL)
	}
	out := map[string]*tlsv3.Secret{}
	for _, a := range resp.Resources {
		var s tlsv3.Secret
		if err := a.UnmarshalTo(&s); err != nil {
			t.Fatalf("resource %s: %v", a.TypeUrl, err)
		}
		if _, dup := out[s.Name]; dup {
			t.Errorf("secret %q sent twice", s.Name)
		}
		out[s.Name] = &s
	}
	return out
}

func keysOf(m map[string]*tlsv3.Secret) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// svidOf parses a tls_certificate Secret as go-spiffe does an SVID: the
// chain's leaf must match the key, and its one URI SAN is the ID.
func svidOf(t testing.TB, s *tlsv3.Secret) *x509svid.SVID {
	t.Helper()
	tc := s.GetTlsCertificate()
	if tc == nil {
		t.Fatalf("secret %q is not a tls_certificate: %v", s.Name, s)
	}
	svid, err := x509svid.Parse(tc.GetCertificateChain().GetInlineBytes(), tc.GetPrivateKey().GetInlineBytes())
	if err != nil {
		t.Fatalf("secret %q does not parse as an SVID: %v", s.Name, err)
	}
	return svid
}

// bundleOf parses a trusted_ca validation context as td's bundle.
func bundleOf(t testing.TB, s *tlsv3.Secret, td spiffeid.TrustDomain) *x509bundle.Bundle {
	t.Helper()
	ca := s.GetValidationContext().GetTrustedCa().GetInlineBytes()
	if len(ca) == 0 {
		t.Fatalf("secret %q has no inline trusted_ca: %v", s.Name, s)
	}
	b, err := x509bundle.Parse(td, ca)
	if err != nil {
		t.Fatalf("secret %q trusted_ca: %v", s.Name, err)
	}
	return b
}

// Envoy's usual request — its own SPIFFE ID and ROOTCA — on a stream
// without the security header gets the caller's X.509-SVID (key matching
// the certificate, URI SAN the caller's ID) and the trust domain's CAs it
// chains to; the Workload API on the same connection still wants the
// header.
func TestSDS_StreamSecretsForCallerAndROOTCA(t *testing.T) {
	e := setup(t)
	conn := sdsConn(t, e.sock)
	ctx := ctxT(t)
	st, err := secretv3.NewSecretDiscoveryServiceClient(conn).StreamSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(sdsRequest(machineID, "ROOTCA")); err != nil {
		t.Fatal(err)
	}
	resp, err := st.Recv()
	if err != nil {
		t.Fatalf("StreamSecrets without the security header: %v", err)
	}
	if resp.VersionInfo == "" || resp.Nonce == "" {
		t.Errorf("stream response without version (%q) or nonce (%q)", resp.VersionInfo, resp.Nonce)
	}
	secs := secretsOf(t, resp)
	if len(secs) != 2 || secs[machineID] == nil || secs["ROOTCA"] == nil {
		t.Fatalf("secrets %q, want %s and ROOTCA", keysOf(secs), machineID)
	}
	svid := svidOf(t, secs[machineID])
	if svid.ID.String() != machineID {
		t.Errorf("svid for %s, want %s", svid.ID, machineID)
	}
	if uris := svid.Certificates[0].URIs; len(uris) != 1 || uris[0].String() != machineID {
		t.Errorf("URI SANs %v, want [%s]", uris, machineID)
	}
	b := bundleOf(t, secs["ROOTCA"], spiffeid.RequireTrustDomainFromString(td))
	if _, _, err := x509svid.Verify(svid.Certificates, b); err != nil {
		t.Errorf("the SVID does not chain to ROOTCA's trusted_ca: %v", err)
	}
	// The exemption is the SDS service's only.
	if _, err := workload.NewSpiffeWorkloadAPIClient(conn).FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: []string{"db"}}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("Workload API without the header next to SDS: %v, want InvalidArgument", err)
	}
}

// The other names: "default" is the caller's SVID whatever its ID, the
// trust domain's ID its CAs, "ALL" every domain's as a SPIFFE validator
// config; an empty list is all of the caller's; a name the caller may not
// have is refused.
func TestSDS_ResourceNames(t *testing.T) {
	e := setup(t)
	c := secretv3.NewSecretDiscoveryServiceClient(sdsConn(t, e.sock))
	ctx := ctxT(t)
	tdID := "spiffe://" + td
	resp, err := c.FetchSecrets(ctx, sdsRequest("default", tdID, "ALL"))
	if err != nil {
		t.Fatal(err)
	}
	secs := secretsOf(t, resp)
	if len(secs) != 3 {
		t.Fatalf("secrets %q, want default, %s and ALL", keysOf(secs), tdID)
	}
	if id := svidOf(t, secs["default"]).ID.String(); id != machineID {
		t.Errorf("default is %s, want %s", id, machineID)
	}
	own := bundleOf(t, secs[tdID], spiffeid.RequireTrustDomainFromString(td))
	cv := secs["ALL"].GetValidationContext().GetCustomValidatorConfig()
	if cv.GetName() != "envoy.tls.cert_validator.spiffe" {
		t.Fatalf("ALL: validator %q, want the SPIFFE validator", cv.GetName())
	}
	var cfg tlsv3.SPIFFECertValidatorConfig
	if err := cv.GetTypedConfig().UnmarshalTo(&cfg); err != nil {
		t.Fatal(err)
	}
	if len(cfg.TrustDomains) != 1 || cfg.TrustDomains[0].Name != td {
		t.Fatalf("ALL's trust domains %v, want only %s", cfg.TrustDomains, td)
	}
	all, err := x509bundle.Parse(spiffeid.RequireTrustDomainFromString(td), cfg.TrustDomains[0].GetTrustBundle().GetInlineBytes())
	if err != nil || !all.Equal(own) {
		t.Errorf("ALL's bundle for %s differs from %s's secret (%v)", td, tdID, err)
	}

	st, err := c.StreamSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(sdsRequest()); err != nil {
		t.Fatal(err)
	}
	resp, err = st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if secs := secretsOf(t, resp); len(secs) != 2 || secs[machineID] == nil || secs[tdID] == nil {
		t.Errorf("empty resource list: %q, want %s and %s", keysOf(secs), machineID, tdID)
	}

	if _, err := c.FetchSecrets(ctx, sdsRequest(backend)); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), backend) {
		t.Errorf("another workload's ID: %v, want InvalidArgument naming it", err)
	}
	if _, err := c.FetchSecrets(ctx, &discoveryv3.DiscoveryRequest{TypeUrl: "type.googleapis.com/envoy.config.cluster.v3.Cluster"}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("another resource type: %v, want InvalidArgument", err)
	}
	ds, err := c.DeltaSecrets(ctx)
	if err == nil {
		_, err = ds.Recv()
	}
	if status.Code(err) != codes.Unimplemented {
		t.Errorf("DeltaSecrets: %v, want Unimplemented", err)
	}
}

// rawCodec sends and receives bytes as they are: a client that can say
// what go-control-plane's would never encode.
type rawCodec struct{}

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(*v.(*[]byte))}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	*v.(*[]byte) = data.Materialize()
	return nil
}

func (rawCodec) Name() string { return "proto" }

// A request that is not a DiscoveryRequest is refused with an error, on
// the unary method and on the stream; the connection serves the next
// good request.
func TestSDS_MalformedRequestRefused(t *testing.T) {
	e := setup(t)
	conn := sdsConn(t, e.sock)
	ctx := ctxT(t)
	raw := grpc.ForceCodecV2(rawCodec{})
	for name, in := range map[string][]byte{
		"truncated field":        []byte("\x22\x05ab"),
		"name not UTF-8":         []byte("\x1a\x02\xc3\x28"),
		"a lone end-group":       []byte("\x44"),
		"NACK message not UTF-8": []byte("\x32\x04\x12\x02\xff\xfe"),
	} {
		var out []byte
		err := conn.Invoke(ctx, "/envoy.service.secret.v3.SecretDiscoveryService/FetchSecrets", &in, &out, raw)
		if status.Code(err) != codes.Internal || len(out) != 0 {
			t.Errorf("FetchSecrets, %s: %v (%d bytes), want Internal", name, err, len(out))
		}
		st, err := conn.NewStream(ctx, &grpc.StreamDesc{ClientStreams: true, ServerStreams: true},
			"/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets", raw)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.SendMsg(&in); err != nil {
			t.Fatal(err)
		}
		if err := st.RecvMsg(&out); status.Code(err) != codes.Internal {
			t.Errorf("StreamSecrets, %s: %v, want Internal", name, err)
		}
	}
	resp, err := secretv3.NewSecretDiscoveryServiceClient(conn).FetchSecrets(ctx, sdsRequest("default"))
	if err != nil {
		t.Fatal(err)
	}
	if secs := secretsOf(t, resp); svidOf(t, secs["default"]).ID.String() != machineID {
		t.Errorf("good request after the bad ones: %q", keysOf(secs))
	}
}

// A rotation arrives on the stream as a new push with a new version and
// nonce; a NACK is logged and not answered with the Secrets just refused:
// the next response after it is the one for the next request's names.
func TestSDS_RotationArrivesAsNewPushAndNACKIsNotResent(t *testing.T) {
	e := setup(t)
	ctx := ctxT(t)
	st, err := secretv3.NewSecretDiscoveryServiceClient(sdsConn(t, e.sock)).StreamSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(sdsRequest(machineID, "ROOTCA")); err != nil {
		t.Fatal(err)
	}
	first, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	// ACK, as Envoy does.
	if err := st.Send(&discoveryv3.DiscoveryRequest{TypeUrl: secretTypeURL, ResourceNames: []string{machineID, "ROOTCA"}, VersionInfo: first.VersionInfo, ResponseNonce: first.Nonce}); err != nil {
		t.Fatal(err)
	}
	// Half-life of a 1h SVID, jittered by up to 6 min: 40 min is past it.
	e.clock.Advance(40 * time.Minute)
	second, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if second.VersionInfo == first.VersionInfo || second.Nonce == first.Nonce {
		t.Errorf("push reuses version %q / nonce %q", second.VersionInfo, second.Nonce)
	}
	a, b := svidOf(t, secretsOf(t, first)[machineID]), svidOf(t, secretsOf(t, second)[machineID])
	if a.Certificates[0].SerialNumber.Cmp(b.Certificates[0].SerialNumber) == 0 {
		t.Fatalf("the push repeated the same SVID (serial %s)", a.Certificates[0].SerialNumber)
	}
	if b.ID.String() != machineID {
		t.Errorf("renewed svid for %s", b.ID)
	}

	// NACK the push: previous version, this nonce, an error.
	if err := st.Send(&discoveryv3.DiscoveryRequest{TypeUrl: secretTypeURL, ResourceNames: []string{machineID, "ROOTCA"},
		VersionInfo: first.VersionInfo, ResponseNonce: second.Nonce, ErrorDetail: status.New(codes.InvalidArgument, "bad certificate chain").Proto()}); err != nil {
		t.Fatal(err)
	}
	wait.Eventually(t, 30*time.Second, func() bool { return strings.Contains(e.ag.Logs(), "sds secrets rejected by the client") }, "NACK logged")
	// Envoy then asks for other names (and ACKs nothing yet): the next
	// response must be that one, not a resend of the refused Secrets.
	if err := st.Send(&discoveryv3.DiscoveryRequest{TypeUrl: secretTypeURL, ResourceNames: []string{"default"}, VersionInfo: first.VersionInfo, ResponseNonce: second.Nonce}); err != nil {
		t.Fatal(err)
	}
	third, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if secs := secretsOf(t, third); len(secs) != 1 || secs["default"] == nil {
		t.Errorf("after a NACK the next response holds %q, want only default", keysOf(secs))
	}
}

// Workloads of other uids get their own identity over SDS; a caller the
// policy gives none gets PermissionDenied.
func TestSDS_PolicyDeniedPermissionDenied(t *testing.T) {
	e := setup(t)
	if res := runAs(t, uidNobody, gidWorkloads, helperSpec{Mode: "sds", Socket: e.sock}); res["code"] != codes.PermissionDenied.String() {
		t.Fatalf("uid %d without a rule over SDS: %v, want PermissionDenied", uidNobody, res)
	}
	if res := runAs(t, uidFrontend, gidWorkloads, helperSpec{Mode: "sds", Socket: e.sock}); res["id"] != frontend {
		t.Fatalf("uid %d over SDS: %v, want %s", uidFrontend, res, frontend)
	}
}

// A client built only from the SDS Secrets completes mTLS with a go-spiffe
// server (another uid, its SVID from the Workload API) that authorizes
// exactly the SDS workload's ID.
func TestSDS_MTLSWithGoSPIFFEServer(t *testing.T) {
	e := setup(t)
	srv := serveAs(t, uidFrontend, gidWorkloads, e.sock, machineID)
	resp, err := secretv3.NewSecretDiscoveryServiceClient(sdsConn(t, e.sock)).FetchSecrets(ctxT(t), sdsRequest(machineID, "ROOTCA"))
	if err != nil {
		t.Fatal(err)
	}
	secs := secretsOf(t, resp)
	svid := svidOf(t, secs[machineID])
	b := bundleOf(t, secs["ROOTCA"], spiffeid.RequireTrustDomainFromString(td))
	reply, err := mtlsDial(srv.addr, svid, b, spiffeid.RequireFromString(frontend))
	if err != nil || reply != "hello "+machineID {
		t.Fatalf("mTLS with the SDS secrets: %q, %v", reply, err)
	}
	if _, err := mtlsDial(srv.addr, svid, b, spiffeid.RequireFromString(backend)); err == nil {
		t.Error("a client authorizing another server ID accepted the frontend")
	}
}

// The private key handed out over SDS appears in no log of the agent or
// the issuer, even after a NACK.
func TestSDS_PrivateKeyNotInLogs(t *testing.T) {
	e := setup(t)
	ctx := ctxT(t)
	st, err := secretv3.NewSecretDiscoveryServiceClient(sdsConn(t, e.sock)).StreamSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(sdsRequest(machineID)); err != nil {
		t.Fatal(err)
	}
	resp, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	keyPEM := secretsOf(t, resp)[machineID].GetTlsCertificate().GetPrivateKey().GetInlineBytes()
	blk, _ := pem.Decode(keyPEM)
	if blk == nil {
		t.Fatal("no PEM private key")
	}
	if _, err := x509.ParsePKCS8PrivateKey(blk.Bytes); err != nil {
		t.Fatalf("private key is not PKCS#8: %v", err)
	}
	if err := st.Send(&discoveryv3.DiscoveryRequest{TypeUrl: secretTypeURL, ResourceNames: []string{machineID}, ResponseNonce: resp.Nonce, ErrorDetail: status.New(codes.Internal, "rejected").Proto()}); err != nil {
		t.Fatal(err)
	}
	wait.Eventually(t, 30*time.Second, func() bool { return strings.Contains(e.ag.Logs(), "sds secrets rejected by the client") }, "NACK logged")
	body := strings.Split(string(keyPEM), "\n")[1][:32]
	if strings.Contains(e.ag.Logs()+e.iss.Logs(), body) {
		t.Error("the private key appears in the logs")
	}
}

// With a federated domain, "ALL" is a SPIFFE validator config that keeps
// each domain's CAs to that domain, the foreign domain's ID names its
// bundle alone, and ROOTCA stays the machine's own domain's CAs.
func TestSDS_FederatedBundles(t *testing.T) {
	f := newForeignDomain(t)
	ca1 := newCA(t, foreignTD)
	f.serve(t, 1, ca1)
	e := setupWith(t, federatingIssuer(t, f))
	c := secretv3.NewSecretDiscoveryServiceClient(sdsConn(t, e.sock))
	ctx := ctxT(t)
	var secs map[string]*tlsv3.Secret
	// The agent learns the federated bundle with its trust; ask until it
	// is there.
	wait.Eventually(t, 30*time.Second, func() bool {
		resp, err := c.FetchSecrets(ctx, sdsRequest("ALL", "ROOTCA", foreignTD.IDString()))
		if err != nil {
			return false
		}
		secs = secretsOf(t, resp)
		return len(secs) == 3
	}, "ALL, ROOTCA and spire.test's bundle over SDS")
	own := spiffeid.RequireTrustDomainFromString(td)
	if b := bundleOf(t, secs["ROOTCA"], own); b.HasX509Authority(ca1.Cert) {
		t.Error("ROOTCA holds the federated domain's CA")
	}
	if b := bundleOf(t, secs[foreignTD.IDString()], foreignTD); !b.HasX509Authority(ca1.Cert) || len(b.X509Authorities()) != 1 {
		t.Errorf("%s's secret: %d CAs, want only its CA", foreignTD, len(b.X509Authorities()))
	}
	var cfg tlsv3.SPIFFECertValidatorConfig
	if err := secs["ALL"].GetValidationContext().GetCustomValidatorConfig().GetTypedConfig().UnmarshalTo(&cfg); err != nil {
		t.Fatal(err)
	}
	got := map[string]*x509bundle.Bundle{}
	for _, d := range cfg.TrustDomains {
		b, err := x509bundle.Parse(spiffeid.RequireTrustDomainFromString(d.Name), d.GetTrustBundle().GetInlineBytes())
		if err != nil {
			t.Fatalf("ALL, %s: %v", d.Name, err)
		}
		got[d.Name] = b
	}
	if len(got) != 2 || got[td] == nil || got[foreignTD.Name()] == nil {
		t.Fatalf("ALL's trust domains: %d, want %s and %s", len(got), td, foreignTD.Name())
	}
	if got[td].HasX509Authority(ca1.Cert) || !got[foreignTD.Name()].HasX509Authority(ca1.Cert) {
		t.Error("ALL does not keep spire.test's CA to spire.test")
	}
}
