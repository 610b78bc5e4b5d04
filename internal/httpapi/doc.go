// Package httpapi is the trust boundary every wicket HTTP surface shares:
// the guest API, the admin sockets, the issuer's public listener and the
// proxy. It holds what each of them must decide the same way, once:
//
//   - the error envelope (S-errors): a generic message and a stable code
//     from package api, never the caller's input, a file path, an upstream
//     body or an internal error. Handlers return an *Error and WriteError
//     logs its cause next to the peer and writes only the envelope, so the
//     no-echo rule holds by construction;
//   - which request paths are acceptable (CanonicalPath, EncodedSeparator)
//     and methods (ValidMethod), and the no-redirect mux lookup
//     (MuxPattern) with its 405 Allow list (AllowedMethods);
//   - what of the caller's input may reach a log line (Truncate);
//   - whether a URL's host is this machine's loopback (LoopbackHost).
package httpapi
