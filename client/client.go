// Package client talks to the wicket agent's guest API over its Unix
// socket: the machine's metadata (with long-poll watches) and OIDC tokens
// for cloud and tool federation.
//
//	c := client.New("") // $WICKET_SOCKET or /run/wicket/api.sock
//	tok, exp, err := c.OIDCToken(ctx, "sts.amazonaws.com")
//
// Errors from the agent are *Error values carrying its stable code, one of
// the api.Code constants. The bodies are the types of package api.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/wicket-sh/wicket/api"
)

// maxReply bounds a reply read from the agent.
const maxReply = 1 << 20

// Error is an error reply from the agent.
type Error struct {
	Status  int    // HTTP status
	Code    string // stable code (api.CodeNotFound, ...); "" if the reply had none
	Message string // the agent's generic message
	// RetryAfter is the agent's Retry-After on a 429 (zero otherwise).
	RetryAfter time.Duration
}

func (e *Error) Error() string {
	msg := e.Message
	if msg == "" {
		msg = strings.ToLower(http.StatusText(e.Status))
	}
	if e.Code == "" {
		return fmt.Sprintf("wicket agent: %s (HTTP %d)", msg, e.Status)
	}
	return fmt.Sprintf("wicket agent: %s (%s, HTTP %d)", msg, e.Code, e.Status)
}

// Client is a guest API client. It is safe for concurrent use.
type Client struct {
	socket string
	hc     *http.Client
	// Timeout bounds each call other than Watch when ctx has no earlier
	// deadline. Default 30s.
	Timeout time.Duration
}

// New returns a client for the agent at socketPath; "" means $WICKET_SOCKET
// (api.SocketEnv), or api.DefaultAPISocket when that is unset.
func New(socketPath string) *Client {
	if socketPath == "" {
		socketPath = os.Getenv(api.SocketEnv)
	}
	if socketPath == "" {
		socketPath = api.DefaultAPISocket
	}
	return &Client{
		socket:  socketPath,
		Timeout: 30 * time.Second,
		hc: &http.Client{Transport: &http.Transport{
			// The agent is the socket: no proxy, whatever the environment says.
			Proxy: nil,
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", socketPath)
			},
			MaxIdleConnsPerHost: 4,
			IdleConnTimeout:     30 * time.Second,
			DisableCompression:  true,
		}},
	}
}

// Socket returns the socket path the client dials.
func (c *Client) Socket() string { return c.socket }

// do makes one request and returns the reply body of a 2xx reply, or an
// *Error for any other status.
func (c *Client) do(ctx context.Context, method, path string, body []byte, hdr map[string]string, timeout time.Duration) ([]byte, http.Header, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	// The host is ignored by the agent; the socket is the address.
	req, err := http.NewRequestWithContext(ctx, method, "http://wicket"+path, rd)
	if err != nil {
		return nil, nil, err
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		var oe *net.OpError
		if errors.As(err, &oe) && oe.Op == "dial" {
			inner := oe.Err
			var se *os.SyscallError
			if errors.As(inner, &se) {
				inner = se.Err
			}
			return nil, nil, fmt.Errorf("wicket agent at %s: cannot connect: %w", c.socket, inner)
		}
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, nil, fmt.Errorf("wicket agent at %s: %w", c.socket, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxReply+1))
	if err != nil {
		return nil, nil, fmt.Errorf("wicket agent at %s: read reply: %w", c.socket, err)
	}
	if len(data) > maxReply {
		return nil, nil, fmt.Errorf("wicket agent at %s: reply larger than %d bytes", c.socket, maxReply)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		e := &Error{Status: resp.StatusCode}
		var body api.ErrorReply
		if json.Unmarshal(data, &body) == nil {
			e.Code, e.Message = body.Code, body.Error
		}
		if ra := resp.Header.Get("Retry-After"); ra != "" {
			var secs int
			if _, err := fmt.Sscanf(ra, "%d", &secs); err == nil && secs > 0 {
				e.RetryAfter = time.Duration(secs) * time.Second
			}
		}
		return nil, nil, e
	}
	return data, resp.Header, nil
}

// Metadata returns the machine's metadata and its ETag.
func (c *Client) Metadata(ctx context.Context) (api.Metadata, string, error) {
	return c.metadata(ctx, "/v1/metadata", c.Timeout)
}

