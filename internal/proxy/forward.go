package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/httpapi"
)

// DefaultMaxResponseBytes caps an upstream response body the proxy relays.
const DefaultMaxResponseBytes = 4 << 20

// tokenPrefix marks machine tokens (and their attenuated copies) on the wire.
const tokenPrefix = "fm2_"

// Outcome says how a forwarded request ended; it is safe to log and count.
type Outcome string

// Outcomes of Forward.
const (
	OutcomeOK         Outcome = "ok"
	OutcomeBadRequest Outcome = "bad_request"      // caller's request refused before sending
	OutcomeBadGateway Outcome = "bad_gateway"      // upstream unreachable, 5xx, oversized or unusable reply
	OutcomeTimeout    Outcome = "upstream_timeout" // route deadline reached
	OutcomeLeak       Outcome = "token_in_reply"   // reply carried token material: withheld
	OutcomeCanceled   Outcome = "canceled"         // caller went away
)

// Forwarder relays requests that matched a route. The zero value is not
// usable; see NewForwarder.
type Forwarder struct {
	client  *http.Client
	maxBody int64
	secret  func([]byte) bool
}

// Options configure a Forwarder.
type Options struct {
	// Transport for upstream calls; nil means NewTransport().
	Transport http.RoundTripper
	// MaxResponseBytes caps a relayed body; 0 means DefaultMaxResponseBytes.
	MaxResponseBytes int64
	// ContainsSecret reports whether b holds secret material of the caller
	// (the machine token). A reply that does is never relayed. The
	// attenuated token a request carried is always checked as well.
	ContainsSecret func(b []byte) bool
}

