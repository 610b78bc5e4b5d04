package cli

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/wicket-sh/wicket/api"
)

// newLogger returns a logger whose level can be changed at run time.
func NewLogger(w io.Writer, format string) (*slog.Logger, *slog.LevelVar, error) {
	lv := new(slog.LevelVar)
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text", "":
		return slog.New(slog.NewTextHandler(w, opts)), lv, nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), lv, nil
	}
	return nil, nil, fmt.Errorf("--log-format %q: want text or json", format)
}

// ReloadOnHUP calls reload on every SIGHUP until ctx ends (S-reload: a
// failed reload keeps the running config and is logged in full). The
// handler is installed before it returns, so a SIGHUP sent once the
// service is ready is never lost (nor, by Go's default, fatal); the
// reloads run on a goroutine of their own.
func ReloadOnHUP(ctx context.Context, reload func(context.Context) (api.ReloadResult, error), logger *slog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		defer signal.Stop(hup)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				if _, err := reload(ctx); err != nil {
					logger.Error("reload on SIGHUP failed; keeping running config", "err", err)
				}
			}
		}
	}()
}
