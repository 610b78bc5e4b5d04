package agent

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/machinetoken"
	"github.com/wicket-sh/wicket/internal/safedir"
)

// redacted is what every formatting of a MachineToken prints.
const redacted = "[redacted]"

// MachineToken holds the machine token in memory only. It never prints:
// fmt verbs, slog, JSON and text marshalling all yield "[redacted]". The
// token sits behind a pointer so that even fmt's reflection, which cannot
// call these methods on a MachineToken held in an unexported field, shows
// an address and not the token.
type MachineToken struct {
	v     *string
	cache *restrictCache
}

// restrictReuse is how long one attenuated copy is reused for the same
// lifetime and caveats. Copies are valid for attenuatedTTL (60 s) from their creation,
// so a reused copy still has at least 50 s left when sent; reusing it lets
// the issuer recognize a token it has just verified instead of checking
// the whole signature chain on every request.
const restrictReuse = 10 * time.Second

type restrictCache struct {
	mu      sync.Mutex
	entries map[restrictKey]restricted
}

// maxRestricted bounds the copies kept for reuse; OIDC copies are per
// audience, and the token cache holds at most max_audiences of those.
const maxRestricted = 4096

type restricted struct {
	tok     string
	created time.Time
}

// ErrMachineTokenMalformed is returned for a token that is not one.
var ErrMachineTokenMalformed = errors.New("machine token is malformed")

// ParseMachineToken wraps s (surrounding whitespace trimmed) after checking
// that it is a well-formed machine token. Errors never contain s.
func ParseMachineToken(s string) (MachineToken, error) {
	s = strings.TrimSpace(s)
	switch {
	case s == "":
		return MachineToken{}, fmt.Errorf("%w: empty", ErrMachineTokenMalformed)
	case len(s) > machinetoken.MaxTokenLen:
		return MachineToken{}, fmt.Errorf("%w: too long", ErrMachineTokenMalformed)
	case !strings.HasPrefix(s, "fm2_") || strings.ContainsAny(s, " \t\r\n,"):
		return MachineToken{}, ErrMachineTokenMalformed
	}
	// Attenuating decodes it: a token we could not attenuate is useless.
	if _, err := machinetoken.Restrict(s, time.Now(), time.Minute, nil); err != nil {
		return MachineToken{}, ErrMachineTokenMalformed
	}
	return MachineToken{v: &s, cache: &restrictCache{entries: map[restrictKey]restricted{}}}, nil
}

// IsZero reports whether no token is held.
func (t MachineToken) IsZero() bool { return t.v == nil }

// Format implements fmt.Formatter: every verb prints "[redacted]".
func (MachineToken) Format(f fmt.State, _ rune) { io.WriteString(f, redacted) }

// String returns "[redacted]".
func (MachineToken) String() string { return redacted }

// GoString returns "[redacted]".
func (MachineToken) GoString() string { return redacted }

// LogValue implements slog.LogValuer.
func (MachineToken) LogValue() slog.Value { return slog.StringValue(redacted) }

// MarshalText returns "[redacted]".
func (MachineToken) MarshalText() ([]byte, error) { return []byte(redacted), nil }

// MarshalJSON returns "[redacted]" as a JSON string.
func (MachineToken) MarshalJSON() ([]byte, error) { return []byte(`"` + redacted + `"`), nil }

// restrict returns the per-request copy: valid for ttl from now and only
// for features.
func (t MachineToken) restrict(now time.Time, ttl time.Duration, features ...machinetoken.Feature) (string, error) {
	return t.restrictScope(now, ttl, machinetoken.Scope{Features: features})
}

// restrictKey is what makes two copies interchangeable: a reused copy must
// carry exactly the caveats a fresh one would.
type restrictKey struct {
	ttl                 time.Duration
	features, audiences string
	hasAudiences        bool
	external            string
	spiffeIDs           string
	hasSPIFFEIDs        bool
	svidKinds           string
}

