package packaging

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/wicket-sh/wicket/internal/sockettest"
)

// repoRoot is the checkout this package is in.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

func runIn(t *testing.T, dir string, env []string, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

// buildBinaries builds wicket and wicket-agent for this machine into a
// temporary directory (the units' and images' commands are run against
// them).
func buildBinaries(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	runIn(t, repoRoot(t), nil, "go", "build", "-o", dir, "./cmd/wicket", "./cmd/wicket-agent")
	return dir
}

// checkCommandLine runs argv (a binary of dir and its arguments) with
// --help: cobra parses every flag first, so an unknown command or flag
// fails, and a known one prints the usage without running anything.
func checkCommandLine(t *testing.T, dir string, argv []string) {
	t.Helper()
	bin := filepath.Join(dir, filepath.Base(argv[0]))
	args := append([]string{}, argv[1:]...)
	if i := indexOf(args, "--"); i >= 0 {
		args = args[:i]
	}
	out, err := exec.Command(bin, append(args, "--help")...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Usage:") {
		t.Errorf("%v does not parse: %v\n%s", argv, err, out)
	}
}

func indexOf(s []string, v string) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}

// unitSettings reads a unit file's Key=Value lines (comments skipped),
// each key with every value it is given.
func unitSettings(t *testing.T, path string) map[string][]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string][]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if l == "" || l[0] == '#' || l[0] == ';' || l[0] == '[' {
			continue
		}
		k, v, ok := strings.Cut(l, "=")
		if !ok {
			t.Fatalf("%s: line %q", path, l)
		}
		m[k] = append(m[k], v)
	}
	return m
}

// TestSystemdUnits: both units pass `systemd-analyze verify` without a
// word (unknown keys are only warnings there, so any output fails), carry
// the sandboxing they document, and start a command line the binary
// accepts. systemd-analyze needs ExecStart's binary to exist: the test
// verifies a copy of each unit pointing at binaries it built.
func TestSystemdUnits(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		sockettest.Unavailable(t, "systemd-analyze not installed (Debian package systemd; .ci/run installs it)")
	}
	bins := buildBinaries(t)
	work := t.TempDir()
	want := map[string]map[string]string{
		"wicket-agent.service": {
			"User": "root", "CapabilityBoundingSet": "CAP_CHOWN", "RuntimeDirectory": "wicket",
			"RuntimeDirectoryMode": "0755", "ReadWritePaths": "/run/wicket",
		},
		"wicket-issuer.service": {
			"User": "wicket", "CapabilityBoundingSet": "", "StateDirectory": "wicket", "StateDirectoryMode": "0700",
			"RuntimeDirectory": "wicket-issuer", "RuntimeDirectoryMode": "0700", "ReadWritePaths": "/var/lib/wicket /run/wicket-issuer",
		},
	}
	common := map[string]string{
		"ProtectSystem": "strict", "NoNewPrivileges": "yes", "PrivateTmp": "yes", "ProtectHome": "yes",
		"RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6", "SystemCallFilter": "@system-service",
		"LockPersonality": "yes", "MemoryDenyWriteExecute": "yes", "AmbientCapabilities": "",
	}
	for name, keys := range want {
		t.Run(name, func(t *testing.T) {
			src := filepath.Join(repoRoot(t), "packaging", "systemd", name)
			set := unitSettings(t, src)
			for k, v := range common {
				keys[k] = v
			}
			for k, v := range keys {
				if got := set[k]; len(got) != 1 || got[0] != v {
					t.Errorf("%s=%q, want %q", k, got, v)
				}
			}
			exe := strings.Fields(set["ExecStart"][0])
			if !strings.HasPrefix(exe[0], "/usr/local/bin/") {
				t.Fatalf("ExecStart %q", exe)
			}
			checkCommandLine(t, bins, exe)

			b, _ := os.ReadFile(src)
			copyPath := filepath.Join(work, name)
			if err := os.WriteFile(copyPath, bytes.ReplaceAll(b, []byte("/usr/local/bin/"), []byte(bins+"/")), 0o644); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(sa, "verify", copyPath)
			cmd.Dir = work
			out, err := cmd.CombinedOutput()
			if err != nil || len(out) != 0 {
				t.Errorf("systemd-analyze verify %s: %v\n%s", name, err, out)
			}
			// The check itself: a misspelt key is reported, so silence
			// above means every key was understood.
			bad := bytes.Replace(b, []byte("ProtectSystem=strict"), []byte("ProtectSytem=strict"), 1)
			bad = bytes.ReplaceAll(bad, []byte("/usr/local/bin/"), []byte(bins+"/"))
			badPath := filepath.Join(work, "bad-"+name)
			os.WriteFile(badPath, bad, 0o644)
			if out, _ := exec.Command(sa, "verify", badPath).CombinedOutput(); !bytes.Contains(out, []byte("ProtectSytem")) {
				t.Errorf("systemd-analyze verify did not report a misspelt key: %s", out)
			}
		})
	}
}

