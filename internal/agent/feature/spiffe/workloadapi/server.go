// Package workloadapi is the agent's SPIFFE Workload API: the standard
// gRPC service (github.com/spiffe/go-spiffe/v2/proto/spiffe/workload) on
// a Unix socket made by internal/unixsock, so go-spiffe, SPIRE's CLI
// and every other SPIFFE-aware program get X.509- and JWT-SVIDs and
// trust bundles from the agent unchanged; and, on the same socket,
// Envoy's Secret Discovery Service as SPIRE's agent serves it (sds.go),
// so Envoy does too.
//
// Who the caller is comes from the kernel (SO_PEERCRED, read by unixsock
// when the connection was accepted) and the agent's policy (Options.
// Identify); the issuer signs, the package caches: SVIDs are renewed at
// half-life (jittered) on the agent's clock, pushed on open streams, and
// served from the cache until they expire while the issuer is out of
// reach. X.509-SVID private keys are generated here and kept in memory.
package workloadapi

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	grpcpeer "google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/unixsock"
)

// Issuer is what the Workload API needs of the issuer; the agent
// implements it with attenuated copies of its machine token.
type Issuer interface {
	// Bundle returns the machine's trust domain, own ID and bundle.
	Bundle(ctx context.Context) (*api.SVIDBundleReply, error)
	// X509 asks for an X.509-SVID for id on csr (DER).
	X509(ctx context.Context, id string, csr []byte) (*api.X509SVIDReply, error)
	// JWT asks for a JWT-SVID for id and aud.
	JWT(ctx context.Context, id string, aud []string) (*api.JWTSVIDReply, error)
}

// Kind is what a call asks for, for the policy: X.509 (SVIDs and bundles)
// or JWT (SVIDs, bundles and validation).
type Kind string

// The kinds of call, named after the guest API routes whose policy they
// share (POST /v1/svids/x509, POST /v1/svids/jwt).
const (
	KindX509 Kind = "x509"
	KindJWT  Kind = "jwt"
)

// Options configure a Server.
type Options struct {
	Issuer Issuer
	// Identify returns the workload name the caller gets ("" for the
	// machine's own ID), or ok false when the caller has no identity (it
	// logs the denial itself).
	Identify func(ctx context.Context, p unixsock.Peer, k Kind) (workload string, ok bool)
	// Now is the agent's clock (nil: time.Now).
	Now    func() time.Time
	Logger *slog.Logger
	// Tick is how often renewals are looked for (default 1 s; it only
	// compares times when nothing is due).
	Tick time.Duration
}

// Server is one Workload API server.
type Server struct {
	opts  Options
	log   *slog.Logger
	cache *cache
	grpc  *grpc.Server

	stop     context.Context
	stopFunc context.CancelFunc
	wg       sync.WaitGroup

	servedMu sync.Mutex
	served   map[auditKey]struct{} // first hand-out per process is audited
	denied   uint64
	deniedMu sync.Mutex

	policyMu sync.Mutex
	policy   chan struct{} // closed and replaced when the policy may have changed
}

// auditKey is one process's hand-out of one kind of SVID for one ID on
// one surface (via: "" for the Workload API, "http" for the guest API).
type auditKey struct {
	pid       int32
	via, kind string
	id        spiffeid.ID
}

// maxServed bounds the set of first hand-outs: a workload that starts
// process after process must not grow the agent's memory without end.
// When it is full it starts again, so a process seen before may be
// audited twice: the log errs on the side of saying more.
const maxServed = 1 << 16

// firstHandOut records k and reports whether it is new.
func (s *Server) firstHandOut(k auditKey) bool {
	s.servedMu.Lock()
	defer s.servedMu.Unlock()
	if _, seen := s.served[k]; seen {
		return false
	}
	if len(s.served) >= maxServed {
		clear(s.served)
	}
	s.served[k] = struct{}{}
	return true
}

