package workloadapi

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"google.golang.org/grpc/status"

	"github.com/wicket-sh/wicket/internal/unixsock"
)

// The other surfaces of the same SVIDs: the guest HTTP API's POST
// /v1/svids/x509 and /v1/svids/jwt and the [[svid_file]] writers take
// them from this server's cache, so every surface hands out the same SVID
// for an identity, renewed once, at the same moment.

// X509SVID is one cached X.509-SVID as another surface hands it out. Its
// slices are the cache's: read them, never change them. It holds the
// private key: never log it.
type X509SVID struct {
	ID spiffeid.ID
	// Chain is the certificate chain, leaf first (DER).
	Chain [][]byte
	// Key is the private key, PKCS#8 DER.
	Key []byte
	// Bundle is the trust domain's X.509 authorities (DER).
	Bundle [][]byte
	// ExpiresAt is the leaf's NotAfter.
	ExpiresAt time.Time
}

// JWTSVID is one JWT-SVID as another surface hands it out.
type JWTSVID struct {
	ID        spiffeid.ID
	Token     string
	ExpiresAt time.Time
}

// ErrUnavailable is the surfaces' error when the issuer cannot be reached
// and nothing usable is cached; the cause is in the wrapped error, for
// the log.
var ErrUnavailable = errors.New("issuer unavailable")

// ErrBadAudience is JWTSVIDFor's error for audiences the issuer would
// refuse (ValidAudience).
var ErrBadAudience = errors.New("invalid audience")

// IDFor returns the SPIFFE ID of workload ("" for the machine's own),
// fetching the trust bundle if none is cached yet.
func (s *Server) IDFor(ctx context.Context, workload string) (spiffeid.ID, error) {
	t, err := s.cache.getTrust(ctx)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("%w: bundle: %w", ErrUnavailable, err)
	}
	return t.idFor(workload)
}

// X509SVIDFor returns workload's X.509-SVID ("" for the machine's own):
// the one the Workload API serves, from the cache while it is valid.
func (s *Server) X509SVIDFor(ctx context.Context, workload string) (*X509SVID, error) {
	id, err := s.IDFor(ctx, workload)
	if err != nil {
		return nil, err
	}
	e, err := s.cache.x509For(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrUnavailable, id, err)
	}
	t, err := s.cache.getTrust(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: bundle: %w", ErrUnavailable, err)
	}
	return &X509SVID{ID: id, Chain: e.chain, Key: e.keyDER, Bundle: rawCerts(t.bundle), ExpiresAt: e.expires}, nil
}

// JWTSVIDFor returns a JWT-SVID of workload ("" for the machine's own)
// for aud, which must pass ValidAudience: the Workload API's cached one
// for the same identity and audiences.
func (s *Server) JWTSVIDFor(ctx context.Context, workload string, aud []string) (*JWTSVID, error) {
	if err := ValidAudience(aud); err != nil {
		return nil, err
	}
	id, err := s.IDFor(ctx, workload)
	if err != nil {
		return nil, err
	}
	tok, err := s.cache.jwtFor(ctx, id, aud)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrUnavailable, id, err)
	}
	// The expiry the token itself carries: the cache may renew it
	// meanwhile.
	sv, err := jwtsvid.ParseInsecure(tok, aud)
	if err != nil {
		return nil, fmt.Errorf("%w: issuer jwt svid: %w", ErrUnavailable, err)
	}
	return &JWTSVID{ID: id, Token: tok, ExpiresAt: sv.Expiry}, nil
}

// ValidAudience is the Workload API's audience rule (the issuer's): 1 to
// 10 printable ASCII values of at most 256 bytes, none empty.
func ValidAudience(aud []string) error {
	if len(aud) == 0 {
		return ErrBadAudience
	}
	if err := validAudience(aud); err != nil {
		return fmt.Errorf("%w: %s", ErrBadAudience, status.Convert(err).Message())
	}
	return nil
}

// Changed returns a channel closed at the cache's next change: a new or
// renewed X.509-SVID of any identity, or a bundle whose authorities
// changed.
func (s *Server) Changed() <-chan struct{} { return s.cache.watch() }

// FirstHandOut reports whether this is the first hand-out of id's SVID
// of kind ("x509", "jwt") to the process p on another surface (via:
// "http"): the surface logs that one as the Workload API logs its own
// first hand-outs, and only counts the repeats.
func (s *Server) FirstHandOut(p unixsock.Peer, via, kind string, id spiffeid.ID) bool {
	return s.firstHandOut(auditKey{pid: p.PID, via: via, kind: kind, id: id})
}
