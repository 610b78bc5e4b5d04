package xdswire

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// The reference for every test here is go-control-plane: the generated
// protos Envoy's own Go control planes use.

func inline(b []byte) *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b}}
}

// pem returns n bytes of PEM-looking text: sizes that cross the one-,
// two- and three-byte length prefixes.
func pem(n int) []byte { return []byte(strings.Repeat("MIIB", n/4+1)[:n]) }

type secretCase struct {
	name string
	ours *Secret
	ref  *tlsv3.Secret
}

func secretCases(t *testing.T) []secretCase {
	t.Helper()
	spiffeCfg := func(tds ...*tlsv3.SPIFFECertValidatorConfig_TrustDomain) *tlsv3.Secret {
		a, err := anypb.New(&tlsv3.SPIFFECertValidatorConfig{TrustDomains: tds})
		if err != nil {
			t.Fatal(err)
		}
		return &tlsv3.Secret{Name: "ALL", Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			CustomValidatorConfig: &corev3.TypedExtensionConfig{Name: "envoy.tls.cert_validator.spiffe", TypedConfig: a},
		}}}
	}
	var cases []secretCase
	for _, n := range []int{0, 1, 127, 128, 16383, 16384, 70000} {
		chain, key := pem(n), pem(n/2+3)
		cases = append(cases,
			secretCase{"svid", &Secret{Name: "spiffe://example.org/web", TLSCertificate: &TLSCertificate{CertificateChain: chain, PrivateKey: key}},
				&tlsv3.Secret{Name: "spiffe://example.org/web", Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
					CertificateChain: inline(chain), PrivateKey: inline(key)}}}},
			secretCase{"trusted_ca", &Secret{Name: "ROOTCA", ValidationContext: &ValidationContext{TrustedCA: chain}},
				&tlsv3.Secret{Name: "ROOTCA", Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
					TrustedCa: inline(chain)}}}},
		)
	}
	cases = append(cases,
		secretCase{"spiffe validator, one domain", &Secret{Name: "ALL", ValidationContext: &ValidationContext{SPIFFE: []TrustDomain{{"example.org", pem(900)}}}},
			spiffeCfg(&tlsv3.SPIFFECertValidatorConfig_TrustDomain{Name: "example.org", TrustBundle: inline(pem(900))})},
		secretCase{"spiffe validator, three domains", &Secret{Name: "ALL", ValidationContext: &ValidationContext{SPIFFE: []TrustDomain{
			{"a.test", pem(10)}, {"b.test", pem(20000)}, {"example.org", pem(130)}}}},
			spiffeCfg(
				&tlsv3.SPIFFECertValidatorConfig_TrustDomain{Name: "a.test", TrustBundle: inline(pem(10))},
				&tlsv3.SPIFFECertValidatorConfig_TrustDomain{Name: "b.test", TrustBundle: inline(pem(20000))},
				&tlsv3.SPIFFECertValidatorConfig_TrustDomain{Name: "example.org", TrustBundle: inline(pem(130))})},
		// A bundle with no X.509 authorities (only JWT keys): an empty
		// trusted_ca, still a trusted_ca.
		secretCase{"trusted_ca, no authority", &Secret{Name: "spiffe://jwt-only.test", ValidationContext: &ValidationContext{}},
			&tlsv3.Secret{Name: "spiffe://jwt-only.test", Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
				TrustedCa: inline(nil)}}}},
		secretCase{"spiffe validator, no domain", &Secret{Name: "ALL", ValidationContext: &ValidationContext{SPIFFE: []TrustDomain{}}}, spiffeCfg()},
	)
	return cases
}

// Every Secret encoded here decodes, with go-control-plane, to the
// message the agent built with it before, and its bytes are protobuf-go's
// own encoding of that message.
func TestSecret_AsGoControlPlane(t *testing.T) {
	for _, c := range secretCases(t) {
		got := c.ours.Marshal()
		var dec tlsv3.Secret
		if err := proto.Unmarshal(got, &dec); err != nil {
			t.Fatalf("%s: go-control-plane cannot decode it: %v", c.name, err)
		}
		if !proto.Equal(&dec, c.ref) {
			t.Errorf("%s: decodes as\n%v\nwant\n%v", c.name, &dec, c.ref)
		}
		if err := dec.ValidateAll(); err != nil {
			t.Errorf("%s: Envoy's validation rules refuse it: %v", c.name, err)
		}
		want, err := proto.MarshalOptions{Deterministic: true}.Marshal(c.ref)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s: bytes differ from protobuf-go's\n got %x\nwant %x", c.name, got[:min(len(got), 64)], want[:min(len(want), 64)])
		}
	}
}

