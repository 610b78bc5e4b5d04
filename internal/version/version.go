// Package version holds the build's version and commit, set with -ldflags
// "-X github.com/wicket-sh/wicket/internal/version.Version=v1.2.3" or, when
// unset, read from the Go build info.
package version

import "runtime/debug"

// Set by -ldflags at release build time.
var (
	Version = ""
	Commit  = ""
)

// Get returns the version and commit of this binary.
func Get() (version, commit string) {
	version, commit = Version, Commit
	if bi, ok := debug.ReadBuildInfo(); ok {
		if version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && commit == "" {
				commit = s.Value
			}
		}
	}
	if version == "" {
		version = "dev"
	}
	if commit == "" {
		commit = "unknown"
	}
	return version, commit
}
