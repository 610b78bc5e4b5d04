package spiffe

import (
	"errors"
	"fmt"
	"io/fs"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/spiffe"
)

// FilesKey is the [[svid_file]] section's TOML key.
const FilesKey = "svid_file"

// The files one [[svid_file]] keeps in its dir.
const (
	SVIDFileName   = "svid.pem"     // the certificate chain, leaf first
	KeyFileName    = "svid_key.pem" // the private key, PKCS#8
	BundleFileName = "bundle.pem"   // the trust domain's X.509 authorities
)

// MaxSVIDFiles bounds the [[svid_file]] entries of one agent.
const MaxSVIDFiles = 32

// certMode is svid.pem's and bundle.pem's mode: certificates are public.
const certMode fs.FileMode = 0o444

// SVIDFile is one [[svid_file]]: a directory the agent keeps holding an
// identity's X.509-SVID, its key and the bundle, for programs that only
// read files (the spiffe-helper use case). Dynamic: a reload starts,
// stops or restarts writers to match.
type SVIDFile struct {
	// Dir is the directory of the three files (created 0755 if missing;
	// it and its ancestors must be root's or the agent's, as a token
	// file's).
	Dir string `toml:"dir"`
	// SVIDName is the workload name whose SVID the files hold; "" the
	// machine's own ID.
	SVIDName string `toml:"svid_name"`
	// Owner and Group own the three files (a name or a number); "" keeps
	// the agent's.
	Owner string `toml:"owner"`
	Group string `toml:"group"`
	// Mode is the key file's mode, 0400 or 0440 (default 0440); the
	// certificates are 0444.
	Mode *config.Mode `toml:"mode"`
	// Signal is sent, after each rotation, to the process PIDFile names
	// ("SIGHUP", "SIGUSR1", ...).
	Signal  string `toml:"signal"`
	PIDFile string `toml:"pid_file"`
	// Command is run after each rotation, without a shell, with a bounded
	// time and an environment holding only PATH.
	Command []string `toml:"command"`
}

// fileSpec is one [[svid_file]] checked, with defaults and ids resolved.
// Two equal specs describe the same writer.
type fileSpec struct {
	dir      string
	svidName string
	uid, gid int // -1: the agent's
	keyMode  fs.FileMode
	signal   syscall.Signal
	pidFile  string
	command  string // NUL-joined, so that the spec is comparable
}

func (s fileSpec) args() []string {
	if s.command == "" {
		return nil
	}
	return strings.Split(s.command, "\x00")
}

// signals are the signals a [[svid_file]] may send: those programs take
// as "reload" (SIGTERM and SIGKILL are not: a rotation must not end the
// program).
var signals = map[string]syscall.Signal{
	"SIGHUP": syscall.SIGHUP, "SIGUSR1": syscall.SIGUSR1, "SIGUSR2": syscall.SIGUSR2, "SIGWINCH": syscall.SIGWINCH,
}

// FilesModule is the [[svid_file]] section. Its writers run in the
// [spiffe] feature's instance, which holds the SVID cache they write
// from (the Workload API's), so [[svid_file]] needs [spiffe] enabled.
type FilesModule struct{}

var _ config.Section = FilesModule{}

// Key implements config.Section.
func (FilesModule) Key() string { return FilesKey }

// New implements config.Section: no files by default.
func (FilesModule) New() any { return &[]SVIDFile{} }

// Validate implements config.Section.
func (FilesModule) Validate(v any, c *config.Agent) []error {
	files := *v.(*[]SVIDFile)
	if len(files) == 0 {
		return nil
	}
	var errs []error
	if !From(c).Enabled {
		errs = append(errs, errors.New("svid_file needs [spiffe] enabled = true (the files hold the Workload API's SVIDs)"))
	}
	if len(files) > MaxSVIDFiles {
		errs = append(errs, fmt.Errorf("svid_file: %d entries, at most %d", len(files), MaxSVIDFiles))
	}
	dirs := map[string]bool{}
	for i, f := range files {
		name := fmt.Sprintf("svid_file[%d]", i)
		s, ferrs := f.spec(name, c)
		errs = append(errs, ferrs...)
		if dirs[s.dir] {
			errs = append(errs, fmt.Errorf("%s.dir %q: another svid_file writes there", name, s.dir))
		}
		dirs[s.dir] = true
		if s.dir != "" {
			for _, base := range []string{SVIDFileName, KeyFileName, BundleFileName} {
				c.ReservePath(name+".dir", filepath.Join(s.dir, base))
			}
		}
	}
	return errs
}

