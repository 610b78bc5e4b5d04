package issuer

import (
	"context"
	"errors"
	"sync"

	"github.com/wicket-sh/wicket/internal/config"
)

// StartOptions configure Start.
type StartOptions struct {
	Options
	// Init creates the state first (see Init) when there is none yet:
	// `wicket dev` and tests. A production issuer's state is made once,
	// explicitly, by `wicket issuer init`; without Init, Start refuses
	// missing state as New does.
	Init bool
}

// Running is an issuer started by Start: serving, and ready.
type Running struct {
	*Issuer
	cancel context.CancelFunc
	done   chan struct{}
	err    error // Run's result, set before done closes
	stop   sync.Once
}

// Start brings an issuer up the one way every caller does: the state
// initialized if asked to, New, Run in the background, and a wait until
// the public listener and the admin socket accept. It returns once the
// issuer is ready, or with the error that kept it from being ready. The
// issuer runs until ctx ends or Stop is called.
//
// opts.Listener, when set, belongs to Start from the call on: it is
// closed on every failure, as Run closes it on shutdown.
func Start(ctx context.Context, opts StartOptions) (*Running, error) {
	fail := func(err error) (*Running, error) {
		if opts.Listener != nil {
			opts.Listener.Close()
		}
		return nil, err
	}
	if opts.Init {
		cfg, err := config.LoadIssuer(opts.ConfigPath, opts.Overrides...)
		if err != nil {
			return fail(err)
		}
		// Init refuses state it could not have created (another owner, a
		// writable or symlinked directory chain): never "already there".
		if _, err := Init(ctx, cfg); err != nil {
			return fail(err)
		}
	}
	s, err := New(ctx, opts.Options)
	if err != nil {
		return fail(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	r := &Running{Issuer: s, cancel: cancel, done: make(chan struct{})}
	go func() {
		r.err = s.Run(runCtx)
		close(r.done)
	}()
	select {
	case <-s.Ready():
		return r, nil
	case <-r.done:
		// Run failed before serving (the admin socket, the public
		// address); it may not have reached the listener to close it.
		cancel()
		if r.err == nil {
			r.err = errors.New("issuer stopped before it was ready")
		}
		return fail(r.err)
	}
}

// Done is closed when the issuer has stopped.
func (r *Running) Done() <-chan struct{} { return r.done }

// Wait waits for the issuer to stop and returns Run's error.
func (r *Running) Wait() error {
	<-r.done
	return r.err
}

// Stop shuts the issuer down and waits for it; Run's error is returned to
// every caller.
func (r *Running) Stop() error {
	r.stop.Do(r.cancel)
	return r.Wait()
}
