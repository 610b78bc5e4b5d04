package config

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Section is one feature's part of the agent config: a top-level TOML key
// the feature owns ("aws", "token_file"), decoded strictly from its own
// primitive into the value New returns, and checked by Validate once the
// core settings are decoded, overridden and checked. The core knows no
// feature's settings; a feature registers its Section with the agent
// (internal/agent/builtin).
//
// Struct tags work in a section's type as in the core: reload:"restart"
// marks static fields (RestartRequired and KeepStatic read them), and
// DynamicFields lists the others under the section's key.
type Section interface {
	// Key is the top-level TOML key the section owns.
	Key() string
	// New returns a pointer to the section's defaults, which the file's
	// values are decoded over.
	New() any
	// Validate checks v (what New returned, decoded) against the core
	// settings in c; it may settle derived values in v, claim token
	// files (AddTokenFile, ImplyTokenFile) and reserve the path of a
	// socket it serves (ReservePath).
	Validate(v any, c *Agent) []error
}

// NewAgent returns the defaults with sections registered, each holding
// its own defaults.
func NewAgent(sections []Section) *Agent {
	c := DefaultAgent()
	c.sections = sections
	c.values = make(map[string]any, len(sections))
	for _, s := range sections {
		c.values[s.Key()] = s.New()
	}
	return c
}

// Section returns the decoded value of the section with key (the pointer
// its New returned), nil when no such section is registered.
func (c *Agent) Section(key string) any { return c.values[key] }

// coreKeys maps each top-level key of the core to its field index.
func coreKeys() map[string]int {
	t := reflect.TypeOf(Agent{})
	m := map[string]int{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if f.IsExported() && name != "" && name != "-" {
			m[name] = i
		}
	}
	return m
}

// decode reads the file top-level key by key: each core section and each
// registered feature section is decoded from its own primitive into its
// own type. Whatever nobody decoded (a key misspelt in a section, a
// section nobody owns) is refused by name.
func (c *Agent) decode(data []byte) error {
	var raw map[string]toml.Primitive
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(&raw)
	if err != nil {
		return tomlError(err)
	}
	core := coreKeys()
	v := reflect.ValueOf(c).Elem()
	for key, prim := range raw {
		var dst any
		if i, ok := core[key]; ok {
			dst = v.Field(i).Addr().Interface()
		} else if sv, ok := c.values[key]; ok {
			dst = sv
		} else {
			continue // left undecoded: reported below
		}
		if err := md.PrimitiveDecode(prim, dst); err != nil {
			return tomlError(err)
		}
	}
	return undecoded(md)
}

// validateSections runs each feature section's checks in registration
// order, then the checks on every token file claimed.
func (c *Agent) validateSections() []error {
	c.tokenFiles, c.fileNames, c.reserved = nil, nil, nil
	var errs []error
	for _, s := range c.sections {
		errs = append(errs, s.Validate(c.values[s.Key()], c)...)
	}
	return append(errs, c.checkTokenFiles()...)
}

// sectionFields visits each registered section's value under its key.
func (c *Agent) sectionFields(f func(key string, v any)) {
	for _, s := range c.sections {
		f(s.Key(), c.values[s.Key()])
	}
}

// AgentDynamicFields is DynamicFields for the agent with sections: the
// core's dynamic keys, then each section's under its key.
func AgentDynamicFields(sections []Section) []string {
	out := DynamicFields(&Agent{})
	for _, s := range sections {
		out = append(out, dynamicFields(reflect.TypeOf(s.New()).Elem(), s.Key())...)
	}
	return out
}

// The token files the agent keeps: a facility of the core that features
// claim files from ([[token_file]], and those [aws] and [azure] imply).
// One list, so that one set of rules (one writer per path, never over a
// file the agent reads or serves, a bounded count, an issuer to get
// tokens from) holds whichever feature asked.

// Defaults and bounds of the token files.
const (
	DefaultTokenFileMode    Mode    = 0o440
	DefaultTokenFileRefresh Percent = 0.8

	// MaxTokenFiles bounds the files one agent keeps.
	MaxTokenFiles = 64
)

// TokenFileSpec is one token file the agent keeps, with defaults applied
// and the group resolved. Two equal specs (ignoring ImpliedBy) describe the
// same refresher.
type TokenFileSpec struct {
	Path     string
	Audience string
	Mode     fs.FileMode
	GID      int     // -1 keeps the agent's group
	Refresh  float64 // fraction of a token's life
	// TTL is the token life asked for this file; 0 shares the guest
	// API's cached token for the audience.
	TTL time.Duration
	// ImpliedBy is the section ("aws", "azure") whose settings imply the
	// file, "" for a [[token_file]].
	ImpliedBy string
}

// Percent is a share written as "80%" in TOML and held as a fraction (0.8).
type Percent float64

// UnmarshalText implements encoding.TextUnmarshaler.
func (p *Percent) UnmarshalText(b []byte) error {
	s, ok := strings.CutSuffix(string(b), "%")
	v, err := strconv.ParseFloat(s, 64)
	if !ok || err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		return fmt.Errorf("invalid percentage %q: want a share like \"80%%\"", b)
	}
	*p = Percent(v / 100)
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (p Percent) MarshalText() ([]byte, error) {
	return []byte(strconv.FormatFloat(float64(p)*100, 'f', -1, 64) + "%"), nil
}

// TokenFileSpecs returns every token file to keep, in the order the
// sections claimed them. Set by Validate.
func (c *Agent) TokenFileSpecs() []TokenFileSpec { return c.tokenFiles }