// fileSpecs returns the running config's [[svid_file]] entries, checked.
func fileSpecs(c *config.Agent) []fileSpec {
	files, _ := c.Section(FilesKey).(*[]SVIDFile)
	if files == nil {
		return nil
	}
	var out []fileSpec
	for i, f := range *files {
		if s, errs := f.spec(fmt.Sprintf("svid_file[%d]", i), c); len(errs) == 0 {
			out = append(out, s)
		}
	}
	return out
}

// spec checks one [[svid_file]] and applies its defaults.
func (f SVIDFile) spec(name string, c *config.Agent) (fileSpec, []error) {
	var errs []error
	s := fileSpec{dir: f.Dir, svidName: f.SVIDName, uid: -1, gid: -1, keyMode: 0o440}
	if err := config.CheckFilePath(f.Dir); err != nil {
		errs = append(errs, fmt.Errorf("%s.dir: %w", name, err))
	}
	if f.SVIDName != "" {
		if err := spiffe.ValidateWorkloadName(f.SVIDName); err != nil {
			errs = append(errs, fmt.Errorf("%s.svid_name: %w", name, err))
		}
	}
	if f.Owner != "" {
		uid, err := lookupUID(f.Owner)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s.owner: %w", name, err))
		}
		s.uid = uid
	}
	group := f.Group
	if group == "" {
		group = c.TokenFileGroup // `wicket agent run`: the workload's
	}
	gid, err := config.LookupGID(group)
	if err != nil {
		errs = append(errs, fmt.Errorf("%s.group: %w", name, err))
	}
	s.gid = gid
	if f.Mode != nil {
		s.keyMode = f.Mode.FileMode()
		if s.keyMode != 0o400 && s.keyMode != 0o440 {
			errs = append(errs, fmt.Errorf("%s.mode %04o: the key file is 0400 or 0440", name, uint32(s.keyMode)))
		}
	}
	switch {
	case f.Signal == "" && f.PIDFile == "":
	case f.Signal == "" || f.PIDFile == "":
		errs = append(errs, fmt.Errorf("%s: signal and pid_file go together", name))
	default:
		sig, ok := signals[f.Signal]
		if !ok {
			errs = append(errs, fmt.Errorf("%s.signal %q: want SIGHUP, SIGUSR1, SIGUSR2 or SIGWINCH", name, f.Signal))
		}
		s.signal = sig
		if err := config.CheckFilePath(f.PIDFile); err != nil {
			errs = append(errs, fmt.Errorf("%s.pid_file: %w", name, err))
		}
		s.pidFile = f.PIDFile
	}
	if len(f.Command) > 0 {
		if !filepath.IsAbs(f.Command[0]) || filepath.Clean(f.Command[0]) != f.Command[0] {
			errs = append(errs, fmt.Errorf("%s.command: the program must be a clean absolute path (no shell, no PATH lookup)", name))
		}
		if len(f.Command) > 64 {
			errs = append(errs, fmt.Errorf("%s.command: at most 64 arguments", name))
		}
		if slices.ContainsFunc(f.Command, func(a string) bool { return strings.ContainsRune(a, 0) }) {
			errs = append(errs, fmt.Errorf("%s.command: an argument holds a NUL byte", name))
		}
		s.command = strings.Join(f.Command, "\x00")
	}
	return s, errs
}

// lookupUID resolves a user name or number.
func lookupUID(owner string) (int, error) {
	if n, err := strconv.Atoi(owner); err == nil {
		if n < 0 {
			return 0, fmt.Errorf("negative uid %d", n)
		}
		return n, nil
	}
	u, err := user.Lookup(owner)
	if err != nil {
		return 0, fmt.Errorf("unknown user %q", owner)
	}
	return strconv.Atoi(u.Uid)
}
