package workloadapi

// Envoy's Secret Discovery Service (envoy.service.secret.v3) on the
// Workload API's socket and grpc.Server, as SPIRE's agent serves it:
// Envoy does not speak the Workload API, it asks for named Secrets. The
// names and their meaning are SPIRE's (pkg/agent/endpoints/sdsv3), so an
// Envoy configured for SPIRE's agent works against wicket's unchanged.

import (
	"bytes"
	"context"
	"encoding/pem"
	"errors"
	"io"
	"slices"
	"strconv"
	"strings"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/wicket-sh/wicket/internal/xdswire"
)

// The resource names with a meaning of their own: SPIRE's defaults
// (default_svid_name, default_bundle_name, default_all_bundles_name).
const (
	// SDSDefaultSVID names the caller's X.509-SVID, whatever its ID.
	SDSDefaultSVID = "default"
	// SDSDefaultBundle names the caller's own trust domain's CAs.
	SDSDefaultBundle = "ROOTCA"
	// SDSAllBundles names every trust domain's CAs, the federated ones
	// included, as a SPIFFE validator config.
	SDSAllBundles = "ALL"
)

// The SDS service and its methods, as envoy/service/secret/v3/sds.proto
// names them.
const (
	sdsService      = "envoy.service.secret.v3.SecretDiscoveryService"
	sdsStreamMethod = "/" + sdsService + "/StreamSecrets"
	sdsFetchMethod  = "/" + sdsService + "/FetchSecrets"
	sdsDeltaMethod  = "/" + sdsService + "/DeltaSecrets"
)

// isSDSMethod reports whether a full method name is one of the SDS
// service's: those are exempt from the security header (Envoy does not
// send it; see checkHeader's callers and SECURITY.md).
func isSDSMethod(m string) bool {
	switch m {
	case sdsStreamMethod, sdsFetchMethod, sdsDeltaMethod:
		return true
	}
	return false
}

// sdsServiceDesc registers SDS with the grpc.Server without Envoy's
// generated code (see package xdswire): its messages are xdswire's,
// which the server's codec (wireCodec) encodes.
var sdsServiceDesc = grpc.ServiceDesc{
	ServiceName: sdsService,
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "FetchSecrets",
		Handler: func(srv any, ctx context.Context, dec func(any) error, icpt grpc.UnaryServerInterceptor) (any, error) {
			req := new(xdswire.DiscoveryRequest)
			if err := dec(req); err != nil {
				return nil, err
			}
			fetch := func(ctx context.Context, req any) (any, error) {
				return srv.(*sdsHandler).FetchSecrets(ctx, req.(*xdswire.DiscoveryRequest))
			}
			if icpt == nil {
				return fetch(ctx, req)
			}
			return icpt(ctx, req, &grpc.UnaryServerInfo{Server: srv, FullMethod: sdsFetchMethod}, fetch)
		},
	}},
	Streams: []grpc.StreamDesc{
		{
			StreamName:    "StreamSecrets",
			Handler:       func(srv any, ss grpc.ServerStream) error { return srv.(*sdsHandler).StreamSecrets(ss) },
			ServerStreams: true,
			ClientStreams: true,
		},
		{
			StreamName: "DeltaSecrets",
			// Not served, as by SPIRE: Envoy uses StreamSecrets.
			Handler: func(any, grpc.ServerStream) error {
				return status.Error(codes.Unimplemented, "DeltaSecrets is not supported")
			},
			ServerStreams: true,
			ClientStreams: true,
		},
	},
	Metadata: "envoy/service/secret/v3/sds.proto",
}

type sdsHandler struct{ h *handler }

// maxErrorDetail bounds how much of Envoy's NACK message is logged: it
// is the caller's text.
const maxErrorDetail = 256

