package main

import (
	"fmt"
	"io"
	"net/netip"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/client/issuer"
	"github.com/wicket-sh/wicket/internal/admintoken"
	"github.com/wicket-sh/wicket/internal/cli"
)

// remoteFlags select the issuer's remote admin API instead of its admin
// socket (docs/orchestrator.md).
type remoteFlags struct {
	url, adminTokenFile, caFile, certFile, keyFile string
	allowPlaintext                                 bool
}

func (f *remoteFlags) register(cmd *cobra.Command) {
	pf := cmd.PersistentFlags()
	pf.StringVar(&f.url, "issuer-url", "", "the issuer's remote admin API (https://host:port), instead of --socket")
	pf.StringVar(&f.adminTokenFile, "admin-token-file", "", "file holding the admin token for --issuer-url")
	pf.StringVar(&f.caFile, "issuer-ca", "", "PEM CA bundle the remote admin API's certificate must chain to (default: system roots)")
	pf.StringVar(&f.certFile, "client-cert", "", "client certificate (PEM) for --issuer-url, when the issuer requires one")
	pf.StringVar(&f.keyFile, "client-key", "", "client certificate's key (PEM)")
	pf.BoolVar(&f.allowPlaintext, "allow-plaintext", false, "allow an http:// --issuer-url beyond loopback (TLS terminated elsewhere)")
}

// call sends one command to the remote admin API and prints the reply as
// cli.AdminCall prints the socket's: body to stdout on 2xx, else to stderr
// with exit status 1.
func (f *remoteFlags) do(cmd *cobra.Command, method, path string, body []byte) ([]byte, error) {
	if f.adminTokenFile == "" {
		return nil, fmt.Errorf("--issuer-url needs --admin-token-file")
	}
	tc, err := issuer.TLSFiles(f.caFile, f.certFile, f.keyFile)
	if err != nil {
		return nil, err
	}
	c, err := issuer.New(issuer.Config{URL: f.url, TokenFile: f.adminTokenFile, TLS: tc, AllowPlaintext: f.allowPlaintext})
	if err != nil {
		return nil, err
	}
	status, reply, err := c.Do(cmd.Context(), method, path, body)
	if err != nil {
		return nil, err
	}
	if status/100 != 2 {
		fmt.Fprint(cmd.ErrOrStderr(), string(reply))
		return nil, cli.ExitError{Code: 1}
	}
	return reply, nil
}

// scopeFlags are the caveats an admin token is minted or attenuated with.
type scopeFlags struct {
	orgs, apps, regions, ops, sourceAddrs []string
	maxMachineTTL, ttl                    string
}

func (f *scopeFlags) register(cmd *cobra.Command, ttlHelp string) {
	fl := cmd.Flags()
	fl.StringSliceVar(&f.orgs, "org", nil, "orgs whose machines it may manage (repeatable or comma-separated)")
	fl.StringSliceVar(&f.apps, "app", nil, "apps")
	fl.StringSliceVar(&f.regions, "region", nil, "regions")
	fl.StringSliceVar(&f.ops, "ops", nil, "operations: machine.add, machine.update, machine.remove, machine.get, token.mint, token.revoke")
	fl.StringVar(&f.maxMachineTTL, "max-machine-ttl", "", "longest machine token it may mint, e.g. 24h")
	fl.StringVar(&f.ttl, "ttl", "", ttlHelp)
	fl.StringSliceVar(&f.sourceAddrs, "source-addr", nil, "CIDR prefixes it may be used from")
}

func newIssuerAdminTokenCmd() *cobra.Command {
	af := &adminFlags{}
	cmd := &cobra.Command{Use: "admin-token", Short: "Mint, list, revoke or attenuate admin tokens for the remote admin API"}
	af.register(cmd, api.DefaultIssuerAdminSocket) // admin tokens are managed on the socket only

	var label string
	var mf scopeFlags
	mint := &cobra.Command{Use: "mint", Short: "Mint a root admin token (printed once; only its sealed root key is kept)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return af.call(cmd, "POST", "/v1/admin-tokens", api.AdminTokenRequest{Label: label, TTL: mf.ttl, Orgs: mf.orgs, Apps: mf.apps,
				Regions: mf.regions, Ops: mf.ops, MaxMachineTTL: mf.maxMachineTTL, SourceAddrs: mf.sourceAddrs})
		}}
	mint.Flags().StringVar(&label, "label", "", "name in listings and logs, e.g. host-fra-1")
	mf.register(mint, "lifetime (default 8760h)")

	list := &cobra.Command{Use: "list", Short: "List admin tokens (ids, labels, expiry, revoked; never the tokens)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return af.call(cmd, "GET", "/v1/admin-tokens", nil) }}

	var reason string
	revoke := &cobra.Command{Use: "revoke TOKEN_ID", Short: "Revoke an admin token and every copy attenuated from it", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return af.call(cmd, "POST", "/v1/admin-tokens/revocations", api.RevokeRequest{TokenID: args[0], Reason: reason})
		}}
	revoke.Flags().StringVar(&reason, "reason", "", "why (kept in the state)")

	var af2 scopeFlags
	attenuate := &cobra.Command{
		Use:   "attenuate",
		Short: "Narrow an admin token offline: reads it on stdin, prints the narrower copy",
		Long: "Reads an admin token on stdin and prints a copy that may do only what both allow. " +
			"No issuer is contacted; every flag can only narrow.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			in, err := io.ReadAll(io.LimitReader(cmd.InOrStdin(), 64<<10))
			if err != nil {
				return err
			}
			sc, err := af2.scope(time.Now())
			if err != nil {
				return err
			}
			out, err := admintoken.Attenuate(strings.TrimSpace(string(in)), sc)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), out)
			return nil
		}}
	af2.register(attenuate, "the copy is valid for at most this long from now, e.g. 720h")
	cmd.AddCommand(mint, list, revoke, attenuate)
	return cmd
}

// scope turns the flags into an attenuation.
func (f *scopeFlags) scope(now time.Time) (admintoken.Scope, error) {
	sc := admintoken.Scope{Orgs: f.orgs, Apps: f.apps, Regions: f.regions}
	for _, o := range f.ops {
		sc.Ops = append(sc.Ops, admintoken.Op(o))
	}
	if f.maxMachineTTL != "" {
		d, err := time.ParseDuration(f.maxMachineTTL)
		if err != nil {
			return sc, fmt.Errorf("--max-machine-ttl: %w", err)
		}
		sc.MaxMachineTTL = d
	}
	if f.ttl != "" {
		d, err := time.ParseDuration(f.ttl)
		if err != nil || d <= 0 {
			return sc, fmt.Errorf("--ttl: want a positive duration")
		}
		sc.NotAfter = now.Add(d)
	}
	for _, c := range f.sourceAddrs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return sc, fmt.Errorf("--source-addr: not a CIDR prefix")
		}
		sc.SourceAddrs = append(sc.SourceAddrs, p)
	}
	return sc, nil
}
