// Package gcp speaks Google Cloud's workload identity federation formats:
// the external_account credentials file that Google's client libraries and
// gcloud load, and the response of an executable-sourced credential. The
// exchange itself (wicket JWT → Google STS → access token) is done by
// Google's libraries; wicket only supplies the subject token.
package gcp

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"
)

// Values Google's libraries expect.
const (
	SubjectTokenTypeJWT = "urn:ietf:params:oauth:token-type:jwt"
	TokenURL            = "https://sts.googleapis.com/v1/token"
	impersonationURL    = "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/%s:generateAccessToken"
)

// Executable timeouts Google's libraries accept (timeout_millis).
const (
	DefaultExecutableTimeout = 30 * time.Second
	MinExecutableTimeout     = 5 * time.Second
	MaxExecutableTimeout     = 120 * time.Second
)

// ExecutableResponse is what an executable-sourced credential prints on
// stdout (version 1): a JWT on success, a code and message on failure.
type ExecutableResponse struct {
	Version        int    `json:"version"`
	Success        bool   `json:"success"`
	TokenType      string `json:"token_type,omitempty"`
	IDToken        string `json:"id_token,omitempty"`
	ExpirationTime int64  `json:"expiration_time,omitempty"` // unix seconds
	Code           string `json:"code,omitempty"`
	Message        string `json:"message,omitempty"`
}

// ExecutableSuccess is the response carrying token until expiresAt.
func ExecutableSuccess(token string, expiresAt time.Time) ExecutableResponse {
	return ExecutableResponse{Version: 1, Success: true, TokenType: SubjectTokenTypeJWT, IDToken: token, ExpirationTime: expiresAt.Unix()}
}

// ExecutableError is the failure response; Google's libraries show code
// and message to the user (both must be non-empty).
func ExecutableError(code, message string) ExecutableResponse {
	if code == "" {
		code = "wicket_error"
	}
	if message == "" {
		message = "wicket could not get a token"
	}
	return ExecutableResponse{Version: 1, Success: false, Code: code, Message: message}
}

// CredentialSource says where Google's libraries get the subject token:
// exactly one of File (a token file the agent keeps fresh) or Command (an
// executable such as `wicket gcp executable`).
type CredentialSource struct {
	File string
	// Command is the full command line; its program must be an absolute path.
	Command string
	// Timeout bounds one run of Command (default 30s, 5s..120s).
	Timeout time.Duration
	// OutputFile, optional with Command, is where the executable caches its
	// response and the libraries look first.
	OutputFile string
}

// ExternalAccount is the external_account credentials file.
type ExternalAccount struct {
	Type                           string           `json:"type"`
	Audience                       string           `json:"audience"`
	SubjectTokenType               string           `json:"subject_token_type"`
	TokenURL                       string           `json:"token_url"`
	ServiceAccountImpersonationURL string           `json:"service_account_impersonation_url,omitempty"`
	CredentialSource               credentialSource `json:"credential_source"`
}

type credentialSource struct {
	File       string      `json:"file,omitempty"`
	Format     *format     `json:"format,omitempty"`
	Executable *executable `json:"executable,omitempty"`
}

type format struct {
	Type string `json:"type"`
}

type executable struct {
	Command       string `json:"command"`
	TimeoutMillis int    `json:"timeout_millis"`
	OutputFile    string `json:"output_file,omitempty"`
}

// ExternalAccountConfig builds the external_account credentials for the
// workload identity provider named by audience
// ("//iam.googleapis.com/projects/N/locations/global/workloadIdentityPools/P/providers/X"),
// impersonating serviceAccountEmail when it is not empty.
func ExternalAccountConfig(audience, serviceAccountEmail string, src CredentialSource) (*ExternalAccount, error) {
	if !strings.HasPrefix(audience, "//iam.") {
		return nil, fmt.Errorf("gcp: audience %q: want the provider's resource name, //iam.googleapis.com/projects/…/providers/…", audience)
	}
	ea := &ExternalAccount{
		Type:             "external_account",
		Audience:         audience,
		SubjectTokenType: SubjectTokenTypeJWT,
		TokenURL:         TokenURL,
	}
	if serviceAccountEmail != "" {
		if at := strings.IndexByte(serviceAccountEmail, '@'); at < 1 || at == len(serviceAccountEmail)-1 || strings.ContainsAny(serviceAccountEmail, "/:?# ") {
			return nil, fmt.Errorf("gcp: service account %q is not an email address", serviceAccountEmail)
		}
		ea.ServiceAccountImpersonationURL = fmt.Sprintf(impersonationURL, serviceAccountEmail)
	}
	switch {
	case (src.File == "") == (src.Command == ""):
		return nil, errors.New("gcp: want exactly one of a token file or an executable command")
	case src.File != "":
		if !filepath.IsAbs(src.File) {
			return nil, fmt.Errorf("gcp: token file %q: want an absolute path", src.File)
		}
		ea.CredentialSource = credentialSource{File: src.File, Format: &format{Type: "text"}}
	default:
		prog, _, _ := strings.Cut(src.Command, " ")
		if !filepath.IsAbs(prog) {
			return nil, fmt.Errorf("gcp: command %q: the program must be an absolute path", prog)
		}
		timeout := src.Timeout
		if timeout == 0 {
			timeout = DefaultExecutableTimeout
		}
		if timeout < MinExecutableTimeout || timeout > MaxExecutableTimeout {
			return nil, fmt.Errorf("gcp: executable timeout %s outside %s..%s", timeout, MinExecutableTimeout, MaxExecutableTimeout)
		}
		if src.OutputFile != "" && !filepath.IsAbs(src.OutputFile) {
			return nil, fmt.Errorf("gcp: output file %q: want an absolute path", src.OutputFile)
		}
		ea.CredentialSource = credentialSource{Executable: &executable{
			Command: src.Command, TimeoutMillis: int(timeout / time.Millisecond), OutputFile: src.OutputFile,
		}}
	}
	return ea, nil
}

// JSON is the credentials file's content, indented.
func (ea *ExternalAccount) JSON() []byte {
	b, _ := json.MarshalIndent(ea, "", "  ")
	return append(b, '\n')
}