// secrets builds the Secrets names asks for (all of the caller's when
// names is empty), deciding the caller's identity first: PermissionDenied
// without one, InvalidArgument for a name the caller may not have.
func (sh *sdsHandler) secrets(ctx context.Context, names []string) ([]*xdswire.Secret, error) {
	s := sh.h.s
	p, id, t, err := s.identify(ctx, KindX509)
	if err != nil {
		return nil, err
	}
	want := make(map[string]bool, len(names))
	for _, n := range names {
		if n != "" {
			want[n] = true
		}
	}
	all := len(want) == 0
	take := func(n string) bool {
		if all {
			return true
		}
		ok := want[n]
		delete(want, n)
		return ok
	}
	var out []*xdswire.Secret
	// The X.509-SVID first: it is the one that can fail (issuer out of
	// reach with nothing cached).
	asID, asDefault := take(id.String()), take(SDSDefaultSVID) && !all
	if asID || asDefault {
		e, err := s.cache.x509For(ctx, id)
		if err != nil {
			s.log.Warn("x509 svid unavailable", "spiffe_id", id.String(), "err", err)
			return nil, status.Error(codes.Unavailable, "issuer unavailable")
		}
		s.audit(p, "x509", id, e.expires)
		if asID {
			out = append(out, tlsSecret(id.String(), e))
		}
		if asDefault {
			out = append(out, tlsSecret(SDSDefaultSVID, e))
		}
	}
	if take(t.td.IDString()) {
		out = append(out, caSecret(t.td.IDString(), t.bundle))
	}
	if take(SDSDefaultBundle) && !all {
		out = append(out, caSecret(SDSDefaultBundle, t.bundle))
	}
	if take(SDSAllBundles) && !all {
		out = append(out, allSecret(t))
	}
	fed := make([]spiffeid.TrustDomain, 0, len(t.federated))
	for ftd := range t.federated {
		fed = append(fed, ftd)
	}
	slices.SortFunc(fed, func(a, b spiffeid.TrustDomain) int { return strings.Compare(a.Name(), b.Name()) })
	for _, ftd := range fed {
		if take(ftd.IDString()) {
			out = append(out, caSecret(ftd.IDString(), t.federated[ftd]))
		}
	}
	if len(want) > 0 {
		left := make([]string, 0, len(want))
		for n := range want {
			left = append(left, n)
		}
		slices.Sort(left)
		return nil, status.Errorf(codes.InvalidArgument, "workload is not authorized for the requested identities %q", left)
	}
	return out, nil
}

func pemCerts(ders [][]byte) []byte {
	var out []byte
	for _, d := range ders {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: d})...)
	}
	return out
}

// tlsSecret is an X.509-SVID as Envoy takes it: the chain and the PKCS#8
// key in PEM, inline.
func tlsSecret(name string, e *x509Entry) *xdswire.Secret {
	return &xdswire.Secret{Name: name, TLSCertificate: &xdswire.TLSCertificate{
		CertificateChain: pemCerts(e.chain),
		PrivateKey:       pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: e.keyDER}),
	}}
}

// caSecret is one trust domain's X.509 authorities as a plain trusted_ca
// validation context (SPIRE's with disable_spiffe_cert_validation): one
// trust domain's CAs vouch only for their own domain, so nothing binds a
// CA to a domain here, and every Envoy takes it.
func caSecret(name string, b *spiffebundle.Bundle) *xdswire.Secret {
	return &xdswire.Secret{Name: name, ValidationContext: &xdswire.ValidationContext{TrustedCA: pemCerts(rawCerts(b))}}
}

// allSecret is every trust domain's CAs as a SPIFFE validator config
// (Envoy 1.18 and later), never as one trusted_ca: a pool of every
// domain's CAs would let a foreign domain's CA vouch for IDs of this one
// (or of a third), which the SPIFFE validator, keeping each domain's CAs
// to that domain, does not.
func allSecret(t *trust) *xdswire.Secret {
	tds := []xdswire.TrustDomain{{Name: t.td.Name(), TrustBundle: pemCerts(rawCerts(t.bundle))}}
	for ftd, b := range t.federated {
		tds = append(tds, xdswire.TrustDomain{Name: ftd.Name(), TrustBundle: pemCerts(rawCerts(b))})
	}
	slices.SortFunc(tds, func(a, b xdswire.TrustDomain) int { return strings.Compare(a.Name, b.Name) })
	return &xdswire.Secret{Name: SDSAllBundles, ValidationContext: &xdswire.ValidationContext{SPIFFE: tds}}
}

func checkType(req *xdswire.DiscoveryRequest) error {
	if req.TypeURL != "" && req.TypeURL != xdswire.SecretTypeURL {
		return status.Error(codes.InvalidArgument, "only Secrets are served")
	}
	return nil
}