func TestDiscoveryResponse_AsGoControlPlane(t *testing.T) {
	cases := secretCases(t)
	for _, n := range []int{0, 1, 2, len(cases)} {
		r := &DiscoveryResponse{VersionInfo: "7", Nonce: "7"}
		ref := &discoveryv3.DiscoveryResponse{VersionInfo: "7", Nonce: "7", TypeUrl: SecretTypeURL}
		for _, c := range cases[:n] {
			r.Resources = append(r.Resources, c.ours.Marshal())
			a, err := anypb.New(c.ref)
			if err != nil {
				t.Fatal(err)
			}
			ref.Resources = append(ref.Resources, a)
		}
		got := r.Marshal()
		var dec discoveryv3.DiscoveryResponse
		if err := proto.Unmarshal(got, &dec); err != nil {
			t.Fatalf("%d secrets: go-control-plane cannot decode it: %v", n, err)
		}
		if !proto.Equal(&dec, ref) {
			t.Errorf("%d secrets: decodes as another response", n)
		}
		for i, a := range dec.Resources {
			var s tlsv3.Secret
			if err := a.UnmarshalTo(&s); err != nil || !proto.Equal(&s, cases[i].ref) {
				t.Errorf("%d secrets: resource %d (%s): %v", n, i, a.TypeUrl, err)
			}
		}
		want, _ := proto.MarshalOptions{Deterministic: true}.Marshal(ref)
		if !bytes.Equal(got, want) {
			t.Errorf("%d secrets: bytes differ from protobuf-go's", n)
		}
	}
	// An empty response (no version yet, no Secrets): only the type.
	var dec discoveryv3.DiscoveryResponse
	if err := proto.Unmarshal((&DiscoveryResponse{}).Marshal(), &dec); err != nil || !proto.Equal(&dec, &discoveryv3.DiscoveryResponse{TypeUrl: SecretTypeURL}) {
		t.Errorf("empty response: %v %v", &dec, err)
	}
}

// refRequests are requests as Envoy sends them: its node on the first,
// an ACK, a NACK, names, and fields the agent does not read.
func refRequests() []*discoveryv3.DiscoveryRequest {
	node := &corev3.Node{
		Id: "sidecar", Cluster: "web", UserAgentName: "envoy",
		UserAgentVersionType: &corev3.Node_UserAgentBuildVersion{UserAgentBuildVersion: &corev3.BuildVersion{
			Version: &typev3.SemanticVersion{MajorNumber: 1, MinorNumber: 34},
		}},
	}
	return []*discoveryv3.DiscoveryRequest{
		{},
		{Node: node, TypeUrl: SecretTypeURL, ResourceNames: []string{"spiffe://example.org/web", "ROOTCA"}},
		{VersionInfo: "3", ResponseNonce: "3", TypeUrl: SecretTypeURL, ResourceNames: []string{"default"}},
		{VersionInfo: "2", ResponseNonce: "3", TypeUrl: SecretTypeURL, ResourceNames: []string{"default", "ALL"},
			ErrorDetail: &rpcstatus.Status{Code: 3, Message: "secret rejected: ünïcode"}},
		{ErrorDetail: &rpcstatus.Status{Code: -1}},
		{ResourceNames: []string{"", "x", ""}, ResourceLocators: []*discoveryv3.ResourceLocator{{Name: "loc"}}},
	}
}

func fromRef(r *discoveryv3.DiscoveryRequest) DiscoveryRequest {
	out := DiscoveryRequest{VersionInfo: r.VersionInfo, ResourceNames: r.ResourceNames, TypeURL: r.TypeUrl, ResponseNonce: r.ResponseNonce}
	if r.ErrorDetail != nil {
		out.ErrorDetail = &Status{Code: r.ErrorDetail.Code, Message: r.ErrorDetail.Message}
	}
	return out
}

