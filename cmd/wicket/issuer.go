package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/cli"
	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/issuer"
)

type issuerFlags struct {
	config, stateDir, adminSocket, listen, publicURL, logLevel, logFormat string
}

func (f *issuerFlags) overrides() []config.IssuerOverride {
	var o []config.IssuerOverride
	set := func(v string, apply func(c *config.Issuer, v string)) {
		if v != "" {
			o = append(o, func(c *config.Issuer) { apply(c, v) })
		}
	}
	set(f.stateDir, func(c *config.Issuer, v string) { c.State.Dir = v })
	set(f.adminSocket, func(c *config.Issuer, v string) { c.Admin.Path = v })
	set(f.listen, func(c *config.Issuer, v string) { c.Server.Listen = v })
	set(f.publicURL, func(c *config.Issuer, v string) { c.Server.PublicURL = v })
	set(f.logLevel, func(c *config.Issuer, v string) { c.Log.Level = v })
	return o
}

func newIssuerCmd() *cobra.Command {
	f := &issuerFlags{}
	cmd := &cobra.Command{
		Use:   "issuer",
		Short: "Run the issuer (machine registry, machine tokens, OIDC provider) or manage it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runIssuer(cmd.Context(), f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.config, "config", "", "issuer config file (TOML)")
	fl.StringVar(&f.stateDir, "state-dir", "", "override state.dir")
	fl.StringVar(&f.adminSocket, "admin-socket", "", "override admin.socket_path")
	fl.StringVar(&f.listen, "listen", "", "override server.listen")
	fl.StringVar(&f.publicURL, "public-url", "", "override server.public_url")
	fl.StringVar(&f.logLevel, "log-level", "", "override log.level")
	fl.StringVar(&f.logFormat, "log-format", "text", "log format: text or json")

	initCmd := &cobra.Command{
		Use:   "init",
		Short: "Create the state directory, seal key and first keys (idempotent; refuses state another uid owns)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.LoadIssuer(f.config, f.overrides()...)
			if err != nil {
				return err
			}
			// Init refuses state it could not have created (another
			// owner, a writable or symlinked directory chain): that is an
			// error, never "already initialized".
			res, err := issuer.Init(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if !res.Created {
				fmt.Fprintf(out, "state already initialized: %s\n", res.StateFile)
				return nil
			}
			fmt.Fprintf(out, "created state %s\n", res.StateFile)
			if res.SealKeyFile != "" {
				fmt.Fprintf(out, "seal key %s (mode 0600): back it up; without it the state cannot be read\n", res.SealKeyFile)
			}
			return nil
		},
	}
	initCmd.Flags().AddFlagSet(fl)
	cmd.AddCommand(initCmd, newIssuerMachineCmd(), newIssuerTokenCmd(), newIssuerKeysCmd(), newIssuerAdminTokenCmd())
	cmd.AddCommand(newIssuerMigrateCmd())
	return cmd
}

func runIssuer(parent context.Context, f *issuerFlags) error {
	logger, level, err := cli.NewLogger(os.Stderr, f.logFormat)
	if err != nil {
		return err
	}
	if parent == nil {
		parent = context.Background()
	}
	ctx, stop := signal.NotifyContext(parent, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	s, err := issuer.New(ctx, issuer.Options{ConfigPath: f.config, Overrides: f.overrides(), Logger: logger, LogLevel: level})
	if err != nil {
		return err
	}
	cli.ReloadOnHUP(ctx, s.Reload, logger)
	return s.Run(ctx)
}

// adminFlags are the flags every issuer client command shares: the admin
// socket, or the remote admin API with an admin token (remote.go).
type adminFlags struct {
	socket, tokenFile string
	remote            remoteFlags
}

func (a *adminFlags) register(cmd *cobra.Command, def string) {
	cmd.PersistentFlags().StringVar(&a.socket, "socket", cli.EnvOr(api.IssuerSocketEnv, def), "issuer admin socket ($WICKET_ISSUER_SOCKET)")
	cmd.PersistentFlags().StringVar(&a.tokenFile, "token-file", "", "file holding the admin socket's token (or $WICKET_ADMIN_TOKEN)")
}

// registerRemote adds the remote admin API's flags, for the commands it
// serves (machine, token).
func (a *adminFlags) registerRemote(cmd *cobra.Command) { a.remote.register(cmd) }

// call sends one command to the admin socket or, with --issuer-url, to
// the remote admin API, and prints the reply as it came: the same bytes
// either way.
func (a *adminFlags) call(cmd *cobra.Command, method, path string, body any) error {
	reply, err := a.do(cmd, method, path, body)
	if err != nil {
		return err
	}
	fmt.Fprint(cmd.OutOrStdout(), string(reply))
	return nil
}

// do is call returning a successful reply instead of printing it (an error
// reply is printed to stderr and exits 1), over whichever transport the
// flags name.
func (a *adminFlags) do(cmd *cobra.Command, method, path string, body any) ([]byte, error) {
	var b []byte
	if body != nil {
		var err error
		if b, err = json.Marshal(body); err != nil {
			return nil, err
		}
	}
	if a.remote.url != "" {
		if cmd.Flags().Changed("socket") || a.tokenFile != "" {
			return nil, fmt.Errorf("--issuer-url replaces --socket and --token-file: give one or the other")
		}
		return a.remote.do(cmd, method, path, b)
	}
	if a.remote.adminTokenFile != "" {
		return nil, fmt.Errorf("--admin-token-file needs --issuer-url")
	}
	if b == nil {
		return cli.AdminDo(cmd, a.socket, a.tokenFile, method, path, nil)
	}
	return cli.AdminDo(cmd, a.socket, a.tokenFile, method, path, bytes.NewReader(b))
}

// parseTags turns k=v flags into a map.
func parseTags(kvs []string) (map[string]string, error) {
	if len(kvs) == 0 {
		return nil, nil
	}
	m := map[string]string{}
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--tag %q: want key=value", kv)
		}
		m[k] = v
	}
	return m, nil
}