// FetchSecrets answers once, without a version.
func (sh *sdsHandler) FetchSecrets(ctx context.Context, req *xdswire.DiscoveryRequest) (*xdswire.DiscoveryResponse, error) {
	if err := checkType(req); err != nil {
		return nil, err
	}
	secs, err := sh.secrets(ctx, req.ResourceNames)
	if err != nil {
		return nil, err
	}
	return &xdswire.DiscoveryResponse{Resources: encode(secs)}, nil
}

// StreamSecrets is Envoy's SDS stream. The first request, and every
// request that changes the resource names, is answered at once; after
// that a response is pushed whenever the cache or the policy changes and
// the Secrets differ from the last ones sent, the caller's identity
// decided again each time (PermissionDenied ends the stream). Each
// response has a new version and nonce. A request echoing the last nonce
// is an ACK, or a NACK when it carries error_detail: a NACK is logged and
// not answered (resending what Envoy just refused would loop); a request
// with a stale nonce is ignored, as the xDS protocol says.
func (sh *sdsHandler) StreamSecrets(ss grpc.ServerStream) error {
	s := sh.h.s
	ctx := ss.Context()
	reqs := make(chan *xdswire.DiscoveryRequest, 1)
	recvErr := make(chan error, 1)
	go func() {
		for {
			req := new(xdswire.DiscoveryRequest)
			if err := ss.RecvMsg(req); err != nil {
				if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled {
					err = nil
				}
				recvErr <- err
				return
			}
			select {
			case reqs <- req:
			case <-ctx.Done():
				return
			}
		}
	}()

	var (
		names     []string // the last request's resource names
		requested bool
		lastNonce string
		last      [][]byte // the last Secrets sent, encoded
		version   uint64
		// Taken before every build, so a change while it runs wakes the
		// next round; nil (never ready) until the first request.
		changed, reloaded <-chan struct{}
	)
	for {
		build := false
		select {
		case <-ctx.Done():
			return nil
		case <-s.stop.Done():
			return status.Error(codes.Unavailable, "agent stopping")
		case err := <-recvErr:
			return err
		case <-changed:
			build = true
		case <-reloaded:
			build = true
		case req := <-reqs:
			if err := checkType(req); err != nil {
				return err
			}
			if lastNonce != "" && req.ResponseNonce != lastNonce {
				continue // stale: answers an earlier response
			}
			if req.ErrorDetail != nil {
				msg := req.ErrorDetail.Message
				if len(msg) > maxErrorDetail {
					msg = msg[:maxErrorDetail]
				}
				s.log.Warn("sds secrets rejected by the client", "version", req.VersionInfo, "nonce", req.ResponseNonce, "error", msg)
			}
			if requested && sameNames(names, req.ResourceNames) {
				continue // an ACK or NACK of what it has
			}
			names, requested = slices.Clone(req.ResourceNames), true
			last = nil // new names: answer even if nothing changed
			build = true
		}
		if !build {
			continue
		}
		changed, reloaded = s.cache.watch(), s.policyWatch()
		secs, err := sh.secrets(ctx, names)
		if err != nil {
			return err
		}
		enc := encode(secs)
		if last != nil && slices.EqualFunc(last, enc, bytes.Equal) {
			continue
		}
		version++
		v := strconv.FormatUint(version, 10)
		if err := ss.SendMsg(&xdswire.DiscoveryResponse{VersionInfo: v, Nonce: v, Resources: enc}); err != nil {
			return err
		}
		last, lastNonce = enc, v
	}
}

// encode is each Secret's bytes, as a response carries them.
func encode(secs []*xdswire.Secret) [][]byte {
	enc := make([][]byte, len(secs))
	for i, sec := range secs {
		enc[i] = sec.Marshal()
	}
	return enc
}

// sameNames compares two resource name lists as sets, in time linear in
// their lengths: a request may carry thousands of names.
func sameNames(a, b []string) bool {
	set := make(map[string]bool, len(a))
	for _, n := range a {
		set[n] = false
	}
	for _, n := range b {
		if _, ok := set[n]; !ok {
			return false
		}
		set[n] = true
	}
	for _, seen := range set {
		if !seen {
			return false
		}
	}
	return true
}
