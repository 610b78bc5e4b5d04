// Package issuer is the Go client of the wicket issuer's remote admin API,
// for host orchestrators: register a machine when it is created, mint its
// machine token to hand to it at boot, remove it when it is destroyed.
//
//	c, err := issuer.New(issuer.Config{
//		URL:       "https://issuer.internal:8651",
//		TokenFile: "/etc/orchestrator/wicket-admin-token", // an admin token, attenuated to this host
//	})
//	added, err := c.AddMachine(ctx, api.MachineSpec{Org: "acme", App: "web", Name: "web-1", Region: "fra"})
//	// hand added.Token.Token to the machine; later:
//	err = c.RemoveMachine(ctx, added.Machine.MachineID)
//
// Every call takes a context, is retried on 503 (the issuer's state store
// is out of reach for a moment) and on connection failures with
// exponential backoff, and fails with an *Error carrying the issuer's
// stable code (api.CodeForbidden, ...) for any other non-2xx reply. The
// request and reply bodies are the types of package api, the same as on
// the issuer's admin socket. See docs/orchestrator.md.
package issuer

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/httpapi"
)

// maxReply bounds a reply read from the issuer.
const maxReply = 4 << 20

// Config configures a Client.
type Config struct {
	// URL is the remote admin API's base URL (https://host:port). Plain
	// http is refused unless the host is loopback or AllowPlaintext is
	// set: the admin token would cross the network in the clear.
	URL            string
	AllowPlaintext bool
	// Token is the admin token; or TokenFile names a file holding it,
	// read on every call so that a replaced file takes effect at once.
	Token     string
	TokenFile string
	// TLS configures the connection (a private CA in RootCAs, a client
	// certificate when the issuer sets remote_admin.client_ca); nil is
	// the system roots.
	TLS *tls.Config
	// Retries is how many times a call is repeated after a 503 or a
	// failure to connect; 0 means 4, a negative value none.
	Retries int
	// Backoff is the first pause between attempts, doubled each time up
	// to 5s; a 503's Retry-After is honored within that cap. 0 means 250ms.
	Backoff time.Duration
	// Timeout bounds each attempt when ctx has no earlier deadline; 0
	// means 30s.
	Timeout time.Duration
	// HTTPClient replaces the client built from TLS (tests, proxies).
	HTTPClient *http.Client
}

// Error is an error reply from the issuer.
type Error struct {
	Status  int    // HTTP status
	Code    string // stable code, one of the api.Code constants; "" if the reply had none
	Message string // the issuer's generic message
	// RetryAfter is the reply's Retry-After (429, 503), zero otherwise.
	RetryAfter time.Duration
}

func (e *Error) Error() string {
	msg := e.Message
	if msg == "" {
		msg = strings.ToLower(http.StatusText(e.Status))
	}
	if e.Code == "" {
		return fmt.Sprintf("wicket issuer: %s (HTTP %d)", msg, e.Status)
	}
	return fmt.Sprintf("wicket issuer: %s (%s, HTTP %d)", msg, e.Code, e.Status)
}

// Code returns the stable code of an *Error in err's chain, or "".
func Code(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}

// Client calls one issuer's remote admin API. It is safe for concurrent use.
type Client struct {
	cfg  Config
	base *url.URL
	hc   *http.Client
}