// dockerInstr is one instruction of a Dockerfile (continuations joined).
type dockerInstr struct{ op, args string }

func parseDockerfile(t *testing.T, path string) []dockerInstr {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []dockerInstr
	var cur strings.Builder
	for _, l := range strings.Split(string(b), "\n") {
		tl := strings.TrimSpace(l)
		if cur.Len() == 0 && (tl == "" || strings.HasPrefix(tl, "#")) {
			continue
		}
		if strings.HasSuffix(tl, "\\") {
			cur.WriteString(strings.TrimSuffix(tl, "\\") + " ")
			continue
		}
		cur.WriteString(tl)
		op, args, _ := strings.Cut(cur.String(), " ")
		out = append(out, dockerInstr{strings.ToUpper(op), strings.TrimSpace(args)})
		cur.Reset()
	}
	return out
}

// TestDockerfiles: there is no Docker daemon to build with here, so each
// Dockerfile is read: its Go image matches go.mod's Go version, every
// COPY from the context names a file that exists and that its
// .dockerignore keeps, every COPY --from names an earlier stage, the
// binary is built by release.sh (the release's flags, for the binary the
// image runs), and the ENTRYPOINT is a command line the binary accepts
// (the agent's is `wicket-agent agent run`).
func TestDockerfiles(t *testing.T) {
	root := repoRoot(t)
	gomod, _ := os.ReadFile(filepath.Join(root, "go.mod"))
	var goVersion string
	for _, l := range strings.Split(string(gomod), "\n") {
		if v, ok := strings.CutPrefix(l, "go "); ok {
			parts := strings.Split(strings.TrimSpace(v), ".")
			goVersion = parts[0] + "." + parts[1]
		}
	}
	bins := buildBinaries(t)
	for file, bin := range map[string]string{"agent.Dockerfile": "wicket-agent", "issuer.Dockerfile": "wicket"} {
		t.Run(file, func(t *testing.T) {
			path := filepath.Join(root, "packaging", "docker", file)
			ignore, err := os.ReadFile(path + ".dockerignore")
			if err != nil {
				t.Fatal(err)
			}
			stages := map[string]bool{}
			var entry []string
			built := false
			for _, in := range parseDockerfile(t, path) {
				switch in.op {
				case "FROM":
					f := strings.Fields(in.args)
					if strings.HasPrefix(f[0], "golang:") && !strings.HasPrefix(f[0], "golang:"+goVersion+"-") {
						t.Errorf("FROM %s: go.mod wants Go %s", f[0], goVersion)
					}
					if len(f) == 3 && strings.EqualFold(f[1], "AS") {
						stages[f[2]] = true
					}
				case "COPY":
					f := strings.Fields(in.args)
					from := ""
					for len(f) > 0 && strings.HasPrefix(f[0], "--") {
						if v, ok := strings.CutPrefix(f[0], "--from="); ok {
							from = v
						}
						f = f[1:]
					}
					if from != "" {
						if !stages[from] {
							t.Errorf("COPY --from=%s: no such stage before it", from)
						}
						continue
					}
					for _, src := range f[:len(f)-1] {
						if _, err := os.Stat(filepath.Join(root, src)); err != nil {
							t.Errorf("COPY %s: %v", src, err)
						}
						for _, pat := range strings.Fields(string(ignore)) {
							if ok, _ := filepath.Match(pat, src); ok && src != "." {
								t.Errorf("COPY %s: excluded by .dockerignore (%s)", src, pat)
							}
						}
					}
				case "RUN":
					if strings.Contains(in.args, "packaging/release.sh") {
						if !strings.Contains(in.args, "--bin "+bin+" ") {
							t.Errorf("RUN %s: does not build %s", in.args, bin)
						}
						built = true
					}
				case "ENTRYPOINT":
					if err := json.Unmarshal([]byte(in.args), &entry); err != nil {
						t.Errorf("ENTRYPOINT not in exec form: %v", err)
					}
				}
			}
			if !built {
				t.Error("no RUN packaging/release.sh: the image would not be built with the release flags")
			}
			if len(entry) == 0 || entry[0] != "/usr/local/bin/"+bin {
				t.Fatalf("ENTRYPOINT %q, want /usr/local/bin/%s first", entry, bin)
			}
			if bin == "wicket-agent" && (len(entry) < 3 || entry[1] != "agent" || entry[2] != "run" || entry[len(entry)-1] != "--") {
				t.Errorf("ENTRYPOINT %q, want wicket-agent agent run ... --", entry)
			}
			checkCommandLine(t, bins, entry)
		})
	}
}