// securityHeader is the metadata every Workload API call must carry
// (SPIFFE Workload Endpoint spec): a browser or SSRF cannot set it. The
// SDS methods are exempt, as in SPIRE's agent: Envoy does not send it,
// and the header guards against something no client of this socket can
// do (see SECURITY.md).
const securityHeader = "workload.spiffe.io"

// maxRecvMsg bounds a request. The largest Workload API one
// (ValidateJWTSVID) holds a JWT and an audience; an SDS DiscoveryRequest
// carries Envoy's node, whose list of extensions runs to tens of KiB.
const maxRecvMsg = 256 << 10

// New makes a server; Serve starts it.
func New(opts Options) *Server {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Tick <= 0 {
		opts.Tick = time.Second
	}
	s := &Server{opts: opts, log: opts.Logger, cache: newCache(opts.Issuer, opts.Now, opts.Logger), policy: make(chan struct{}), served: map[auditKey]struct{}{}}
	s.stop, s.stopFunc = context.WithCancel(context.Background())
	s.grpc = grpc.NewServer(
		grpc.Creds(peerCreds{}),
		grpc.MaxRecvMsgSize(maxRecvMsg),
		grpc.MaxConcurrentStreams(64),
		grpc.ForceServerCodecV2(wireCodec{proto: encoding.GetCodecV2(grpcproto.Name)}),
		grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if err := checkHeader(ctx, info.FullMethod); err != nil {
				return nil, err
			}
			return h(ctx, req)
		}),
		grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			if err := checkHeader(ss.Context(), info.FullMethod); err != nil {
				return err
			}
			return h(srv, ss)
		}),
	)
	h := &handler{s: s}
	workload.RegisterSpiffeWorkloadAPIServer(s.grpc, h)
	// Envoy's SDS on the same socket, as SPIRE's agent serves it.
	s.grpc.RegisterService(&sdsServiceDesc, &sdsHandler{h: h})
	return s
}

// wireCodec is the server's codec: SDS's xdswire messages encode
// themselves, and every other message (the Workload API's) goes to
// gRPC's own proto codec.
type wireCodec struct{ proto encoding.CodecV2 }

type wireMarshaler interface{ Marshal() []byte }

type wireUnmarshaler interface{ Unmarshal([]byte) error }

func (c wireCodec) Marshal(v any) (mem.BufferSlice, error) {
	if m, ok := v.(wireMarshaler); ok {
		return mem.BufferSlice{mem.SliceBuffer(m.Marshal())}, nil
	}
	return c.proto.Marshal(v)
}

func (c wireCodec) Unmarshal(data mem.BufferSlice, v any) error {
	if m, ok := v.(wireUnmarshaler); ok {
		return m.Unmarshal(data.Materialize())
	}
	return c.proto.Unmarshal(data, v)
}

func (wireCodec) Name() string { return grpcproto.Name }

// Serve serves l (a unixsock listener) until Stop.
func (s *Server) Serve(l net.Listener) error {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		t := time.NewTicker(s.opts.Tick)
		defer t.Stop()
		for {
			select {
			case <-s.stop.Done():
				return
			case <-t.C:
				s.cache.tick(s.stop)
			}
		}
	}()
	err := s.grpc.Serve(l)
	if errors.Is(err, grpc.ErrServerStopped) {
		return nil
	}
	return err
}

// Stop ends every stream and the renewals.
func (s *Server) Stop() {
	s.stopFunc()
	s.grpc.Stop()
	s.wg.Wait()
}

// PolicyChanged tells every open stream that the policy may have changed
// (the agent reloaded its config): each decides its caller's identity
// again at once, ends with PermissionDenied when the caller has none any
// more, and sends the new identity's SVID when it was renamed.
func (s *Server) PolicyChanged() {
	s.policyMu.Lock()
	defer s.policyMu.Unlock()
	close(s.policy)
	s.policy = make(chan struct{})
}

