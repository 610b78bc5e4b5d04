package main

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

	"github.com/spf13/cobra"

	"github.com/wicket-sh/wicket/internal/agent"
	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/peer"
	"github.com/wicket-sh/wicket/internal/supervise"
)

type runFlags struct {
	agentFlags
	user, group, workdir string
	allowRoot            bool
	stopTimeout          time.Duration
	sighup               string
}

func newAgentRunCmd() *cobra.Command {
	f := &runFlags{}
	cmd := &cobra.Command{
		Use:   "run [flags] -- CMD [ARGS...]",
		Short: "Run the agent as the machine's init: start CMD under a dropped identity and broker its credentials",
		Long: `Start the agent, wait until its sockets accept connections, then run CMD as
its child under --user/--group with WICKET_SOCKET set. CMD never sees the
machine token: the agent is non-dumpable, WICKET_* variables are removed
from CMD's environment, and CMD inherits no descriptor beyond 0-2.
SIGTERM, SIGINT, SIGQUIT, SIGUSR1, SIGUSR2 and SIGWINCH go to CMD's process
group; SIGHUP reloads the agent's config (or, with --sighup=forward, goes to
CMD too). Orphaned processes are reaped. When CMD exits the agent stops and
exits with CMD's status (128+N when killed by signal N).
Started from a terminal, a CMD of another uid gets a pseudo-terminal of its
own, relayed to that terminal (as su --pty does), and never the terminal
itself: it cannot push input into the invoking shell.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runWorkload(cmd.Context(), f, args)
		},
	}
	fl := cmd.Flags()
	// Flags end at CMD: `run --user app prog -v` passes -v to prog.
	fl.SetInterspersed(false)
	fl.StringVar(&f.config, "config", "", "agent config file (TOML); built-in defaults when empty")
	fl.StringVar(&f.apiSocket, "api-socket", "", "override api.socket_path")
	fl.StringVar(&f.adminSocket, "admin-socket", "", "override admin.socket_path")
	fl.StringVar(&f.logLevel, "log-level", "", "override log.level (debug, info, warn, error)")
	fl.StringVar(&f.logFormat, "log-format", "text", "log format: text or json")
	fl.IntVar(&f.tokenFD, "token-fd", -1, "read the machine token from this inherited file descriptor, then close it")
	fl.StringVar(&f.user, "user", "", "run CMD as this user (name or uid); with a name, also its primary and supplementary groups from /etc/group")
	fl.StringVar(&f.group, "group", "", "run CMD with this group (name or gid) and no supplementary groups")
	fl.StringVar(&f.workdir, "workdir", "", "working directory of CMD (default: the current one)")
	fl.BoolVar(&f.allowRoot, "allow-root-workload", false, "allow CMD to run as root (root can read the agent's memory, so the machine token too)")
	fl.DurationVar(&f.stopTimeout, "stop-timeout", supervise.DefaultStopTimeout, "after SIGTERM, how long CMD has to exit before its process group is killed")
	fl.StringVar(&f.sighup, "sighup", "reload", "on SIGHUP: reload (the agent's config) or forward (to CMD)")
	return cmd
}

func runWorkload(parent context.Context, f *runFlags, argv []string) error {
	// Before anything else: the machine token may sit in this process's
	// initial environment block (WICKET_MACHINE_TOKEN), which unsetenv does
	// not erase and /proc/<pid>/environ shows to every process of the same
	// user. Non-dumpable closes that, /proc/<pid>/mem and ptrace to anyone
	// without CAP_SYS_PTRACE, and keeps the token out of core dumps.
	if err := supervise.SetNonDumpable(); err != nil {
		return err
	}
	if f.sighup != "reload" && f.sighup != "forward" {
		return fmt.Errorf("--sighup %q: want reload or forward", f.sighup)
	}
	if f.stopTimeout <= 0 {
		return fmt.Errorf("--stop-timeout %v: want a positive duration", f.stopTimeout)
	}
	// On a terminal the workload's pty relay may hold in raw mode, log
	// lines still need their CR.
	logger, level, err := newLogger(supervise.TerminalWriter(os.Stderr), f.logFormat)
	if err != nil {
		return err
	}
	cred, err := supervise.LookupCredential(f.user, f.group)
	if err != nil {
		return err
	}
	selfUID := uint32(os.Geteuid())
	uid, gid := selfUID, uint32(os.Getegid())
	if cred != nil {
		uid, gid = cred.UID, cred.GID
	}
	// Root in the workload can read the agent's memory whatever else we
	// do (CAP_SYS_PTRACE), so running it is an explicit choice.
	if uid == 0 && !f.allowRoot {
		return errors.New("refusing to run the workload as root: give --user (and --group), or --allow-root-workload")
	}
	path := argv[0]
	if !strings.Contains(path, "/") {
		// A path with a slash is left to exec, relative to --workdir.
		if path, err = exec.LookPath(path); err != nil {
			fmt.Fprintf(os.Stderr, "wicket: %v\n", err)
			return exitError{127}
		}
	}

	opts := agent.Options{
		ConfigPath: f.config,
		Overrides:  append(f.overrides(), runOverrides(selfUID, uid, gid)),
		Logger:     logger,
		LogLevel:   level,
	}
	if f.tokenFD >= 0 {
		if opts.MachineToken, err = agent.MachineTokenFromFD(f.tokenFD); err != nil {
			return err
		}
	}
	a, err := agent.New(opts)
	if err != nil {
		return err
	}
	cfg := a.Config()
	if err := checkTokenFile(cfg.Issuer, uid); err != nil {
		return err
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
	if f.sighup == "reload" {
		reload = func() {
			if _, err := a.Reload(context.Background()); err != nil {
				logger.Error("reload on SIGHUP failed; keeping running config", "err", err)
			}
		}
	}
	sup, err := supervise.New(supervise.Config{
		Path:        path,
		Args:        argv,
		Dir:         f.workdir,
		Env:         supervise.ChildEnv(os.Environ(), add, drop...),
		Cred:        cred,
		StopTimeout: f.stopTimeout,
		Reload:      reload,
		Logger:      logger.With("component", "supervise"),
	})
	if err != nil {
		return err
	}
	// Signals stay caught until we return, so one that arrives while the
	// agent shuts down does not cut its cleanup short.
	defer sup.Close()

	if parent == nil {
		parent = context.Background()
	}
	agentCtx, stopAgent := context.WithCancel(context.Background())
	defer stopAgent()
	supCtx, stopWorkload := context.WithCancelCause(parent)
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
		return agentErr
	case errors.As(supErr, &startErr):
		logger.Error("cannot start the workload", "err", startErr)
		return exitError{startErr.ExitCode()}
	case supErr != nil:
		return supErr
	case st.ExitCode() != 0:
		return exitError{st.ExitCode()}
	}
	return nil
}

// workloadStartWait bounds how long the workload's start waits for the
// agent's first metadata and token files.
const workloadStartWait = 15 * time.Second

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
