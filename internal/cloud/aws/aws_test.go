package aws

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

const okXML = `<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>dev:dev-app:m1</SubjectFromWebIdentityToken>
    <Credentials>
      <AccessKeyId>ASIAEXAMPLE</AccessKeyId>
      <SecretAccessKey>secret/key</SecretAccessKey>
      <SessionToken>session-token</SessionToken>
      <Expiration>2030-01-02T03:04:05Z</Expiration>
    </Credentials>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata><RequestId>r1</RequestId></ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>`

const errXML = `<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <Error><Type>Sender</Type><Code>InvalidIdentityToken</Code><Message>Incorrect token
  audience</Message></Error>
  <RequestId>r2</RequestId>
</ErrorResponse>`

// stsServer is a stand-in for STS's query API on loopback that records
// the forms it receives. (The real exchange runs against MinIO's STS in
// internal/e2e.)
type stsServer struct {
	*httptest.Server
	mu    sync.Mutex
	forms []url.Values
	auth  []string
}

func newSTS(t *testing.T, status int, body string) *stsServer {
	s := &stsServer{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.ParseForm()
		s.mu.Lock()
		s.forms = append(s.forms, r.PostForm)
		s.auth = append(s.auth, r.Header.Get("Authorization"))
		s.mu.Unlock()
		w.Header().Set("Content-Type", "text/xml")
		w.WriteHeader(status)
		w.Write([]byte(body))
	}))
	t.Cleanup(s.Close)
	return s
}

func TestCredentialProcess(t *testing.T) {
	t.Setenv("AWS_REGION", "eu-west-1")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	sts := newSTS(t, 200, okXML)
	got, err := CredentialProcess(ctx, "the.jwt.token", "arn:aws:iam::123456789012:role/app", "web-1", time.Hour, sts.URL)
	if err != nil {
		t.Fatal(err)
	}
	want := &ProcessCredentials{Version: 1, AccessKeyID: "ASIAEXAMPLE", SecretAccessKey: "secret/key",
		SessionToken: "session-token", Expiration: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("credentials (-want +got):\n%s", diff)
	}
	form := sts.forms[0]
	for k, v := range map[string]string{"Action": "AssumeRoleWithWebIdentity", "WebIdentityToken": "the.jwt.token",
		"RoleArn": "arn:aws:iam::123456789012:role/app", "RoleSessionName": "web-1", "DurationSeconds": "3600"} {
		if form.Get(k) != v {
			t.Errorf("form %s = %q, want %q", k, form.Get(k), v)
		}
	}
	if sts.auth[0] != "" {
		t.Errorf("request was signed (%q); the token is the only credential", sts.auth[0])
	}

	b, _ := json.Marshal(got)
	if string(b) != `{"Version":1,"AccessKeyId":"ASIAEXAMPLE","SecretAccessKey":"secret/key","SessionToken":"session-token","Expiration":"2030-01-02T03:04:05Z"}` {
		t.Errorf("credential_process JSON: %s", b)
	}
	var back ProcessCredentials
	if err := json.Unmarshal(b, &back); err != nil || !back.Expiration.Equal(got.Expiration) || back.AccessKeyID != got.AccessKeyID {
		t.Errorf("round trip: %+v %v", back, err)
	}

	// duration 0: STS decides, no DurationSeconds sent.
	if _, err := CredentialProcess(ctx, "t", "arn:aws:iam::1:role/r", "s1", 0, sts.URL); err != nil {
		t.Fatal(err)
	}
	if _, ok := sts.forms[1]["DurationSeconds"]; ok {
		t.Errorf("DurationSeconds sent for duration 0")
	}
}

func TestCredentialProcess_Errors(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	rejecting := newSTS(t, 400, errXML)
	for _, tc := range []struct {
		name                         string
		token, role, session, server string
		duration                     time.Duration
		want                         string
		stsCode                      string
	}{
		{name: "sts rejects", token: "tok", role: "arn:r", session: "s1", server: rejecting.URL,
			want: "STS rejected AssumeRoleWithWebIdentity: InvalidIdentityToken: Incorrect token audience", stsCode: "InvalidIdentityToken"},
		{name: "empty token", role: "arn:r", session: "s1", server: rejecting.URL, want: "empty web identity token"},
		{name: "no role", token: "tok", session: "s1", server: rejecting.URL, want: "role ARN is required"},
		{name: "bad session", token: "tok", role: "arn:r", session: "dev:app", server: rejecting.URL, want: "session name"},
		{name: "short duration", token: "tok", role: "arn:r", session: "s1", duration: time.Minute, server: rejecting.URL, want: "outside 15m0s..12h0m0s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := CredentialProcess(ctx, tc.token, tc.role, tc.session, tc.duration, tc.server)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("multi-line error: %q", err)
			}
			var se *STSError
			if errors.As(err, &se) != (tc.stsCode != "") || (se != nil && se.Code != tc.stsCode) {
				t.Errorf("STSError = %+v, want code %q", se, tc.stsCode)
			}
		})
	}
}

func TestEnvAWS(t *testing.T) {
	for _, tc := range []struct {
		session string
		want    []string
	}{
		{"web-1", []string{"AWS_ROLE_ARN=arn:aws:iam::1:role/r", "AWS_WEB_IDENTITY_TOKEN_FILE=/run/wicket/aws-token", "AWS_ROLE_SESSION_NAME=web-1"}},
		{"", []string{"AWS_ROLE_ARN=arn:aws:iam::1:role/r", "AWS_WEB_IDENTITY_TOKEN_FILE=/run/wicket/aws-token"}},
	} {
		if diff := cmp.Diff(tc.want, EnvAWS("arn:aws:iam::1:role/r", "/run/wicket/aws-token", tc.session)); diff != "" {
			t.Errorf("EnvAWS(%q) (-want +got):\n%s", tc.session, diff)
		}
	}
}

func TestRegion(t *testing.T) {
	t.Setenv("AWS_REGION", "")
	t.Setenv("AWS_DEFAULT_REGION", "")
	if Region() != "us-east-1" {
		t.Errorf("default region %q", Region())
	}
	t.Setenv("AWS_DEFAULT_REGION", "ap-south-1")
	if Region() != "ap-south-1" {
		t.Errorf("AWS_DEFAULT_REGION ignored")
	}
	t.Setenv("AWS_REGION", "eu-central-1")
	if Region() != "eu-central-1" {
		t.Errorf("AWS_REGION does not win")
	}
}
