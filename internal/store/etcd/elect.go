package etcd

import (
	"context"
	"net/url"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// Lead campaigns for the leadership called name among every replica that
// shares this store's prefix, and blocks until this replica leads or ctx
// ends. Leadership lives on an etcd lease that this replica keeps renewing:
// the returned context ends when the lease is lost (etcd unreachable for
// about ElectionTTL), and the leader must stop acting for the group then,
// because after ElectionTTL another replica may be elected. resign gives
// the leadership up at once, so the next replica need not wait for the
// lease to expire; it must be called once leading is over.
func (s *Store) Lead(ctx context.Context, name string) (lost context.Context, resign func(), err error) {
	if err := s.check(ctx); err != nil {
		return nil, nil, err
	}
	ttl := int64(s.cfg.ElectionTTL / time.Second)
	// Grant under the caller's context, so a campaign waiting for etcd to
	// come back can be called off; the session's keep-alives belong to the
	// store, so resigning can still revoke the lease after ctx ends.
	lease, err := s.cli.Grant(ctx, ttl)
	if err != nil {
		return nil, nil, s.fail(ctx, "lead "+name, err)
	}
	sess, err := concurrency.NewSession(s.cli, concurrency.WithLease(lease.ID), concurrency.WithTTL(int(ttl)), concurrency.WithContext(s.ctx))
	if err != nil {
		s.revoke(lease.ID)
		return nil, nil, s.fail(ctx, "lead "+name, err)
	}
	el := concurrency.NewElection(sess, s.prefix+dirElection+url.PathEscape(name))
	if err := el.Campaign(ctx, s.replicaID); err != nil {
		sess.Close()
		return nil, nil, s.fail(ctx, "lead "+name, err)
	}
	lctx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-sess.Done():
		case <-lctx.Done():
		}
		cancel()
	}()
	var once sync.Once
	resign = func() {
		once.Do(func() {
			cancel()
			rctx, rcancel := context.WithTimeout(s.ctx, s.cfg.RequestTimeout)
			defer rcancel()
			el.Resign(rctx)
			sess.Close()
		})
	}
	return lctx, resign, nil
}

func (s *Store) revoke(id clientv3.LeaseID) {
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.RequestTimeout)
	defer cancel()
	s.cli.Revoke(ctx, id)
}