// NewTransport returns the transport used for upstream calls: no proxy from
// the environment (an HTTP_PROXY would see every token sent over plain
// http), bounded dials and handshakes; the route deadline bounds the rest.
func NewTransport() *http.Transport {
	return &http.Transport{
		Proxy:                  nil,
		DialContext:            (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		ForceAttemptHTTP2:      true,
		MaxIdleConns:           64,
		MaxIdleConnsPerHost:    16,
		IdleConnTimeout:        90 * time.Second,
		TLSHandshakeTimeout:    10 * time.Second,
		ExpectContinueTimeout:  time.Second,
		MaxResponseHeaderBytes: 64 << 10,
	}
}

// NewForwarder returns a Forwarder.
func NewForwarder(o Options) *Forwarder {
	if o.Transport == nil {
		o.Transport = NewTransport()
	}
	if o.MaxResponseBytes <= 0 {
		o.MaxResponseBytes = DefaultMaxResponseBytes
	}
	if o.ContainsSecret == nil {
		o.ContainsSecret = func([]byte) bool { return false }
	}
	return &Forwarder{
		client: &http.Client{
			Transport: o.Transport,
			// A redirect is relayed to the caller, never followed with the
			// token attached.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		maxBody: o.MaxResponseBytes,
		secret:  o.ContainsSecret,
	}
}

// Result describes one forwarded request for the caller's log.
type Result struct {
	Outcome Outcome
	Status  int   // status written to the caller (0 if none)
	Err     error // detail for the log; never token material
}

// Forward sends r, which matched rt, to base (the route's upstream or the
// default) with authorization ("FlyV1 <attenuated token>") as its only
// credential, and writes the upstream's reply, filtered, to w. The request
// body must already have been read into memory (unixsock.LimitBody does).
func (f *Forwarder) Forward(w http.ResponseWriter, r *http.Request, rt *Route, base *url.URL, authorization string) Result {
	if strings.ContainsAny(r.URL.RawQuery, "\x00\r\n") {
		httpapi.BadRequest(w)
		return Result{Outcome: OutcomeBadRequest, Status: http.StatusBadRequest, Err: errors.New("control characters in query")}
	}
	if _, err := url.ParseQuery(r.URL.RawQuery); err != nil {
		httpapi.BadRequest(w)
		return Result{Outcome: OutcomeBadRequest, Status: http.StatusBadRequest, Err: errors.New("malformed query")}
	}
	ctx, cancel := context.WithTimeout(r.Context(), rt.timeout)
	defer cancel()

	// The path sent is the decoded path that matched, re-escaped by
	// net/url: what was checked is what goes upstream.
	target := *base
	target.Path = base.Path + r.URL.Path
	target.RawPath = ""
	target.RawQuery = r.URL.RawQuery
	var body io.Reader
	if r.ContentLength > 0 {
		body = r.Body
	}
	out, err := http.NewRequestWithContext(ctx, r.Method, target.String(), body)
	if err != nil {
		httpapi.BadRequest(w)
		return Result{Outcome: OutcomeBadRequest, Status: http.StatusBadRequest, Err: fmt.Errorf("build upstream request: %w", err)}
	}
	out.ContentLength = max(r.ContentLength, 0)
	// Only the route's allowlisted headers go upstream: a header the
	// upstream (or a server in front of it) would read as identity, a
	// method or a path cannot come from the caller.
	out.Header = rt.headers.Filter(r.Header)
	out.Header.Set("Authorization", authorization)

	resp, err := f.client.Do(out)
	if err != nil {
		return f.fail(w, r.Context(), ctx, fmt.Errorf("upstream request: %w", err))
	}
	defer resp.Body.Close()

	sent := strings.TrimSpace(strings.TrimPrefix(authorization, api.AuthScheme))
	switch {
	case resp.StatusCode >= 500:
		// Upstream error pages may describe internals; the caller learns
		// only that the gateway failed.
		httpapi.Write(w, http.StatusBadGateway, api.CodeBadGateway, "bad gateway")
		return Result{Outcome: OutcomeBadGateway, Status: http.StatusBadGateway, Err: fmt.Errorf("upstream status %d", resp.StatusCode)}
	case resp.StatusCode < 200:
		httpapi.Write(w, http.StatusBadGateway, api.CodeBadGateway, "bad gateway")
		return Result{Outcome: OutcomeBadGateway, Status: http.StatusBadGateway, Err: fmt.Errorf("upstream status %d", resp.StatusCode)}
	case !identityEncoding(resp.Header.Get("Content-Encoding")):
		// The transport decodes the gzip it asked for; anything else could
		// not be checked for token material.
		httpapi.Write(w, http.StatusBadGateway, api.CodeBadGateway, "bad gateway")
		return Result{Outcome: OutcomeBadGateway, Status: http.StatusBadGateway, Err: errors.New("upstream used an unrequested content encoding")}
	case resp.ContentLength > f.maxBody:
		httpapi.Write(w, http.StatusBadGateway, api.CodeBadGateway, "bad gateway")
		return Result{Outcome: OutcomeBadGateway, Status: http.StatusBadGateway, Err: fmt.Errorf("upstream body of %d bytes exceeds %d", resp.ContentLength, f.maxBody)}
	}
	// The whole body is read before anything is written, within the route
	// deadline: a reply too large, too slow or carrying a token is refused
	// cleanly instead of cut off half-way.
	data, err := io.ReadAll(io.LimitReader(resp.Body, f.maxBody+1))
	if err != nil {
		return f.fail(w, r.Context(), ctx, fmt.Errorf("read upstream body: %w", err))
	}
	if int64(len(data)) > f.maxBody {
		httpapi.Write(w, http.StatusBadGateway, api.CodeBadGateway, "bad gateway")
		return Result{Outcome: OutcomeBadGateway, Status: http.StatusBadGateway, Err: fmt.Errorf("upstream body exceeds %d bytes", f.maxBody)}
	}
	if f.tokenMaterial(data, sent) {
		httpapi.Write(w, http.StatusBadGateway, api.CodeBadGateway, "bad gateway")
		return Result{Outcome: OutcomeLeak, Status: http.StatusBadGateway, Err: errors.New("upstream reply body holds token material; withheld")}
	}

	h := w.Header()
	dropped := copyResponseHeader(h, resp.Header, func(v string) bool { return f.tokenMaterial([]byte(v), sent) })
	if n := resp.ContentLength; r.Method == http.MethodHead && n >= 0 {
		h.Set("Content-Length", strconv.FormatInt(n, 10))
	} else {
		h.Set("Content-Length", strconv.Itoa(len(data)))
	}
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(resp.StatusCode)
	if r.Method != http.MethodHead {
		w.Write(data)
	}
	var note error
	if dropped > 0 {
		note = fmt.Errorf("dropped %d upstream header(s) holding token material", dropped)
	}
	return Result{Outcome: OutcomeOK, Status: resp.StatusCode, Err: note}
}

// fail answers for a transport error: 504 when the route deadline passed,
// nothing when the caller left, 502 otherwise.
func (f *Forwarder) fail(w http.ResponseWriter, parent, ctx context.Context, err error) Result {
	var ne net.Error
	switch {
	case parent.Err() != nil:
		return Result{Outcome: OutcomeCanceled, Err: err}
	case errors.Is(ctx.Err(), context.DeadlineExceeded), errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		httpapi.Write(w, http.StatusGatewayTimeout, api.CodeUpstreamTimeout, "upstream timeout")
		return Result{Outcome: OutcomeTimeout, Status: http.StatusGatewayTimeout, Err: err}
	}
	httpapi.Write(w, http.StatusBadGateway, api.CodeBadGateway, "bad gateway")
	return Result{Outcome: OutcomeBadGateway, Status: http.StatusBadGateway, Err: err}
}

// tokenMaterial reports whether b holds the token sent, its base64 body,
// any machine token (by prefix) or the caller's secret.
func (f *Forwarder) tokenMaterial(b []byte, sent string) bool {
	if bytes.Contains(b, []byte(tokenPrefix)) || f.secret(b) {
		return true
	}
	if body := strings.TrimPrefix(sent, tokenPrefix); len(body) >= 16 && bytes.Contains(b, []byte(body)) {
		return true
	}
	return false
}

func identityEncoding(ce string) bool {
	ce = strings.TrimSpace(ce)
	return ce == "" || strings.EqualFold(ce, "identity")
}

// hopByHop are the headers that describe one connection, never the message
// (RFC 9110 7.6.1), plus the old names still seen in the wild.
var hopByHop = []string{
	"Connection", "Keep-Alive", "Proxy-Connection", "Te", "Trailer",
	"Transfer-Encoding", "Upgrade",
}

// dropResponse are upstream headers never relayed.
var dropResponse = []string{
	"Set-Cookie", "Set-Cookie2", "Content-Length", "Content-Encoding",
	"Authorization", "Alt-Svc",
}

// connectionListed returns the header names a Connection header lists:
// those are hop-by-hop too.
func connectionListed(h http.Header) map[string]bool {
	out := map[string]bool{}
	for _, v := range h.Values("Connection") {
		for _, name := range strings.Split(v, ",") {
			if name = strings.TrimSpace(name); name != "" {
				out[textproto.CanonicalMIMEHeaderKey(name)] = true
			}
		}
	}
	return out
}

// copyResponseHeader copies src into dst without hop-by-hop headers,
// cookies, proxy headers or any header whose value leaks is true for; it
// returns how many it dropped for leaking.
func copyResponseHeader(dst, src http.Header, leaks func(string) bool) (leaked int) {
	listed := connectionListed(src)
	for k, vs := range src {
		if dropHeader(k, listed, dropResponse, []string{"Proxy-"}) {
			continue
		}
		if leaks(k) || leaksAny(vs, leaks) {
			leaked++
			continue
		}
		dst[k] = append([]string(nil), vs...)
	}
	return leaked
}

func leaksAny(vs []string, leaks func(string) bool) bool {
	for _, v := range vs {
		if leaks(v) {
			return true
		}
	}
	return false
}

func dropHeader(k string, listed map[string]bool, names, prefixes []string) bool {
	k = textproto.CanonicalMIMEHeaderKey(k)
	if listed[k] {
		return true
	}
	for _, n := range hopByHop {
		if k == n {
			return true
		}
	}
	for _, n := range names {
		if k == n {
			return true
		}
	}
	for _, p := range prefixes {
		if strings.HasPrefix(k, p) {
			return true
		}
	}
	return false
}
