package issuer

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wicket-sh/wicket/internal/config"
)

// Start without Init refuses missing state as New does; with a failure at
// any step (no state, an admin socket it cannot make) it returns the error
// and closes the listener it was given, so nothing is left serving.
func TestStart_FailuresCloseTheListener(t *testing.T) {
	cases := []struct {
		name string
		init bool
		conf func(dir string) func(*config.Issuer)
		want string
	}{
		{"no state without init", false, func(string) func(*config.Issuer) { return nil }, "seal.key"},
		{"admin socket directory is a file", true, func(dir string) func(*config.Issuer) {
			return func(c *config.Issuer) { c.Admin.Path = filepath.Join(dir, "file", "admin.sock") }
		}, "admin socket"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := shortDir(t)
			if err := os.WriteFile(filepath.Join(dir, "file"), nil, 0o600); err != nil {
				t.Fatal(err)
			}
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			ov := []config.IssuerOverride{issuerConfig(dir, tc.conf(dir))}
			r, err := Start(context.Background(), StartOptions{Init: tc.init, Options: Options{Overrides: ov, Listener: ln, Logger: slog.New(slog.DiscardHandler)}})
			if err == nil {
				r.Stop()
				t.Fatal("Start succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Start: %v, want it to mention %q", err, tc.want)
			}
			// A listener left open would block Accept: the deadline turns
			// that into a failure instead of a hang.
			ln.(*net.TCPListener).SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
				t.Errorf("listener still open after a failed Start: Accept %v", err)
			}
		})
	}
}

// Start returns a ready issuer (its sockets accept at once); Stop ends it,
// reports Run's result, and may be called again.
func TestStart_ReadyThenStop(t *testing.T) {
	dir := shortDir(t)
	ov := []config.IssuerOverride{issuerConfig(dir, func(c *config.Issuer) { c.Server.Listen = "127.0.0.1:0" })}
	r, err := Start(context.Background(), StartOptions{Init: true, Options: Options{Overrides: ov, Logger: slog.New(slog.DiscardHandler)}})
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("unix", filepath.Join(dir, "admin.sock"))
	if err != nil {
		t.Fatalf("admin socket not accepting after Start: %v", err)
	}
	c.Close()
	c, err = net.Dial("tcp", r.Addr().String())
	if err != nil {
		t.Fatalf("public listener not accepting after Start: %v", err)
	}
	c.Close()
	if err := r.Stop(); err != nil {
		t.Errorf("Stop: %v", err)
	}
	if err := r.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	select {
	case <-r.Done():
	default:
		t.Error("Done not closed after Stop")
	}
	if _, err := net.Dial("unix", filepath.Join(dir, "admin.sock")); err == nil {
		t.Error("admin socket still accepting after Stop")
	}
}