// TestRelease_Reproducible runs packaging/release.sh twice for this
// machine's architecture, from two checkouts at different paths, and
// compares: the binaries must be byte-identical, listed with their
// SHA-256 in SHA256SUMS, static, stripped, free of the checkout's path,
// and `version` must print the version and commit they were built with.
// Limit: both builds share the Go build cache, so this proves the link
// and the flags reproducible, not the compiler run twice from scratch.
func TestRelease_Reproducible(t *testing.T) {
	if testing.Short() {
		t.Skip("builds both binaries twice")
	}
	if runtime.GOARCH != "amd64" && runtime.GOARCH != "arm64" {
		t.Skipf("release builds are linux/amd64 and linux/arm64; this is %s", runtime.GOARCH)
	}
	root := repoRoot(t)
	script, _ := os.ReadFile(filepath.Join(root, "packaging", "release.sh"))
	if !bytes.Contains(script, []byte(`arches="amd64 arm64"`)) {
		t.Error("release.sh does not build linux/amd64 and linux/arm64 by default")
	}
	// The second checkout: the same files (tracked and new, not ignored)
	// under another path.
	copyDir := filepath.Join(t.TempDir(), "elsewhere", "wicket")
	files := strings.Fields(runIn(t, root, nil, "git", "ls-files", "-co", "--exclude-standard"))
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(root, f))
		if os.IsNotExist(err) {
			continue // deleted in the working tree
		}
		if err != nil {
			t.Fatal(err)
		}
		fi, _ := os.Stat(filepath.Join(root, f))
		dst := filepath.Join(copyDir, f)
		os.MkdirAll(filepath.Dir(dst), 0o755)
		if err := os.WriteFile(dst, b, fi.Mode().Perm()); err != nil {
			t.Fatal(err)
		}
	}
	const version = "v9.9.9-reprotest"
	commit := strings.TrimSpace(runIn(t, root, nil, "git", "rev-parse", "HEAD"))
	outs := []string{filepath.Join(t.TempDir(), "dist"), filepath.Join(t.TempDir(), "dist")}
	for i, dir := range []string{root, copyDir} {
		// The copy is no git checkout: version and commit come from the
		// environment there, from git here.
		env := []string{"WICKET_VERSION=" + version}
		if i == 1 {
			env = append(env, "WICKET_COMMIT="+commit)
		}
		runIn(t, dir, env, "bash", "packaging/release.sh", "--out", outs[i], "--arch", runtime.GOARCH)
	}
	sums0, err := os.ReadFile(filepath.Join(outs[0], "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	sums1, _ := os.ReadFile(filepath.Join(outs[1], "SHA256SUMS"))
	if !bytes.Equal(sums0, sums1) {
		t.Errorf("SHA256SUMS differ:\n%s\n%s", sums0, sums1)
	}
	lines := strings.Split(strings.TrimSpace(string(sums0)), "\n")
	if len(lines) != 2 {
		t.Fatalf("SHA256SUMS:\n%s", sums0)
	}
	for _, l := range lines {
		sum, name, _ := strings.Cut(l, "  ")
		b0, err := os.ReadFile(filepath.Join(outs[0], name))
		if err != nil {
			t.Fatal(err)
		}
		b1, _ := os.ReadFile(filepath.Join(outs[1], name))
		if !bytes.Equal(b0, b1) {
			t.Errorf("%s differs between the two builds", name)
		}
		if h := sha256.Sum256(b0); hex.EncodeToString(h[:]) != sum {
			t.Errorf("%s: SHA256SUMS says %s", name, sum)
		}
		if bytes.Contains(b0, []byte(root)) || bytes.Contains(b0, []byte(copyDir)) {
			t.Errorf("%s holds the checkout's path", name)
		}
		f, err := elf.Open(filepath.Join(outs[0], name))
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				t.Errorf("%s is dynamically linked", name)
			}
		}
		if f.Section(".symtab") != nil || f.Section(".debug_info") != nil {
			t.Errorf("%s is not stripped", name)
		}
		f.Close()
		bin, _, _ := strings.Cut(name, "_")
		wantName := fmt.Sprintf("%s_%s_linux_%s", bin, version, runtime.GOARCH)
		if name != wantName {
			t.Errorf("file %s, want %s", name, wantName)
		}
		out := runIn(t, root, nil, filepath.Join(outs[0], name), "version")
		if want := fmt.Sprintf("%s %s (commit %s)\n", bin, version, commit); out != want {
			t.Errorf("%s version: %q, want %q", name, out, want)
		}
	}
}
