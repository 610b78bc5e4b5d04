//go:build !linux

package supervise

import (
	"context"
	"io"
	"os"
)

// Supervisor runs one workload; only supported on Linux.
type Supervisor struct{}

// New returns ErrUnsupported.
func New(Config) (*Supervisor, error) { return nil, ErrUnsupported }

// Close does nothing.
func (*Supervisor) Close() {}

// Run returns ErrUnsupported.
func (*Supervisor) Run(context.Context, <-chan struct{}) (Status, error) {
	return Status{}, ErrUnsupported
}

// SetNonDumpable returns ErrUnsupported.
func SetNonDumpable() error { return ErrUnsupported }

// Dumpable returns ErrUnsupported.
func Dumpable() (bool, error) { return true, ErrUnsupported }

// BecomeSubreaper returns ErrUnsupported.
func BecomeSubreaper() error { return ErrUnsupported }

// SetEnv replaces the workload's environment.
func (s *Supervisor) SetEnv([]string) {}

// TerminalWriter returns f: there is no terminal relay to adjust for.
func TerminalWriter(f *os.File) io.Writer { return f }
