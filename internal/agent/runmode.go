package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/peer"
	"github.com/wicket-sh/wicket/internal/supervise"
)

// RunOptions configure RunWorkload: the agent as the machine's init,
// with the workload as its child (`wicket agent run`).
type RunOptions struct {
	// Options are the agent's. Logger should write CRLF on a terminal
	// (supervise.TerminalWriter): the workload's pty relay may hold it in
	// raw mode. MachineToken is ignored; see ReadMachineToken.
	Options
	// ReadMachineToken, when set, supplies the machine token (from
	// --token-fd). It is called after the checks that need no token, so a
	// refused run does not read it.
	ReadMachineToken func() (MachineToken, error)
	// Argv is the workload's command line. Argv[0] without a slash is
	// looked up in PATH; with one it is left to exec, relative to Dir.
	Argv []string
	// Dir is the workload's working directory; empty means ours.
	Dir string
	// User and Group name the workload's identity (see
	// supervise.LookupCredential); both empty means ours.
	User, Group string
	// AllowRoot lets the workload run as root, which can read the agent's
	// memory and so the machine token.
	AllowRoot bool
	// StopTimeout is how long the workload has after SIGTERM before its
	// process group is killed; it must be positive.
	StopTimeout time.Duration
	// ForwardSIGHUP sends SIGHUP to the workload instead of reloading the
	// agent's config.
	ForwardSIGHUP bool
}

// workloadStartWait bounds how long the workload's start waits for the
// agent's first metadata and token files.
const workloadStartWait = 15 * time.Second

// RunWorkload runs the agent and, once it is ready, the workload under
// its own identity, until the workload exits; then it stops the agent.
// The workload never gets the machine token: the process is made
// non-dumpable first, WICKET_* variables (and the admin token's) are
// removed from the workload's environment, a machine token file the
// workload would own is refused, and without [[policy]] rules only root,
// the agent's uid and the workload's may call the API.
//
// It returns the code the process should exit with. With err nil that is
// the workload's (128+N when killed by signal N; a workload that could
// not start is logged and gets 126 or 127). With err set the run failed:
// 127 when Argv[0] is not found, else 1.
func RunWorkload(ctx context.Context, opts RunOptions) (int, error) {
	// Before anything else: the machine token may sit in this process's
	// initial environment block (WICKET_MACHINE_TOKEN), which unsetenv does
	// not erase and /proc/<pid>/environ shows to every process of the same
	// user. Non-dumpable closes that, /proc/<pid>/mem and ptrace to anyone
	// without CAP_SYS_PTRACE, and keeps the token out of core dumps.
	if err := supervise.SetNonDumpable(); err != nil {
		return 1, err
	}
	if opts.StopTimeout <= 0 {
		return 1, fmt.Errorf("--stop-timeout %v: want a positive duration", opts.StopTimeout)
	}
	if len(opts.Argv) == 0 {
		return 1, errors.New("no workload command")
	}
	cred, err := supervise.LookupCredential(opts.User, opts.Group)
	if err != nil {
		return 1, err
	}
	selfUID := uint32(os.Geteuid())
	uid, gid := selfUID, uint32(os.Getegid())
	if cred != nil {
		uid, gid = cred.UID, cred.GID
	}
	// Root in the workload can read the agent's memory whatever else we
	// do (CAP_SYS_PTRACE), so running it is an explicit choice.
	if uid == 0 && !opts.AllowRoot {
		return 1, errors.New("refusing to run the workload as root: give --user (and --group), or --allow-root-workload")
	}
	path := opts.Argv[0]
	if !strings.Contains(path, "/") {
		if path, err = exec.LookPath(path); err != nil {
			return 127, err
		}
	}

	agentOpts := opts.Options
	agentOpts.Overrides = append(slices.Clip(agentOpts.Overrides), runOverrides(selfUID, uid, gid))
	agentOpts.MachineToken = MachineToken{}
	if opts.ReadMachineToken != nil {
		if agentOpts.MachineToken, err = opts.ReadMachineToken(); err != nil {
			return 1, err
		}
	}
	a, err := New(agentOpts)
	if err != nil {
		return 1, err
	}
	logger := a.log
	cfg := a.Config()
	if err := checkTokenFile(cfg.Issuer, uid); err != nil {
		return 1, err
	}
	if uid == 0 {
		logger.Warn("the workload runs as root: it can read the agent's memory, machine token included")
	}
	var extraEnv []string
	if cred != nil && cred.Home != "" && cred.UID != selfUID {
		// Our HOME is not the workload user's, and often not readable by it.
		extraEnv = append(extraEnv, "HOME="+cred.Home)
	}
	add := append(a.WorkloadEnv(), extraEnv...)
	var drop []string
	if cfg.Admin.TokenEnv != "" {
		drop = append(drop, cfg.Admin.TokenEnv)
	}
	var reload func()
	if !opts.ForwardSIGHUP {
		reload = func() {
			if _, err := a.Reload(context.Background()); err != nil {
				logger.Error("reload on SIGHUP failed; keeping running config", "err", err)
			}
		}
	}
	sup, err := supervise.New(supervise.Config{
		Path:        path,
		Args:        opts.Argv,
		Dir:         opts.Dir,
		Env:         supervise.ChildEnv(os.Environ(), add, drop...),
		Cred:        cred,
		StopTimeout: opts.StopTimeout,
		Reload:      reload,
		Logger:      logger.With("component", "supervise"),
	})
	if err != nil {
		return 1, err
	}
	// Signals stay caught until we return, so one that arrives while the
	// agent shuts down does not cut its cleanup short.
	defer sup.Close()

	if ctx == nil {
		ctx = context.Background()
	}
	agentCtx, stopAgent := context.WithCancel(context.Background())
	defer stopAgent()
	supCtx, stopWorkload := context.WithCancelCause(ctx)
	defer stopWorkload(nil)
	agentDone := make(chan error, 1)
	go func() {
		err := a.Run(agentCtx)
		agentDone <- err
		// The agent is gone (on its own only if it failed): the workload
		// has no broker any more, stop it too.
		stopWorkload(errors.New("agent stopped"))
	}()
	// Ready for the workload once the agent is, with a word in the log if
	// the workload will not be able to reach the API socket.
	ready := make(chan struct{})
	go func() {
		select {
		case <-a.Ready():
		case <-agentCtx.Done():
			return
		}
		gids := []uint32{gid}
		if cred != nil {
			gids = append(gids, cred.Groups...)
		} else if own, err := os.Getgroups(); err == nil {
			for _, g := range own {
				gids = append(gids, uint32(g))
			}
		}
		if err := workloadCanReach(cfg.API.Path, uid, gids); err != nil {
			logger.Warn("the workload cannot reach the API socket; fix the directory's mode or group, or set api.socket_group", "api_socket", cfg.API.Path, "uid", uid, "blocked_at", err.Error())
		}
		// Give the agent a moment to fetch metadata and write the token
		// files the workload's SDKs will read at start, then settle the
		// workload's environment (AWS_ROLE_SESSION_NAME is the machine id
		// once metadata is known). An unreachable issuer must not keep the
		// workload from starting: it only gets a warning.
		wctx, cancel := context.WithTimeout(agentCtx, workloadStartWait)
		if err := a.WaitStarted(wctx); err != nil {
			logger.Warn("starting the workload before the agent has metadata or token files", "err", err)
		}
		cancel()
		sup.SetEnv(supervise.ChildEnv(os.Environ(), append(a.WorkloadEnv(), extraEnv...), drop...))
		close(ready)
	}()
	st, supErr := sup.Run(supCtx, ready)
	stopAgent()
	agentErr := <-agentDone
	var startErr *supervise.StartError
	switch {
	case agentErr != nil:
		return 1, agentErr
	case errors.As(supErr, &startErr):
		logger.Error("cannot start the workload", "err", startErr)
		return startErr.ExitCode(), nil
	case supErr != nil:
		return 1, supErr
	}
	return st.ExitCode(), nil
}

