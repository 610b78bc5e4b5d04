// Package config loads, validates and diffs wicket's TOML configuration.
//
// Every field is either static (needs a restart: socket paths, listen
// addresses, state backend) or dynamic (applied by a hot reload). Static
// fields carry the struct tag `reload:"restart"`; RestartRequired lists the
// ones that differ between two configs.
package config

import (
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"strings"
	"syscall"
)

// MaxFileSize bounds a config file; anything larger is refused unread.
const MaxFileSize = 1 << 20

// ErrChanged is returned when the file changed while it was being read: the
// caller keeps its running config and may retry.
var ErrChanged = errors.New("config file changed while being read")

// ReadFile reads a config file through one open descriptor, checking size
// and modification time before and after (S-reload): a file being rewritten
// in place is refused rather than half-read, and a file replaced by rename
// mid-read cannot mix two versions because the descriptor pins one inode.
func ReadFile(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			// Following a symlink could read a file of another user's choosing.
			return nil, fmt.Errorf("open config %q: is a symlink", path)
		}
		return nil, fmt.Errorf("open config: %w", err)
	}
	defer f.Close()
	before, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("stat config %q: %w", path, err)
	}
	if !before.Mode().IsRegular() {
		return nil, fmt.Errorf("config %q is not a regular file", path)
	}
	if before.Size() > MaxFileSize {
		return nil, fmt.Errorf("config %q is %d bytes, more than %d", path, before.Size(), MaxFileSize)
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("read config %q: %w", path, err)
	}
	if testHookAfterRead != nil {
		testHookAfterRead()
	}
	after, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("stat config %q: %w", path, err)
	}
	if after.Size() != before.Size() || !after.ModTime().Equal(before.ModTime()) || int64(len(data)) != after.Size() {
		return nil, fmt.Errorf("%w: %q", ErrChanged, path)
	}
	return data, nil
}

// load is LoadAgent and LoadIssuer: the defaults c, then the file at path
// (strictly decoded) if any, then the overrides, then full validation. The
// same order at startup and on every reload (S-reload, S-flags).
func load[T any, O ~func(*T)](c *T, path string, overrides []O, validate func(*T) error) (*T, error) {
	if path != "" {
		data, err := ReadFile(path)
		if err != nil {
			return nil, err
		}
		if err := decodeStrict(data, c); err != nil {
			return nil, fmt.Errorf("config %q: %w", path, err)
		}
	}
	for _, o := range overrides {
		o(c)
	}
	if err := validate(c); err != nil {
		if path != "" {
			return nil, fmt.Errorf("config %q: %w", path, err)
		}
		return nil, err
	}
	return c, nil
}

// testHookAfterRead lets a test change the file between read and re-check.
var testHookAfterRead func()

// RestartRequired lists the dotted TOML names ("api.socket_path") of the
// static fields that differ between old and new, which must be structs of
// the same type. A reload applies the dynamic part and reports these.
//
// For an agent config the feature sections are compared too, each under
// its key, by their own tags.
func RestartRequired(old, new any) []string {
	var out []string
	diffStatic(reflect.ValueOf(old), reflect.ValueOf(new), "", false, &out)
	if oa, ok := old.(*Agent); ok {
		na := new.(*Agent)
		oa.sectionFields(func(key string, v any) {
			if nv := na.values[key]; nv != nil {
				diffStatic(reflect.ValueOf(v), reflect.ValueOf(nv), key, false, &out)
			}
		})
	}
	return out
}

// KeepStatic copies every static field (tagged reload:"restart", at any
// depth) from running into next, so that a reload applies only the dynamic
// part. It is driven by the same tags as RestartRequired: which fields are
// static is recorded once. next and running must be pointers to the same
// struct type.
func KeepStatic(next, running any) {
	copyStatic(reflect.ValueOf(next).Elem(), reflect.ValueOf(running).Elem())
	if na, ok := next.(*Agent); ok {
		ra := running.(*Agent)
		na.sectionFields(func(key string, v any) {
			if rv := ra.values[key]; rv != nil {
				copyStatic(reflect.ValueOf(v).Elem(), reflect.ValueOf(rv).Elem())
			}
		})
	}
}

func copyStatic(dst, src reflect.Value) {
	if dst.Kind() != reflect.Struct || dst.Type() == reflect.TypeOf(Duration{}) {
		return
	}
	for i := 0; i < dst.NumField(); i++ {
		f := dst.Type().Field(i)
		if !f.IsExported() {
			continue
		}
		if f.Tag.Get("reload") == "restart" {
			dst.Field(i).Set(src.Field(i))
			continue
		}
		copyStatic(dst.Field(i), src.Field(i))
	}
}

// fieldName is the dotted config name of f under prefix, as
// RestartRequired reports it; false for fields not in the file.
func fieldName(f reflect.StructField, prefix string) (string, bool) {
	name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
	if name == "-" {
		return "", false
	}
	switch {
	case name == "" && f.Anonymous:
		name = prefix // embedded struct: its fields are promoted
	case name == "":
		name = f.Name
	}
	if prefix != "" && name != prefix {
		name = prefix + "." + name
	}
	return name, true
}

// DynamicFields lists the dotted names of the settings a reload applies
// (every leaf not under a reload:"restart" tag) of the config type v
// points to. Tests use it to prove that each one takes effect.
// For an agent config with feature sections, see AgentDynamicFields.
func DynamicFields(v any) []string {
	return dynamicFields(reflect.TypeOf(v).Elem(), "")
}

// dynamicFields lists the dynamic leaves of t under prefix.
func dynamicFields(t reflect.Type, prefix string) []string {
	var out []string
	var walk func(t reflect.Type, prefix string)
	walk = func(t reflect.Type, prefix string) {
		if t.Kind() != reflect.Struct || t == reflect.TypeOf(Duration{}) {
			out = append(out, prefix)
			return
		}
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			if !f.IsExported() || f.Tag.Get("reload") == "restart" {
				continue
			}
			if name, ok := fieldName(f, prefix); ok {
				walk(f.Type, name)
			}
		}
	}
	walk(t, prefix)
	return out
}

func diffStatic(a, b reflect.Value, prefix string, static bool, out *[]string) {
	if a.Kind() == reflect.Pointer {
		if a.IsNil() || b.IsNil() {
			if static && a.IsNil() != b.IsNil() {
				*out = append(*out, prefix)
			}
			return
		}
		a, b = a.Elem(), b.Elem()
	}
	if a.Kind() == reflect.Struct && a.Type() != reflect.TypeOf(Duration{}) {
		for i := 0; i < a.NumField(); i++ {
			f := a.Type().Field(i)
			if !f.IsExported() {
				continue
			}
			name, ok := fieldName(f, prefix)
			if !ok {
				continue
			}
			diffStatic(a.Field(i), b.Field(i), name, static || f.Tag.Get("reload") == "restart", out)
		}
		return
	}
	if static && !reflect.DeepEqual(a.Interface(), b.Interface()) {
		*out = append(*out, prefix)
	}
}