func newIssuerMachineCmd() *cobra.Command {
	af := &adminFlags{}
	cmd := &cobra.Command{Use: "machine", Short: "Manage registered machines"}
	af.register(cmd, api.DefaultIssuerAdminSocket)
	af.registerRemote(cmd)

	var spec api.MachineSpec
	var tags []string
	var addOut string
	add := &cobra.Command{
		Use:   "add",
		Short: "Register a machine and print its token (once)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			t, err := parseTags(tags)
			if err != nil {
				return err
			}
			spec.Tags = t
			return af.callTokenOut(cmd, "POST", "/v1/machines", spec, addOut,
				func(r any) *api.MintedToken { return r.(*api.MachineAdded).Token }, &api.MachineAdded{})
		},
	}
	tokenOutFlag(add, &addOut)
	af2 := add.Flags()
	af2.StringVar(&spec.Name, "name", "", "machine name (required)")
	af2.StringVar(&spec.Org, "org", "", "org (required)")
	af2.StringVar(&spec.App, "app", "", "app (required)")
	af2.StringVar(&spec.Region, "region", "", "region")
	af2.StringVar(&spec.Image, "image", "", "image reference")
	af2.StringVar(&spec.ImageDigest, "image-digest", "", "image digest (sha256:…)")
	af2.StringVar(&spec.PrivateIP, "private-ip", "", "private IP address")
	af2.StringArrayVar(&tags, "tag", nil, "tag key=value (repeatable)")
	af2.StringArrayVar(&spec.SourceAddrs, "source-addr", nil, "CIDR the machine's token may be used from (repeatable)")
	af2.StringVar(&spec.TokenTTL, "token-ttl", "", "machine token lifetime (default from config, 720h)")

	var upd api.MachineUpdate
	var setTags, region, image, digest, privIP []string
	update := &cobra.Command{
		Use:   "update ID|ORG/APP/NAME",
		Short: "Change a machine's metadata (long polls see it at once)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := parseTags(setTags)
			if err != nil {
				return err
			}
			upd.SetTags = t
			for _, f := range []struct {
				vals []string
				dst  **string
			}{{region, &upd.Region}, {image, &upd.Image}, {digest, &upd.ImageDigest}, {privIP, &upd.PrivateIP}} {
				if len(f.vals) > 0 {
					v := f.vals[len(f.vals)-1]
					*f.dst = &v
				}
			}
			return af.call(cmd, "PATCH", "/v1/machines/"+url.PathEscape(args[0]), upd)
		},
	}
	uf := update.Flags()
	uf.StringArrayVar(&setTags, "tag", nil, "set tag key=value (repeatable)")
	uf.StringSliceVar(&upd.RemoveTags, "untag", nil, "remove tag key (repeatable)")
	uf.StringArrayVar(&region, "region", nil, "new region")
	uf.StringArrayVar(&image, "image", nil, "new image")
	uf.StringArrayVar(&digest, "image-digest", nil, "new image digest")
	uf.StringArrayVar(&privIP, "private-ip", nil, "new private IP")

	show := &cobra.Command{Use: "show ID|ORG/APP/NAME", Short: "Show one machine", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return af.call(cmd, "GET", "/v1/machines/"+url.PathEscape(args[0]), nil)
		}}
	list := &cobra.Command{Use: "list", Short: "List machines", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return af.call(cmd, "GET", "/v1/machines", nil) }}
	remove := &cobra.Command{Use: "remove ID|ORG/APP/NAME", Short: "Remove a machine (its tokens stop working)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return af.call(cmd, "DELETE", "/v1/machines/"+url.PathEscape(args[0]), nil)
		}}
	cmd.AddCommand(add, update, show, list, remove)
	return cmd
}