// policyWatch returns a channel closed at the next PolicyChanged.
func (s *Server) policyWatch() <-chan struct{} {
	s.policyMu.Lock()
	defer s.policyMu.Unlock()
	return s.policy
}

// Stats reports the cache's counters.
func (s *Server) Stats() Stats { return s.cache.stats() }

// checkHeader requires the security header on every method but the SDS
// service's. It reads the one key (FromIncomingContext would copy the
// whole metadata map on every call).
func checkHeader(ctx context.Context, method string) error {
	if isSDSMethod(method) {
		return nil
	}
	if v := metadata.ValueFromIncomingContext(ctx, securityHeader); len(v) != 1 || v[0] != "true" {
		return status.Error(codes.InvalidArgument, "security header missing from request")
	}
	return nil
}

// peerCreds is the "transport security" of a Unix socket: it takes the
// kernel's word for who connected, as unixsock recorded it at accept.
type peerCreds struct{}

type peerInfo struct {
	credentials.CommonAuthInfo
	peer unixsock.Peer
}

func (peerInfo) AuthType() string { return "unix-peercred" }

func (peerCreds) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	uc, ok := c.(*unixsock.Conn)
	if !ok {
		return nil, nil, errors.New("workloadapi: not a unixsock connection")
	}
	return c, peerInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}, peer: uc.Peer()}, nil
}

func (peerCreds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("workloadapi: server credentials only")
}
func (peerCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "unix-peercred"}
}
func (peerCreds) Clone() credentials.TransportCredentials { return peerCreds{} }
func (peerCreds) OverrideServerName(string) error         { return nil }

type handler struct {
	workload.UnsafeSpiffeWorkloadAPIServer
	s *Server
}

// identify decides who the caller is: PermissionDenied without identity.
func (s *Server) identify(ctx context.Context, k Kind) (unixsock.Peer, spiffeid.ID, *trust, error) {
	p, ok := grpcpeer.FromContext(ctx)
	var info peerInfo
	if ok {
		info, ok = p.AuthInfo.(peerInfo)
	}
	if !ok {
		return unixsock.Peer{}, spiffeid.ID{}, nil, status.Error(codes.PermissionDenied, "no identity issued")
	}
	name, ok := s.opts.Identify(ctx, info.peer, k)
	if !ok {
		return info.peer, spiffeid.ID{}, nil, status.Error(codes.PermissionDenied, "no identity issued")
	}
	t, err := s.cache.getTrust(ctx)
	if err != nil {
		s.log.Warn("spiffe bundle unavailable", "err", err)
		return info.peer, spiffeid.ID{}, nil, status.Error(codes.Unavailable, "issuer unavailable")
	}
	id, err := t.idFor(name)
	if err != nil {
		s.log.Error("spiffe id for workload", "workload", name, "err", err)
		return info.peer, spiffeid.ID{}, nil, status.Error(codes.Internal, "internal error")
	}
	return info.peer, id, t, nil
}

// audit logs the first hand-out of an SVID to each process, with the
// SVID's end when it has one (expires non-zero); repeats cost one map
// lookup, nothing is formatted for them.
func (s *Server) audit(p unixsock.Peer, kind string, id spiffeid.ID, expires time.Time) {
	if !s.firstHandOut(auditKey{pid: p.PID, kind: kind, id: id}) {
		return
	}
	args := []any{"kind", kind, "spiffe_id", id.String(), "peer_uid", p.UID, "peer_gid", p.GID, "peer_pid", p.PID}
	if !expires.IsZero() {
		args = append(args, "expires_at", expires.UTC().Format(time.RFC3339))
	}
	s.log.Info("svid served", args...)
}