// AddTokenFile claims a token file for the section entry name (e.g.
// "token_file[2]", used in messages). A section's Validate calls it.
func (c *Agent) AddTokenFile(name string, s TokenFileSpec) {
	c.tokenFiles, c.fileNames = append(c.tokenFiles, s), append(c.fileNames, name)
}

// ImplyTokenFile settles the file a cloud section points its SDKs at,
// among the files claimed so far: the section's token_file (written with
// aud unless a claimed file has that path, whatever its audience, e.g.
// MinIO's client ID); or, without one, the single claimed file for aud; or
// a new file at def, which it claims for section.
func (c *Agent) ImplyTokenFile(section, path, def, aud string) (string, error) {
	var sameAud []string
	for _, s := range c.tokenFiles {
		if path != "" && s.Path == path {
			return path, nil
		}
		if s.Audience == aud {
			sameAud = append(sameAud, s.Path)
		}
	}
	switch {
	case path != "":
		if err := CheckFilePath(path); err != nil {
			return "", fmt.Errorf("%s.token_file: %w", section, err)
		}
		if len(sameAud) > 0 {
			// Two files for one audience, the SDKs pointed at the one
			// no [[token_file]] describes: almost surely a mistake.
			return "", fmt.Errorf("%s.token_file %q: the [[token_file]] for audience %s is %q; use that path or leave %s.token_file empty", section, path, aud, sameAud[0], section)
		}
	case len(sameAud) == 1:
		return sameAud[0], nil
	case len(sameAud) > 1:
		return "", fmt.Errorf("%s: several [[token_file]] have audience %s (%s): set %s.token_file to the one to use", section, aud, strings.Join(sameAud, ", "), section)
	default:
		path = def
	}
	c.AddTokenFile(section, TokenFileSpec{Path: path, Audience: aud, Mode: DefaultTokenFileMode.FileMode(), GID: -1,
		Refresh: float64(DefaultTokenFileRefresh), ImpliedBy: section})
	return path, nil
}

// ReservePath records that the agent serves path (a feature's socket,
// named name in messages, e.g. "spiffe.socket_path"): no token file may be
// written over it. A section's Validate calls it.
func (c *Agent) ReservePath(name, path string) {
	if c.reserved == nil {
		c.reserved = map[string]string{}
	}
	c.reserved[path] = name
}

// DefaultTokenFileTTL gives the claimed file at path tokens of life ttl
// unless it sets its own ttl (a section whose SDKs cache the file's
// content, as [azure]'s do). A section's Validate calls it after claiming
// the file.
func (c *Agent) DefaultTokenFileTTL(path string, ttl time.Duration) {
	for i := range c.tokenFiles {
		if c.tokenFiles[i].Path == path && c.tokenFiles[i].TTL == 0 {
			c.tokenFiles[i].TTL = ttl
		}
	}
}

// checkTokenFiles holds every claimed file to the core's rules and gives
// the files without a group TokenFileGroup's.
func (c *Agent) checkTokenFiles() []error {
	var errs []error
	specs, names := c.tokenFiles, c.fileNames
	if len(specs) > MaxTokenFiles {
		errs = append(errs, fmt.Errorf("token_file: %d files, at most %d", len(specs), MaxTokenFiles))
	}
	if len(specs) > 0 && c.Issuer.URL == "" {
		errs = append(errs, fmt.Errorf("%s: token files need issuer.url to get tokens from", names[0]))
	}
	// One writer per file, and never over a file the agent reads or serves.
	taken := map[string]string{
		c.API.Path: "api.socket_path", c.Admin.Path: "admin.socket_path",
		c.Issuer.TokenFile: "issuer.token_file", c.Admin.TokenFile: "admin.token_file",
	}
	for p, name := range c.reserved {
		taken[p] = name
	}
	delete(taken, "")
	for i, s := range specs {
		if other, dup := taken[s.Path]; dup && s.Path != "" {
			errs = append(errs, fmt.Errorf("%s: path %q is also %s", names[i], s.Path, other))
			continue
		}
		taken[s.Path] = names[i]
	}
	if c.TokenFileGroup != "" {
		gid, err := LookupGID(c.TokenFileGroup)
		if err != nil {
			errs = append(errs, fmt.Errorf("token file group: %w", err))
		}
		for i := range specs {
			if specs[i].GID == -1 {
				specs[i].GID = gid
			}
		}
	}
	return errs
}

// CheckFilePath accepts a clean absolute path to a file.
func CheckFilePath(p string) error {
	if p == "" || !filepath.IsAbs(p) || filepath.Clean(p) != p || p == "/" {
		return fmt.Errorf("%q: want a clean absolute path to a file", p)
	}
	return nil
}

// CheckTokenFileMode: a token file is read by the workload through its
// group; nobody else reads it, and nobody but the agent (which replaces it
// whole) writes it.
func CheckTokenFileMode(m fs.FileMode) error {
	switch {
	case m&0o007 != 0:
		return errors.New("no access for others is allowed; use group")
	case m&0o111 != 0:
		return errors.New("execute bits make no sense on a token")
	case m&0o020 != 0:
		return errors.New("the group may read, not write")
	case m&0o440 == 0:
		return errors.New("neither owner nor group could read it")
	}
	return nil
}

// CheckPrintable accepts 1..max bytes of printable ASCII without spaces.
func CheckPrintable(s string, max int) error {
	if s == "" || len(s) > max {
		return fmt.Errorf("want 1..%d characters", max)
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return errors.New("want printable ASCII without spaces")
		}
	}
	return nil
}