// New returns a client for cfg. It checks the URL and that a token is
// configured, but does not connect.
func New(cfg Config) (*Client, error) {
	u, err := url.Parse(strings.TrimRight(cfg.URL, "/"))
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" || u.User != nil {
		return nil, errors.New("wicket issuer: URL: want https://host:port")
	}
	if u.Scheme == "http" && !cfg.AllowPlaintext && !httpapi.LoopbackHost(u.Hostname()) {
		return nil, errors.New("wicket issuer: URL: plain http beyond loopback would send the admin token in the clear; use https or set AllowPlaintext")
	}
	if (cfg.Token == "") == (cfg.TokenFile == "") {
		return nil, errors.New("wicket issuer: set Token or TokenFile (one of them)")
	}
	switch {
	case cfg.Retries == 0:
		cfg.Retries = 4
	case cfg.Retries < 0:
		cfg.Retries = 0
	}
	if cfg.Backoff <= 0 {
		cfg.Backoff = 250 * time.Millisecond
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	hc := cfg.HTTPClient
	if hc == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		if cfg.TLS != nil {
			tr.TLSClientConfig = cfg.TLS.Clone()
		}
		hc = &http.Client{Transport: tr}
	}
	// A redirect would carry the admin token elsewhere: never follow one.
	nc := *hc
	nc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &Client{cfg: cfg, base: u, hc: &nc}, nil
}

func (c *Client) token() (string, error) {
	if c.cfg.TokenFile == "" {
		return c.cfg.Token, nil
	}
	b, err := os.ReadFile(c.cfg.TokenFile)
	if err != nil {
		return "", fmt.Errorf("wicket issuer: admin token file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", errors.New("wicket issuer: admin token file is empty")
	}
	return tok, nil
}

// Do sends one request (path like "/v1/machines", body JSON or nil) and
// returns the reply's status and body, whatever the status: 503s and
// connection failures are retried first. The CLI prints replies as they
// come; the typed calls are built on it.
func (c *Client) Do(ctx context.Context, method, path string, body []byte) (int, []byte, error) {
	tok, err := c.token()
	if err != nil {
		return 0, nil, err
	}
	pause := c.cfg.Backoff
	for attempt := 0; ; attempt++ {
		status, reply, hdr, err := c.once(ctx, method, path, body, tok)
		retry := err != nil && dialFailed(err) || err == nil && status == http.StatusServiceUnavailable
		if !retry || attempt >= c.cfg.Retries {
			return status, reply, err
		}
		wait := pause
		if ra := retryAfter(hdr); ra > 0 {
			wait = min(ra, 5*time.Second)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			if err == nil {
				return status, reply, nil // the last answer, not a bare ctx error
			}
			return 0, nil, ctx.Err()
		case <-t.C:
		}
		pause = min(2*pause, 5*time.Second)
	}
}

func (c *Client) once(ctx context.Context, method, path string, body []byte, tok string) (int, []byte, http.Header, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base.String()+path, rd)
	if err != nil {
		return 0, nil, nil, fmt.Errorf("wicket issuer: %w", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := c.hc.Do(req)
	if err != nil {
		// url.Error quotes the URL, never the header: safe to return.
		return 0, nil, nil, fmt.Errorf("wicket issuer: %w", err)
	}
	defer resp.Body.Close()
	reply, err := io.ReadAll(io.LimitReader(resp.Body, maxReply))
	if err != nil {
		return 0, nil, nil, fmt.Errorf("wicket issuer: read reply: %w", err)
	}
	return resp.StatusCode, reply, resp.Header, nil
}

// dialFailed reports whether err is a failure to connect: the request was
// never sent, so repeating it cannot apply it twice.
func dialFailed(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "dial"
}

func retryAfter(h http.Header) time.Duration {
	if h == nil {
		return 0
	}
	s, err := strconv.Atoi(h.Get("Retry-After"))
	if err != nil || s <= 0 {
		return 0
	}
	return time.Duration(s) * time.Second
}

// call is Do for the typed calls: a 2xx reply is decoded into out (when
// not nil), any other becomes an *Error.
func (c *Client) call(ctx context.Context, method, path string, in, out any) error {
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return fmt.Errorf("wicket issuer: encode request: %w", err)
		}
	}
	status, reply, err := c.do(ctx, method, path, body)
	if err != nil {
		return err
	}
	if out != nil {
		if err := json.Unmarshal(reply, out); err != nil {
			return fmt.Errorf("wicket issuer: decode reply (HTTP %d): %w", status, err)
		}
	}
	return nil
}