func (h *handler) x509Response(ctx context.Context, p unixsock.Peer, id spiffeid.ID) (*workload.X509SVIDResponse, error) {
	e, err := h.s.cache.x509For(ctx, id)
	if err != nil {
		h.s.log.Warn("x509 svid unavailable", "spiffe_id", id.String(), "err", err)
		return nil, status.Error(codes.Unavailable, "issuer unavailable")
	}
	t, err := h.s.cache.getTrust(ctx)
	if err != nil {
		return nil, status.Error(codes.Unavailable, "issuer unavailable")
	}
	h.s.audit(p, "x509", id, e.expires)
	return &workload.X509SVIDResponse{Svids: []*workload.X509SVID{{
		SpiffeId:    id.String(),
		X509Svid:    e.chainDER,
		X509SvidKey: e.keyDER,
		Bundle:      t.x509DER,
	}}, FederatedBundles: t.federatedX509()}, nil
}

// stream sends make()'s answer now and again after every change of the
// cache or the policy until the caller goes away; an unchanged answer is
// not resent. make decides the caller's identity every time, so a stream
// never outlives the policy that admitted it: a caller the policy no
// longer admits gets make's PermissionDenied, which ends the stream.
func stream[T any](s *Server, ctx context.Context, make func() (*T, error), send func(*T) error, same func(a, b *T) bool) error {
	var last *T
	for {
		// Both watches are taken before make reads anything, so a change
		// while it runs wakes the next round.
		changed, reloaded := s.cache.watch(), s.policyWatch()
		msg, err := make()
		if err != nil {
			return err
		}
		if last == nil || !same(last, msg) {
			if err := send(msg); err != nil {
				return err
			}
			last = msg
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.stop.Done():
			return status.Error(codes.Unavailable, "agent stopping")
		case <-changed:
		case <-reloaded:
		}
	}
}

func (h *handler) FetchX509SVID(_ *workload.X509SVIDRequest, ss grpc.ServerStreamingServer[workload.X509SVIDResponse]) error {
	ctx := ss.Context()
	return stream(h.s, ctx, func() (*workload.X509SVIDResponse, error) {
		p, id, _, err := h.s.identify(ctx, KindX509)
		if err != nil {
			return nil, err
		}
		return h.x509Response(ctx, p, id)
	}, ss.Send,
		func(a, b *workload.X509SVIDResponse) bool {
			return a.Svids[0].SpiffeId == b.Svids[0].SpiffeId &&
				bytes.Equal(a.Svids[0].X509Svid, b.Svids[0].X509Svid) && bytes.Equal(a.Svids[0].Bundle, b.Svids[0].Bundle) &&
				sameMap(a.FederatedBundles, b.FederatedBundles)
		})
}

func (h *handler) FetchX509Bundles(_ *workload.X509BundlesRequest, ss grpc.ServerStreamingServer[workload.X509BundlesResponse]) error {
	ctx := ss.Context()
	return stream(h.s, ctx, func() (*workload.X509BundlesResponse, error) {
		_, _, t, err := h.s.identify(ctx, KindX509)
		if err != nil {
			return nil, err
		}
		return &workload.X509BundlesResponse{Bundles: t.x509Bundles()}, nil
	}, ss.Send, func(a, b *workload.X509BundlesResponse) bool { return sameMap(a.Bundles, b.Bundles) })
}

func sameMap(a, b map[string][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !bytes.Equal(v, b[k]) {
			return false
		}
	}
	return true
}

func (h *handler) FetchJWTSVID(ctx context.Context, req *workload.JWTSVIDRequest) (*workload.JWTSVIDResponse, error) {
	if len(req.Audience) == 0 {
		return nil, status.Error(codes.InvalidArgument, "audience must be specified")
	}
	if err := validAudience(req.Audience); err != nil {
		return nil, err
	}
	p, id, _, err := h.s.identify(ctx, KindJWT)
	if err != nil {
		return nil, err
	}
	if req.SpiffeId != "" && req.SpiffeId != id.String() {
		// Only the caller's own identity is ever issued.
		return nil, status.Error(codes.PermissionDenied, "no identity issued")
	}
	tok, err := h.s.cache.jwtFor(ctx, id, req.Audience)
	if err != nil {
		h.s.log.Warn("jwt svid unavailable", "spiffe_id", id.String(), "err", err)
		return nil, status.Error(codes.Unavailable, "issuer unavailable")
	}
	h.s.audit(p, "jwt", id, time.Time{})
	return &workload.JWTSVIDResponse{Svids: []*workload.JWTSVID{{SpiffeId: id.String(), Svid: tok}}}, nil
}

