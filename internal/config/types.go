package config

import (
	"fmt"
	"io/fs"
	"strconv"
	"time"
)

// Duration is a time.Duration written as "10s", "5m" in TOML.
type Duration struct{ time.Duration }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("invalid duration %q", b)
	}
	if v < 0 {
		return fmt.Errorf("negative duration %q", b)
	}
	d.Duration = v
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// Mode is a file mode written as an octal string ("0660") in TOML.
type Mode fs.FileMode

// UnmarshalText implements encoding.TextUnmarshaler.
func (m *Mode) UnmarshalText(b []byte) error {
	v, err := strconv.ParseUint(string(b), 8, 32)
	if err != nil || v > 0o777 {
		return fmt.Errorf("invalid mode %q: want octal permissions like \"0660\"", b)
	}
	*m = Mode(v)
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (m Mode) MarshalText() ([]byte, error) { return []byte(fmt.Sprintf("%04o", uint32(m))), nil }

// FileMode returns m as an fs.FileMode.
func (m Mode) FileMode() fs.FileMode { return fs.FileMode(m) }