func (c *Client) do(ctx context.Context, method, path string, body []byte) (int, []byte, error) {
	status, reply, err := c.Do(ctx, method, path, body)
	if err != nil {
		return 0, nil, err
	}
	if status/100 != 2 {
		e := &Error{Status: status}
		var er api.ErrorReply
		if json.Unmarshal(reply, &er) == nil {
			e.Code, e.Message = er.Code, er.Error
		}
		return status, nil, e
	}
	return status, reply, nil
}

func machinePath(ref string) string { return "/v1/machines/" + url.PathEscape(ref) }

// AddMachine registers a machine and returns it with its first machine
// token (shown once). An empty spec.TokenTTL is the issuer's default, cut
// to the admin token's cap.
func (c *Client) AddMachine(ctx context.Context, spec api.MachineSpec) (*api.MachineAdded, error) {
	var out api.MachineAdded
	if err := c.call(ctx, http.MethodPost, "/v1/machines", spec, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// GetMachine returns a machine by id or "org/app/name".
func (c *Client) GetMachine(ctx context.Context, ref string) (*api.MachineView, error) {
	var out api.MachineView
	if err := c.call(ctx, http.MethodGet, machinePath(ref), nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// ListMachines returns the machines the admin token may see.
func (c *Client) ListMachines(ctx context.Context) ([]api.MachineView, error) {
	var out api.MachineList
	if err := c.call(ctx, http.MethodGet, "/v1/machines", nil, &out); err != nil {
		return nil, err
	}
	return out.Machines, nil
}

// UpdateMachine changes a machine's metadata (nil fields are kept); its
// agent's long polls see the change at once.
func (c *Client) UpdateMachine(ctx context.Context, ref string, u api.MachineUpdate) (*api.MachineView, error) {
	var out api.MachineView
	if err := c.call(ctx, http.MethodPatch, machinePath(ref), u, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// RemoveMachine removes a machine: its tokens stop working at once.
func (c *Client) RemoveMachine(ctx context.Context, ref string) error {
	return c.call(ctx, http.MethodDelete, machinePath(ref), nil, nil)
}

// MintToken mints a new machine token for a machine; ttl 0 is the
// issuer's default (cut to the admin token's cap).
func (c *Client) MintToken(ctx context.Context, ref string, ttl time.Duration) (*api.MintedToken, error) {
	req := api.MintRequest{}
	if ttl > 0 {
		req.TTL = ttl.String()
	}
	var out api.MintedToken
	if err := c.call(ctx, http.MethodPost, machinePath(ref)+"/tokens", req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// RevokeToken revokes a machine token (and every copy made from it). The
// remote API takes the token itself, so the issuer can check that it
// belongs to a machine the admin token may manage.
func (c *Client) RevokeToken(ctx context.Context, machineToken, reason string) (*api.TokenRevoked, error) {
	var out api.TokenRevoked
	if err := c.call(ctx, http.MethodPost, "/v1/revocations", api.RevokeRequest{Token: machineToken, Reason: reason}, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Status returns the admin token's id and effective scope.
func (c *Client) Status(ctx context.Context) (*api.RemoteStatus, error) {
	var out api.RemoteStatus
	if err := c.call(ctx, http.MethodGet, "/v1/status", nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// TLSFiles returns a TLS configuration from PEM files: caFile, when set,
// is the only CA trusted for the issuer's certificate (else the system
// roots); certFile and keyFile, when set, are the client certificate the
// issuer asks for when it sets remote_admin.client_ca.
func TLSFiles(caFile, certFile, keyFile string) (*tls.Config, error) {
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("wicket issuer: CA file: %w", err)
		}
		c.RootCAs = x509.NewCertPool()
		if !c.RootCAs.AppendCertsFromPEM(pem) {
			return nil, errors.New("wicket issuer: CA file: no certificate in it")
		}
	}
	if (certFile == "") != (keyFile == "") {
		return nil, errors.New("wicket issuer: client certificate: set both the certificate and the key file")
	}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("wicket issuer: client certificate: %w", err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}
