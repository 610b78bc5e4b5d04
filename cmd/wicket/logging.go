package main

import (
	"fmt"
	"io"
	"log/slog"
)

// newLogger returns a logger whose level can be changed at run time.
func newLogger(w io.Writer, format string) (*slog.Logger, *slog.LevelVar, error) {
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