// restrictScope returns the per-request copy: valid for ttl from now and
// narrowed to s.
func (t MachineToken) restrictScope(now time.Time, ttl time.Duration, s machinetoken.Scope) (string, error) {
	if t.v == nil {
		return "", errors.New("no machine token")
	}
	if t.cache == nil || ttl < 2*restrictReuse {
		return machinetoken.RestrictScope(*t.v, now, ttl, s)
	}
	key := restrictKey{ttl: ttl, features: fmt.Sprintf("%q", s.Features), audiences: fmt.Sprintf("%q", s.Audiences),
		hasAudiences: s.Audiences != nil, external: s.External,
		spiffeIDs: fmt.Sprintf("%q", s.SPIFFEIDs), hasSPIFFEIDs: s.SPIFFEIDs != nil,
		svidKinds: fmt.Sprintf("%q", s.SVIDKinds)}
	t.cache.mu.Lock()
	defer t.cache.mu.Unlock()
	if e, ok := t.cache.entries[key]; ok && now.Sub(e.created) >= 0 && now.Sub(e.created) < restrictReuse {
		return e.tok, nil
	}
	tok, err := machinetoken.RestrictScope(*t.v, now, ttl, s)
	if err != nil {
		return "", err
	}
	if len(t.cache.entries) >= maxRestricted {
		// One entry per audience asked for: start over rather than grow.
		clear(t.cache.entries)
	}
	t.cache.entries[key] = restricted{tok: tok, created: now}
	return tok, nil
}

// containedIn reports whether b holds the token or its base64 body.
func (t MachineToken) containedIn(b []byte) bool {
	if t.v == nil {
		return false
	}
	body := strings.TrimPrefix(*t.v, "fm2_")
	return bytes.Contains(b, []byte(body))
}

// maxTokenRead bounds what is read from a token source.
const maxTokenRead = machinetoken.MaxTokenLen + 1024

// MachineTokenFromFile reads the token from path, which must be a regular
// file (not a symlink) owned by root or the agent's own uid that only its
// owner can read. With unlink, the file
// is removed after reading, but only if the path still names the file that
// was read.
func MachineTokenFromFile(path string, unlink bool) (MachineToken, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return MachineToken{}, fmt.Errorf("machine token file %q is a symlink", path)
		}
		return MachineToken{}, fmt.Errorf("machine token file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return MachineToken{}, fmt.Errorf("machine token file %q: %w", path, err)
	}
	switch {
	case !fi.Mode().IsRegular():
		return MachineToken{}, fmt.Errorf("machine token file %q is not a regular file", path)
	case fi.Mode().Perm()&0o077 != 0:
		return MachineToken{}, fmt.Errorf("machine token file %q is accessible by group or others (mode %04o)", path, fi.Mode().Perm())
	}
	// Whoever owns the file chose the machine the agent speaks for.
	if err := safedir.CheckOwner(path, fi, safedir.SelfOrRoot); err != nil {
		return MachineToken{}, fmt.Errorf("machine token file: %w", err)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxTokenRead))
	if err != nil {
		return MachineToken{}, fmt.Errorf("read machine token file %q: %w", path, err)
	}
	tok, err := ParseMachineToken(string(data))
	if err != nil {
		return MachineToken{}, fmt.Errorf("machine token file %q: %w", path, err)
	}
	if unlink {
		again, err := os.Lstat(path)
		if err != nil || !os.SameFile(fi, again) {
			return MachineToken{}, fmt.Errorf("machine token file %q changed while being read; not removed", path)
		}
		if err := os.Remove(path); err != nil {
			return MachineToken{}, fmt.Errorf("unlink machine token file: %w", err)
		}
	}
	return tok, nil
}

// MachineTokenFromFD reads the token from an inherited file descriptor
// until EOF, then closes it.
func MachineTokenFromFD(fd int) (MachineToken, error) {
	if fd < 0 {
		return MachineToken{}, fmt.Errorf("token fd %d: not a descriptor", fd)
	}
	f := os.NewFile(uintptr(fd), "machine-token-fd")
	if f == nil {
		return MachineToken{}, fmt.Errorf("token fd %d: not a descriptor", fd)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxTokenRead))
	if err != nil {
		return MachineToken{}, fmt.Errorf("read token fd %d: %w", fd, err)
	}
	tok, err := ParseMachineToken(string(data))
	if err != nil {
		return MachineToken{}, fmt.Errorf("token fd %d: %w", fd, err)
	}
	return tok, nil
}

// takeEnvToken reads api.MachineTokenEnv and unsets it before anything else can
// run (a child started later must not inherit it). set reports whether it
// was present.
func takeEnvToken() (tok MachineToken, set bool, err error) {
	v, set := os.LookupEnv(api.MachineTokenEnv)
	if !set {
		return MachineToken{}, false, nil
	}
	os.Unsetenv(api.MachineTokenEnv)
	tok, err = ParseMachineToken(v)
	if err != nil {
		return MachineToken{}, true, fmt.Errorf("%s: %w", api.MachineTokenEnv, err)
	}
	return tok, true, nil
}
