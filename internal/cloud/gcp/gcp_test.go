package gcp

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/oauth2/google/externalaccount"
)

const (
	testAudience = "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/wicket/providers/dev"
	testSA       = "app@proj.iam.gserviceaccount.com"
	helperEnv    = "WICKET_GCP_TEST_EXECUTABLE"
)

// TestMain doubles as the executable Google's library runs: with
// helperEnv set, the test binary prints an ExecutableResponse for the
// token in that variable (after checking the library told it the
// audience, as `wicket gcp executable` relies on) and exits.
func TestMain(m *testing.M) {
	if tok := os.Getenv(helperEnv); tok != "" {
		var resp ExecutableResponse
		if aud := os.Getenv("GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE"); aud != testAudience {
			resp = ExecutableError("bad_audience", fmt.Sprintf("GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE=%q", aud))
		} else {
			resp = ExecutableSuccess(tok, time.Now().Add(10*time.Minute))
		}
		json.NewEncoder(os.Stdout).Encode(resp)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// fakeGoogle stands in for sts.googleapis.com and iamcredentials on
// loopback, recording what it receives.
type fakeGoogle struct {
	*httptest.Server
	mu        sync.Mutex
	stsForms  []url.Values
	impAuth   []string
	impPaths  []string
	stsStatus int
}

func newFakeGoogle(t *testing.T) *fakeGoogle {
	g := &fakeGoogle{stsStatus: 200}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/token", func(w http.ResponseWriter, r *http.Request) {
		r.ParseForm()
		g.mu.Lock()
		g.stsForms = append(g.stsForms, r.PostForm)
		g.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"access_token":"federated-access-token","issued_token_type":"urn:ietf:params:oauth:token-type:access_token","token_type":"Bearer","expires_in":3600}`))
	})
	mux.HandleFunc("POST /v1/projects/-/serviceAccounts/", func(w http.ResponseWriter, r *http.Request) {
		g.mu.Lock()
		g.impAuth = append(g.impAuth, r.Header.Get("Authorization"))
		g.impPaths = append(g.impPaths, r.URL.Path)
		g.mu.Unlock()
		fmt.Fprintf(w, `{"accessToken":"sa-access-token","expireTime":%q}`, time.Now().Add(time.Hour).UTC().Format(time.RFC3339))
	})
	g.Server = httptest.NewServer(mux)
	t.Cleanup(g.Close)
	return g
}

// libraryConfig turns our JSON into the Config Google's Go library uses,
// the way google.CredentialsFromJSON does, with the Google endpoints
// replaced by the fake.
func libraryConfig(t *testing.T, raw []byte, g *fakeGoogle) externalaccount.Config {
	t.Helper()
	var f struct {
		Type                           string                           `json:"type"`
		Audience                       string                           `json:"audience"`
		SubjectTokenType               string                           `json:"subject_token_type"`
		TokenURL                       string                           `json:"token_url"`
		ServiceAccountImpersonationURL string                           `json:"service_account_impersonation_url"`
		CredentialSource               externalaccount.CredentialSource `json:"credential_source"`
	}
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		t.Fatalf("our JSON does not fit the library's fields: %v\n%s", err, raw)
	}
	if f.Type != "external_account" || f.TokenURL != TokenURL {
		t.Fatalf("type %q token_url %q", f.Type, f.TokenURL)
	}
	c := externalaccount.Config{
		Audience: f.Audience, SubjectTokenType: f.SubjectTokenType, TokenURL: g.URL + "/v1/token",
		CredentialSource: &f.CredentialSource, Scopes: []string{"https://www.googleapis.com/auth/cloud-platform"},
	}
	if f.ServiceAccountImpersonationURL != "" {
		u, err := url.Parse(f.ServiceAccountImpersonationURL)
		if err != nil || u.Host != "iamcredentials.googleapis.com" {
			t.Fatalf("impersonation URL %q", f.ServiceAccountImpersonationURL)
		}
		c.ServiceAccountImpersonationURL = g.URL + u.Path
	}
	return c
}

// TestExternalAccount_GoogleLibrary runs Google's own external account
// code on our credentials file, file- and executable-sourced, with and
// without impersonation, and checks what reaches "Google".
func TestExternalAccount_GoogleLibrary(t *testing.T) {
	const jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJkZXY6ZGV2LWFwcDptMSJ9.c2ln"
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(helperEnv, jwt)
	t.Setenv("GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES", "1")
	tokenFile := filepath.Join(t.TempDir(), "gcp-token")
	if err := os.WriteFile(tokenFile, []byte(jwt), 0o600); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name string
		sa   string
		src  CredentialSource
		want string // access token the library ends with
	}{
		{"file", "", CredentialSource{File: tokenFile}, "federated-access-token"},
		{"executable", "", CredentialSource{Command: self + " -test.run=^$"}, "federated-access-token"},
		{"executable with output file", "", CredentialSource{Command: self, Timeout: 10 * time.Second, OutputFile: filepath.Join(t.TempDir(), "cache.json")}, "federated-access-token"},
		{"file, impersonating", testSA, CredentialSource{File: tokenFile}, "sa-access-token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			ea, err := ExternalAccountConfig(testAudience, tc.sa, tc.src)
			if err != nil {
				t.Fatal(err)
			}
			g := newFakeGoogle(t)
			ts, err := externalaccount.NewTokenSource(ctx, libraryConfig(t, ea.JSON(), g))
			if err != nil {
				t.Fatal(err)
			}
			tok, err := ts.Token()
			if err != nil {
				t.Fatalf("Google's library failed: %v", err)
			}
			if tok.AccessToken != tc.want {
				t.Errorf("access token %q, want %q", tok.AccessToken, tc.want)
			}
			if len(g.stsForms) != 1 {
				t.Fatalf("%d STS calls", len(g.stsForms))
			}
			form := g.stsForms[0]
			for k, v := range map[string]string{
				"grant_type":         "urn:ietf:params:oauth:grant-type:token-exchange",
				"subject_token":      jwt,
				"subject_token_type": SubjectTokenTypeJWT,
				"audience":           testAudience,
			} {
				if form.Get(k) != v {
					t.Errorf("STS got %s=%q, want %q", k, form.Get(k), v)
				}
			}
			if tc.sa != "" {
				want := []string{"/v1/projects/-/serviceAccounts/" + testSA + ":generateAccessToken"}
				if diff := cmp.Diff(want, g.impPaths); diff != "" || len(g.impAuth) != 1 || g.impAuth[0] != "Bearer federated-access-token" {
					t.Errorf("impersonation: paths %v auth %v", g.impPaths, g.impAuth)
				}
			}
		})
	}
}

// TestExecutable_ErrorResponse: the library parses our error form and
// shows its code and message. (Go's library reads stdout only when the
// executable exits 0; `wicket gcp executable` exits 1 on failure, which the
// library reports as such, and prints the same form for libraries and
// people that do read it.)
func TestExecutable_ErrorResponse(t *testing.T) {
	t.Setenv("GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES", "1")
	dir := t.TempDir()
	script := filepath.Join(dir, "fail.sh")
	b, _ := json.Marshal(ExecutableError("permission_denied", "the policy does not allow this caller"))
	if err := os.WriteFile(script, []byte("#!/bin/sh\ncat <<'EOF'\n"+string(b)+"\nEOF\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	ea, err := ExternalAccountConfig(testAudience, "", CredentialSource{Command: script})
	if err != nil {
		t.Fatal(err)
	}
	g := newFakeGoogle(t)
	ts, err := externalaccount.NewTokenSource(context.Background(), libraryConfig(t, ea.JSON(), g))
	if err != nil {
		t.Fatal(err)
	}
	_, err = ts.Token()
	if err == nil || !strings.Contains(err.Error(), "permission_denied") || !strings.Contains(err.Error(), "the policy does not allow this caller") {
		t.Errorf("err = %v, want our code and message", err)
	}
	if len(g.stsForms) != 0 {
		t.Errorf("STS was called after a failed executable")
	}
}

func TestExecutableResponseJSON(t *testing.T) {
	exp := time.Unix(1900000000, 0)
	for _, tc := range []struct {
		resp ExecutableResponse
		want string
	}{
		{ExecutableSuccess("a.b.c", exp), `{"version":1,"success":true,"token_type":"urn:ietf:params:oauth:token-type:jwt","id_token":"a.b.c","expiration_time":1900000000}`},
		{ExecutableError("denied", "no"), `{"version":1,"success":false,"code":"denied","message":"no"}`},
		{ExecutableError("", ""), `{"version":1,"success":false,"code":"wicket_error","message":"wicket could not get a token"}`},
	} {
		b, _ := json.Marshal(tc.resp)
		if string(b) != tc.want {
			t.Errorf("got  %s\nwant %s", b, tc.want)
		}
	}
}

func TestExternalAccountConfig(t *testing.T) {
	for _, tc := range []struct {
		name     string
		aud, sa  string
		src      CredentialSource
		want     string // JSON, compact
		wantErrs string
	}{
		{name: "file", aud: testAudience, src: CredentialSource{File: "/run/wicket/gcp-token"},
			want: `{"type":"external_account","audience":"` + testAudience + `","subject_token_type":"urn:ietf:params:oauth:token-type:jwt","token_url":"https://sts.googleapis.com/v1/token","credential_source":{"file":"/run/wicket/gcp-token","format":{"type":"text"}}}`},
		{name: "executable + sa", aud: testAudience, sa: testSA, src: CredentialSource{Command: "/usr/local/bin/wicket gcp executable", OutputFile: "/tmp/out.json"},
			want: `{"type":"external_account","audience":"` + testAudience + `","subject_token_type":"urn:ietf:params:oauth:token-type:jwt","token_url":"https://sts.googleapis.com/v1/token","service_account_impersonation_url":"https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/app@proj.iam.gserviceaccount.com:generateAccessToken","credential_source":{"executable":{"command":"/usr/local/bin/wicket gcp executable","timeout_millis":30000,"output_file":"/tmp/out.json"}}}`},
		{name: "bad audience", aud: "sts.amazonaws.com", src: CredentialSource{File: "/f"}, wantErrs: "resource name"},
		{name: "bad sa", aud: testAudience, sa: "x/y@z", src: CredentialSource{File: "/f"}, wantErrs: "not an email"},
		{name: "neither", aud: testAudience, wantErrs: "exactly one"},
		{name: "both", aud: testAudience, src: CredentialSource{File: "/f", Command: "/c"}, wantErrs: "exactly one"},
		{name: "relative file", aud: testAudience, src: CredentialSource{File: "f"}, wantErrs: "absolute"},
		{name: "relative command", aud: testAudience, src: CredentialSource{Command: "wicket gcp executable"}, wantErrs: "absolute"},
		{name: "timeout", aud: testAudience, src: CredentialSource{Command: "/c", Timeout: time.Second}, wantErrs: "timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ea, err := ExternalAccountConfig(tc.aud, tc.sa, tc.src)
			if tc.wantErrs != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErrs) {
					t.Fatalf("err = %v, want %q", err, tc.wantErrs)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			b, _ := json.Marshal(ea)
			if string(b) != tc.want {
				t.Errorf("got  %s\nwant %s", b, tc.want)
			}
		})
	}
}