func newIssuerTokenCmd() *cobra.Command {
	af := &adminFlags{}
	cmd := &cobra.Command{Use: "token", Short: "Mint or revoke machine tokens"}
	af.register(cmd, api.DefaultIssuerAdminSocket)
	af.registerRemote(cmd)
	var machine, ttl, reason, mintOut string
	mint := &cobra.Command{Use: "mint", Short: "Mint a new token for a machine (printed once)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if machine == "" {
				return fmt.Errorf("--machine is required")
			}
			return af.callTokenOut(cmd, "POST", "/v1/machines/"+url.PathEscape(machine)+"/tokens", map[string]string{"ttl": ttl}, mintOut,
				func(r any) *api.MintedToken { return r.(*api.MintedToken) }, &api.MintedToken{})
		}}
	tokenOutFlag(mint, &mintOut)
	mint.Flags().StringVar(&machine, "machine", "", "machine id or org/app/name")
	mint.Flags().StringVar(&ttl, "ttl", "", "token lifetime, e.g. 720h")
	var machineTokenFile string
	revoke := &cobra.Command{Use: "revoke [TOKEN_ID]", Short: "Revoke a machine token and all copies made from it", Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := api.RevokeRequest{Reason: reason}
			if len(args) == 1 {
				req.TokenID = args[0]
			}
			if machineTokenFile != "" {
				// The remote admin API needs the token itself, to check
				// whose machine it is.
				b, err := os.ReadFile(machineTokenFile)
				if err != nil {
					return fmt.Errorf("machine token: %w", err)
				}
				req.Token = strings.TrimSpace(string(b))
			}
			if req.TokenID == "" && req.Token == "" {
				return fmt.Errorf("give TOKEN_ID or --machine-token-file")
			}
			return af.call(cmd, "POST", "/v1/revocations", req)
		}}
	revoke.Flags().StringVar(&reason, "reason", "", "why (kept in the state)")
	revoke.Flags().StringVar(&machineTokenFile, "machine-token-file", "", "file holding the machine token to revoke (required with --issuer-url)")
	cmd.AddCommand(mint, revoke)
	return cmd
}

func newIssuerKeysCmd() *cobra.Command {
	af := &adminFlags{}
	cmd := &cobra.Command{Use: "keys", Short: "List or rotate signing keys"}
	af.register(cmd, api.DefaultIssuerAdminSocket)
	var kind, org, alg string
	list := &cobra.Command{Use: "list", Short: "List keys (never private material)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return af.call(cmd, "GET", "/v1/keys", nil) }}
	rotate := &cobra.Command{Use: "rotate", Short: "Rotate an org's OIDC or JWT-SVID signing key or SPIFFE CA, or the machine token key", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return af.call(cmd, "POST", "/v1/keys/rotate", map[string]string{"kind": kind, "org": org, "alg": alg})
		}}
	rotate.Flags().StringVar(&kind, "kind", "oidc", "oidc, spiffe-jwt, spiffe-ca or macaroon")
	rotate.Flags().StringVar(&org, "org", "", "org whose key or CA to rotate")
	rotate.Flags().StringVar(&alg, "alg", "", "RS256 or ES256 (default from config)")
	cmd.AddCommand(list, rotate)
	return cmd
}