// Watch waits until the metadata's ETag differs from etag, or timeout
// (api.MinWait..api.MaxWait, 1s..120s) passes, and returns the metadata then current with its ETag.
// An empty etag returns at once. Call it in a loop, passing the ETag it
// returned, to follow changes.
func (c *Client) Watch(ctx context.Context, etag string, timeout time.Duration) (api.Metadata, string, error) {
	if timeout < api.MinWait || timeout > api.MaxWait {
		return api.Metadata{}, "", fmt.Errorf("wicket: watch timeout %v outside %v..%v", timeout, api.MinWait, api.MaxWait)
	}
	q := url.Values{"wait": {"true"}, "etag": {etag}, "timeout": {timeout.String()}}
	return c.metadata(ctx, "/v1/metadata?"+q.Encode(), timeout+10*time.Second)
}

func (c *Client) metadata(ctx context.Context, path string, timeout time.Duration) (api.Metadata, string, error) {
	data, h, err := c.do(ctx, http.MethodGet, path, nil, nil, timeout)
	if err != nil {
		return api.Metadata{}, "", err
	}
	var m api.Metadata
	if err := json.Unmarshal(data, &m); err != nil {
		return api.Metadata{}, "", fmt.Errorf("wicket agent at %s: metadata is not JSON: %w", c.socket, err)
	}
	return m, h.Get("ETag"), nil
}

// Get returns one metadata value: a field ("region", "machine_id") or a tag
// ("tags/<name>"). An absent key is an *Error with Code "not_found".
func (c *Client) Get(ctx context.Context, key string) (string, error) {
	parts := strings.Split(key, "/")
	if len(parts) > 2 || (len(parts) == 2 && parts[0] != "tags") {
		return "", fmt.Errorf("wicket: metadata key %q: want a field name or tags/<name>", key)
	}
	path := "/v1/metadata"
	for _, p := range parts {
		if p == "" || p == "." || p == ".." {
			return "", fmt.Errorf("wicket: metadata key %q: empty or dot segment", key)
		}
		path += "/" + url.PathEscape(p)
	}
	data, _, err := c.do(ctx, http.MethodGet, path, nil, nil, c.Timeout)
	if err != nil {
		return "", err
	}
	return string(data), nil
}

// OIDCToken returns a signed OIDC token (a JWT) for aud, and when it
// expires. An empty aud asks for the issuer's default audience. The agent
// caches tokens, so calling this for every use is cheap.
func (c *Client) OIDCToken(ctx context.Context, aud string) (string, time.Time, error) {
	var body []byte
	if aud != "" {
		body, _ = json.Marshal(api.TokenRequest{Aud: &aud})
	}
	data, _, err := c.do(ctx, http.MethodPost, "/v1/tokens/oidc", body,
		map[string]string{"Accept": "application/json", "Content-Type": "application/json"}, c.Timeout)
	if err != nil {
		return "", time.Time{}, err
	}
	var rep api.TokenReply
	if err := json.Unmarshal(data, &rep); err != nil || rep.Token == "" {
		return "", time.Time{}, fmt.Errorf("wicket agent at %s: unexpected token reply", c.socket)
	}
	return rep.Token, rep.ExpiresAt, nil
}

// X509SVID returns the caller's X.509-SVID with its private key and the
// trust domain's bundle, all PEM (the SPIFFE Workload API's SVID for the
// same caller): tls.X509KeyPair([]byte(s.X509SVID), []byte(s.X509SVIDKey))
// makes a certificate of it. The agent must serve SPIFFE ([spiffe]
// enabled) and its policy give the caller an identity. The reply holds a
// private key: keep it in memory.
func (c *Client) X509SVID(ctx context.Context) (*api.X509SVIDGuestReply, error) {
	data, _, err := c.do(ctx, http.MethodPost, "/v1/svids/x509", nil, map[string]string{"Accept": "application/json"}, c.Timeout)
	if err != nil {
		return nil, err
	}
	var rep api.X509SVIDGuestReply
	if err := json.Unmarshal(data, &rep); err != nil || rep.X509SVID == "" || rep.X509SVIDKey == "" {
		return nil, fmt.Errorf("wicket agent at %s: unexpected x509 svid reply", c.socket)
	}
	return &rep, nil
}

// JWTSVID returns a JWT-SVID of the caller's identity for the audiences
// (1 to 10) and when it expires.
func (c *Client) JWTSVID(ctx context.Context, audience ...string) (*api.JWTSVIDReply, error) {
	body, _ := json.Marshal(api.JWTSVIDGuestRequest{Audience: audience})
	data, _, err := c.do(ctx, http.MethodPost, "/v1/svids/jwt", body, map[string]string{"Content-Type": "application/json"}, c.Timeout)
	if err != nil {
		return nil, err
	}
	var rep api.JWTSVIDReply
	if err := json.Unmarshal(data, &rep); err != nil || rep.Token == "" {
		return nil, fmt.Errorf("wicket agent at %s: unexpected jwt svid reply", c.socket)
	}
	return &rep, nil
}
