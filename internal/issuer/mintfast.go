package issuer

import (
	"io"
	"net/http"
	"time"
)

// The OIDC token handler's request and reply without encoding/json for
// the shapes every agent sends and gets: minting is signing plus this, so
// what is not signing is kept small (docs/performance.md, Minting).

// fastTokenRequest recognizes {"aud":"X"} with X plain printable ASCII
// (no escapes, no quote, no space): the body the agent sends for one
// audience. It returns what the strict decoder and parseAud give for it;
// anything else (whitespace, escapes, ttl, a list) is left to them
// (FuzzFastTokenRequest holds the two to the same answer).
func fastTokenRequest(body []byte) (aud string, ok bool) {
	const prefix, suffix = `{"aud":"`, `"}`
	if len(body) < len(prefix)+len(suffix)+1 || string(body[:len(prefix)]) != prefix || string(body[len(body)-len(suffix):]) != suffix {
		return "", false
	}
	v := body[len(prefix) : len(body)-len(suffix)]
	for _, c := range v {
		if c <= ' ' || c >= 0x7f || c == '"' || c == '\\' {
			return "", false
		}
	}
	return string(v), true
}

// readRequestBody reads a body of at most max bytes, as
// io.ReadAll(io.LimitReader(body, max)) does, into one buffer when its
// length is announced.
func readRequestBody(r *http.Request, max int64) ([]byte, error) {
	if r.ContentLength < 0 || r.ContentLength > max {
		return io.ReadAll(io.LimitReader(r.Body, max))
	}
	b := make([]byte, r.ContentLength)
	n, err := io.ReadFull(r.Body, b)
	if err == io.ErrUnexpectedEOF || err == io.EOF {
		err = nil // shorter than announced: what was read, as io.ReadAll gives
	}
	return b[:n], err
}

// Header values of the token reply, shared: net/http only reads them.
var (
	hdrJSON    = []string{"application/json"}
	hdrNoStore = []string{"no-store"}
)

// writeTokenReply answers 200 with the api.TokenReply of tok and exp, the
// bytes json.Encoder writes for it (TestWriteTokenReply_SameAsEncoder): a
// compact JWS needs no escaping and exp is UTC in whole seconds.
func writeTokenReply(w http.ResponseWriter, tok string, exp time.Time) {
	h := w.Header()
	h["Content-Type"] = hdrJSON
	h["Cache-Control"] = hdrNoStore
	w.WriteHeader(http.StatusOK)
	b := make([]byte, 0, len(tok)+64)
	b = append(b, `{"token":"`...)
	b = append(b, tok...)
	b = append(b, `","expires_at":"`...)
	b = exp.AppendFormat(b, time.RFC3339Nano)
	b = append(b, "\"}\n"...)
	w.Write(b)
}

// jwsSafe reports whether s needs no JSON escaping: base64url and dots,
// which is every compact JWS.
func jwsSafe(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c == '.' || c == '-' || c == '_' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9') {
			return false
		}
	}
	return true
}
