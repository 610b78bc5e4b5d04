package api

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// jsonNames lists the JSON names of t's fields in order, embedded structs
// flattened as encoding/json does.
func jsonNames(t reflect.Type) []string {
	var out []string
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if f.Anonymous && f.Tag.Get("json") == "" {
			out = append(out, jsonNames(f.Type)...)
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "" {
			name = "(untagged " + f.Name + ")"
		}
		out = append(out, name)
	}
	return out
}

// TestWireNames pins every field name of the wire contract: renaming one
// breaks every deployed client and agent, so it must be deliberate (and
// this test changed with it).
func TestWireNames(t *testing.T) {
	for _, tc := range []struct {
		v    any
		want string
	}{
		{ErrorReply{}, "error code"},
		{Metadata{}, "machine_id machine_name app org region image image_digest private_ip tags"},
		{TokenRequest{}, "aud"},
		{TokenReply{}, "token expires_at"},
		{HealthReply{}, "status"},
		{IssuerTokenRequest{}, "aud ttl"},
		{ReloadResult{}, "status generation restart_required"},
		{MachineSpec{}, "name org app region image image_digest private_ip tags source_addrs token_ttl"},
		{MachineUpdate{}, "region image image_digest private_ip set_tags remove_tags source_addrs expect_version"},
		{MachineView{}, "machine_id machine_name app org region image image_digest private_ip tags source_addrs version created_at updated_at"},
		{MintedToken{}, "token token_id expires_at"},
		{MachineAdded{}, "machine token"},
		{MachineList{}, "machines"},
		{MachineRemoved{}, "machine_id status"},
		{MintRequest{}, "ttl"},
		{RevokeRequest{}, "token_id reason token"},
		{TokenRevoked{}, "status token_id"},
		{KeyInfo{}, "kind org id alg state created_at activate_at retired_at"},
		{KeyList{}, "keys"},
		{RotateRequest{}, "kind org alg"},
		{MacaroonKeyRotated{}, "id kind"},
		{X509SVIDRequest{}, "csr"},
		{X509SVIDReply{}, "spiffe_id cert_chain expires_at"},
		{JWTSVIDRequest{}, "spiffe_id aud"},
		{JWTSVIDReply{}, "spiffe_id token expires_at"},
		{SVIDBundleReply{}, "trust_domain spiffe_id bundle federated_bundles"},
		{X509SVIDGuestReply{}, "spiffe_id x509_svid x509_svid_key bundle expires_at"},
		{JWTSVIDGuestRequest{}, "audience"},
		{AdminTokenRequest{}, "label ttl orgs apps regions ops max_machine_ttl source_addrs"},
		{AdminTokenMinted{}, "token token_id label expires_at"},
		{AdminTokenInfo{}, "token_id label created_at expires_at revoked"},
		{AdminTokenList{}, "admin_tokens"},
		{AdminScope{}, "orgs apps regions ops max_machine_ttl source_addrs expires_at"},
		{RemoteStatus{}, "service version admin_token_id scope"},
	} {
		typ := reflect.TypeOf(tc.v)
		if got := strings.Join(jsonNames(typ), " "); got != tc.want {
			t.Errorf("%s JSON names:\n got %s\nwant %s", typ.Name(), got, tc.want)
		}
	}
}

// TestCodes_Stable pins the error codes' values and that no two share one.
func TestCodes_Stable(t *testing.T) {
	codes := map[string]string{
		CodeBadRequest: "bad_request", CodeUnauthorized: "unauthorized", CodeForbidden: "forbidden",
		CodeNotFound: "not_found", CodeMethodNotAllowed: "method_not_allowed", CodeRequestTimeout: "request_timeout",
		CodeConflict: "conflict", CodeBodyTooLarge: "body_too_large", CodeRateLimited: "rate_limited",
		CodeInternal: "internal_error", CodeReloadFailed: "reload_failed", CodeBadGateway: "bad_gateway",
		CodeUpstreamUnavailable: "upstream_unavailable", CodeUpstreamTimeout: "upstream_timeout",
	}
	if len(codes) != 14 {
		t.Fatalf("%d distinct codes, want 14: two constants share a value", len(codes))
	}
	for got, want := range codes {
		if got != want {
			t.Errorf("code %q, want %q", got, want)
		}
	}
}

// TestStandardLibraryOnly: api is the contract other programs import, so
// it must not pull in wicket's internals or any third-party module.
func TestStandardLibraryOnly(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil || len(files) == 0 {
		t.Fatalf("no Go files: %v", err)
	}
	fset := token.NewFileSet()
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		ast, err := parser.ParseFile(fset, f, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range ast.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			first, _, _ := strings.Cut(p, "/")
			if strings.Contains(first, ".") || slices.Contains([]string{"C", "unsafe"}, p) {
				t.Errorf("%s imports %s: api may import only the standard library", f, p)
			}
		}
	}
}
