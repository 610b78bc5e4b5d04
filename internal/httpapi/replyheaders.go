package httpapi

import "net/http"

// Header values shared by every reply of the hot paths: net/http only
// reads them, and each has len == cap, so an Add elsewhere copies rather
// than writes into them. Assigning them spares a slice per header per
// request.
var (
	hdrNoStore = []string{"no-store"}
	hdrNosniff = []string{"nosniff"}
)

// SetPrivateReply marks a reply that carries a caller's credentials or
// metadata as not to be stored and not to be sniffed (Cache-Control:
// no-store, X-Content-Type-Options: nosniff), without allocating.
func SetPrivateReply(h http.Header) {
	h["Cache-Control"] = hdrNoStore
	h["X-Content-Type-Options"] = hdrNosniff
}
