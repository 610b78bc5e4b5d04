package agent

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/agent/feature"
	"github.com/wicket-sh/wicket/internal/machinetoken"
	"github.com/wicket-sh/wicket/internal/proxy"
)

// attenuatedTTL is how long the copy of the machine token sent with one
// request stays valid (feature.CopyTTL).
const attenuatedTTL = feature.CopyTTL

// maxIssuerReply bounds a metadata or token reply read from the issuer.
const maxIssuerReply = 1 << 20

// issuerClient calls the issuer's machine-authenticated API.
type issuerClient struct {
	base  *url.URL
	hc    *http.Client
	token MachineToken
}

func newIssuerClient(base *url.URL, token MachineToken) *issuerClient {
	return &issuerClient{
		base:  base,
		token: token,
		hc: &http.Client{
			Transport: proxy.NewTransport(),
			// Never resend the token to wherever a redirect points.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}
}

// Call implements feature.Issuer: call with a copy valid for ttl and
// narrowed to scope.
func (c *issuerClient) Call(ctx context.Context, method, path string, query url.Values, body []byte, ttl time.Duration, scope machinetoken.Scope) (*feature.IssuerReply, error) {
	tok, err := c.token.restrictScope(time.Now(), ttl, scope)
	if err != nil {
		return nil, fmt.Errorf("attenuate machine token: %w", err)
	}
	u := *c.base
	u.Path = c.base.Path + path
	u.RawQuery = query.Encode()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", api.AuthScheme+" "+tok)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxIssuerReply+1))
	if err != nil {
		return nil, fmt.Errorf("read issuer reply: %w", err)
	}
	if len(data) > maxIssuerReply {
		return nil, fmt.Errorf("issuer reply larger than %d bytes", maxIssuerReply)
	}
	return &feature.IssuerReply{Status: resp.StatusCode, Header: resp.Header, Body: data}, nil
}