func equalRequest(a, b DiscoveryRequest) bool {
	return a.VersionInfo == b.VersionInfo && slices.Equal(a.ResourceNames, b.ResourceNames) && a.TypeURL == b.TypeURL &&
		a.ResponseNonce == b.ResponseNonce && (a.ErrorDetail == nil) == (b.ErrorDetail == nil) &&
		(a.ErrorDetail == nil || *a.ErrorDetail == *b.ErrorDetail)
}

func TestDiscoveryRequest_AsGoControlPlane(t *testing.T) {
	for i, ref := range refRequests() {
		b, err := proto.Marshal(ref)
		if err != nil {
			t.Fatal(err)
		}
		var got DiscoveryRequest
		if err := got.Unmarshal(b); err != nil {
			t.Errorf("request %d: %v", i, err)
			continue
		}
		if want := fromRef(ref); !equalRequest(got, want) {
			t.Errorf("request %d: read as %+v, want %+v", i, got, want)
		}
	}
}

// Forms protobuf-go reads in its own way: a field repeated (the last
// wins, messages merge), a known number with another wire type
// (skipped), a group, and what it refuses.
func TestDiscoveryRequest_EdgeForms(t *testing.T) {
	cat := func(parts ...string) []byte { return []byte(strings.Join(parts, "")) }
	cases := []struct {
		name string
		in   []byte
	}{
		{"type_url twice", cat("\x22\x01a", "\x22\x01b")},
		{"error_detail twice, merged", cat("\x32\x02\x08\x05", "\x32\x03\x12\x01m")},
		{"resource_names as a varint", cat("\x18\x07", "\x1a\x01n")},
		{"status code as bytes", cat("\x32\x03\x0a\x01x")},
		{"a group", cat("\x43\x08\x01\x44", "\x22\x01t")},
		{"a fixed64 and a fixed32", cat("\x49", strings.Repeat("\x00", 8), "\x55", strings.Repeat("\x00", 4))},
		{"a negative code", cat("\x32\x0b\x08", strings.Repeat("\xff", 9), "\x01")},
		{"truncated length", cat("\x22\x05ab")},
		{"truncated tag", cat("\x80")},
		{"field number 0", cat("\x02\x00")},
		{"end group alone", cat("\x44")},
		{"unterminated group", cat("\x43\x08\x01")},
		{"invalid UTF-8 in a name", cat("\x1a\x02\xc3\x28")},
		{"invalid UTF-8 in the message", cat("\x32\x04\x12\x02\xff\xfe")},
		{"invalid wire type", cat("\x0f")},
	}
	for _, c := range cases {
		var ref discoveryv3.DiscoveryRequest
		refErr := proto.Unmarshal(c.in, &ref)
		var got DiscoveryRequest
		err := got.Unmarshal(c.in)
		switch {
		case refErr != nil && err == nil:
			t.Errorf("%s: read as %+v, protobuf-go refuses it: %v", c.name, got, refErr)
		case refErr == nil && err != nil:
			t.Errorf("%s: refused (%v), protobuf-go reads it", c.name, err)
		case err != nil && !errors.Is(err, ErrMalformed):
			t.Errorf("%s: error %v is not ErrMalformed", c.name, err)
		case err == nil && !equalRequest(got, fromRef(&ref)):
			t.Errorf("%s: read as %+v, want %+v", c.name, got, fromRef(&ref))
		}
	}
}

// FuzzDiscoveryRequest: whatever protobuf-go reads as a DiscoveryRequest
// is read here with the same values. The converse holds except inside
// the fields skipped (the node, resource locators): protobuf-go checks
// those too.
func FuzzDiscoveryRequest(f *testing.F) {
	for _, r := range refRequests() {
		b, _ := proto.Marshal(r)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var got DiscoveryRequest
		err := got.Unmarshal(b)
		var ref discoveryv3.DiscoveryRequest
		if proto.Unmarshal(b, &ref) != nil {
			return
		}
		if err != nil {
			t.Fatalf("refused (%v), protobuf-go reads %v", err, &ref)
		}
		if want := fromRef(&ref); !equalRequest(got, want) {
			t.Fatalf("read as %+v, want %+v", got, want)
		}
	})
}