// validAudience applies the issuer's audience rules before anything is
// asked of it: 1 to 10 printable ASCII values of at most 256 bytes.
func validAudience(aud []string) error {
	if len(aud) > 10 {
		return status.Error(codes.InvalidArgument, "too many audiences")
	}
	for _, a := range aud {
		if a == "" || len(a) > 256 || slices.ContainsFunc([]byte(a), func(c byte) bool { return c <= ' ' || c > '~' }) {
			return status.Error(codes.InvalidArgument, "invalid audience")
		}
	}
	return nil
}

func (h *handler) jwtBundles(ctx context.Context) (*jwtbundle.Bundle, *trust, error) {
	t, err := h.s.cache.getTrust(ctx)
	if err != nil {
		return nil, nil, status.Error(codes.Unavailable, "issuer unavailable")
	}
	return t.bundle.JWTBundle(), t, nil
}

func (h *handler) FetchJWTBundles(_ *workload.JWTBundlesRequest, ss grpc.ServerStreamingServer[workload.JWTBundlesResponse]) error {
	ctx := ss.Context()
	return stream(h.s, ctx, func() (*workload.JWTBundlesResponse, error) {
		if _, _, _, err := h.s.identify(ctx, KindJWT); err != nil {
			return nil, err
		}
		_, t, err := h.jwtBundles(ctx)
		if err != nil {
			return nil, err
		}
		docs, err := t.jwtBundleDocs()
		if err != nil {
			return nil, status.Error(codes.Internal, "internal error")
		}
		return &workload.JWTBundlesResponse{Bundles: docs}, nil
	}, ss.Send, func(a, b *workload.JWTBundlesResponse) bool { return sameMap(a.Bundles, b.Bundles) })
}

func (h *handler) ValidateJWTSVID(ctx context.Context, req *workload.ValidateJWTSVIDRequest) (*workload.ValidateJWTSVIDResponse, error) {
	switch {
	case req.Audience == "":
		return nil, status.Error(codes.InvalidArgument, "audience must be specified")
	case req.Svid == "":
		return nil, status.Error(codes.InvalidArgument, "svid must be specified")
	}
	if _, _, _, err := h.s.identify(ctx, KindJWT); err != nil {
		return nil, err
	}
	_, t, err := h.jwtBundles(ctx)
	if err != nil {
		return nil, err
	}
	// The machine's own trust domain's keys and the federated domains'.
	sv, err := jwtsvid.ParseAndValidate(req.Svid, t.jwtSet(), []string{req.Audience})
	if err != nil {
		// The token is the caller's input: not echoed, not logged.
		return nil, status.Error(codes.InvalidArgument, "invalid JWT-SVID")
	}
	c := sv.Claims
	if !sv.ID.MemberOf(t.td) {
		c = foreignClaims(c)
	}
	claims, err := structpb.NewStruct(c)
	if err != nil {
		return nil, status.Error(codes.Internal, "internal error")
	}
	return &workload.ValidateJWTSVIDResponse{SpiffeId: sv.ID.String(), Claims: claims}, nil
}

func (h *handler) FetchWITSVID(*workload.WITSVIDRequest, grpc.ServerStreamingServer[workload.WITSVIDResponse]) error {
	return status.Error(codes.Unimplemented, "WIT-SVIDs are not supported")
}

func (h *handler) FetchWITBundles(*workload.WITBundlesRequest, grpc.ServerStreamingServer[workload.WITBundlesResponse]) error {
	return status.Error(codes.Unimplemented, "WIT-SVIDs are not supported")
}

var _ = x509bundle.New