// runOverrides adapt the config to an agent whose workload is its own
// child. They apply at every reload too (S-flags).
func runOverrides(selfUID, uid, gid uint32) config.Override {
	return func(c *config.Agent) {
		// The default policy admits root and the agent's own uid; the
		// workload is what run mode is for, so its uid joins them. A
		// config with [[policy]] rules says exactly who gets what instead.
		if len(c.Policy) == 0 {
			uids := []uint32{0, selfUID, uid}
			slices.Sort(uids)
			c.Policy = []peer.Rule{{Name: "run-default", UIDs: slices.Compact(uids), Allow: []string{"*"}}}
		}
		// The workload must be able to connect: the API socket gets its
		// group unless the config chose one.
		if c.API.Group == "" {
			c.API.Group = strconv.FormatUint(uint64(gid), 10)
			c.API.Mode = 0o660
		}
		// So do the sockets features serve (the SPIFFE Workload API's).
		c.WorkloadGroup = strconv.FormatUint(uint64(gid), 10)
		// Token files the config gives no group (those implied by [aws]
		// and [azure] included) get the workload's, so the SDKs pointed at
		// them can read them.
		c.TokenFileGroup = strconv.FormatUint(uint64(gid), 10)
	}
}

// checkTokenFile refuses a kept machine token file that the workload could
// read: the agent only reads files that nobody but their owner can read,
// so the workload must not be the owner. (Root reads everything: running
// the workload as root was explicitly allowed, and warned about.)
func checkTokenFile(c config.AgentIssuer, uid uint32) error {
	if c.TokenFile == "" || c.TokenUnlink || uid == 0 {
		return nil
	}
	fi, err := os.Lstat(c.TokenFile)
	if err != nil {
		return nil // not there any more: nothing to read
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid == uid {
		return fmt.Errorf("issuer.token_file %q belongs to uid %d, which the workload runs as, so it could read the machine token: chown it to the agent's user or set issuer.token_unlink", c.TokenFile, uid)
	}
	return nil
}

// workloadCanReach reports where uid, with groups gids, is stopped on the
// way to the socket at path, first blocker from the root down, as the
// kernel would: every directory must let it search and the socket let it
// write. The directory the agent creates gets the workload's group, but
// one that existed keeps its own mode and group.
func workloadCanReach(path string, uid uint32, gids []uint32) error {
	if uid == 0 {
		return nil
	}
	var chain []string
	for p := path; ; p = filepath.Dir(p) {
		chain = append(chain, p)
		if p == "/" || p == "." {
			break
		}
	}
	slices.Reverse(chain)
	for i, p := range chain {
		need := uint32(0o1) // search, on a directory
		if i == len(chain)-1 {
			need = 0o2 // write, on the socket
		}
		var st syscall.Stat_t
		if err := syscall.Stat(p, &st); err != nil {
			return err
		}
		mode := uint32(st.Mode) & 0o777
		bits := mode // others
		switch {
		case st.Uid == uid:
			bits = mode >> 6
		case slices.Contains(gids, st.Gid):
			bits = mode >> 3
		}
		if bits&need == 0 {
			return fmt.Errorf("%s (mode %04o, uid %d, gid %d)", p, mode, st.Uid, st.Gid)
		}
	}
	return nil
}
