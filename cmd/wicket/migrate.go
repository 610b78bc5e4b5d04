package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/wicket-sh/wicket/internal/cli"
	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/issuer"
	"github.com/wicket-sh/wicket/internal/store/bolt"
	"github.com/wicket-sh/wicket/internal/store/etcd"
)

type migrateFlags struct {
	from, to, config        string
	prefix, cert, key, ca   string
	dialTimeout, reqTimeout time.Duration
	allowPlaintext          bool
}

func newIssuerMigrateCmd() *cobra.Command {
	f := &migrateFlags{}
	cmd := &cobra.Command{
		Use:   "migrate --from bbolt:PATH --to etcd:ENDPOINTS",
		Short: "Copy issuer state from a bbolt file to etcd (cluster mode)",
		Long: `Copy every machine, sealed key and revocation from a single-node bbolt
state file to etcd, for running several issuer replicas.

Stop the issuer first. Sealed keys are copied as they are: run every etcd
replica with the seal key of the bbolt state, and tokens minted before keep
working. Running it again is safe; it never overwrites a machine that
changed in etcd. TLS, prefix and timeouts come from the [state] section of
--config, if given, and then from the flags.`,
		Example: `  wicket issuer migrate --from bbolt:/var/lib/wicket/state.db \
    --to etcd:https://10.0.0.1:2379,https://10.0.0.2:2379,https://10.0.0.3:2379 \
    --etcd-ca /etc/wicket/etcd-ca.pem --etcd-cert /etc/wicket/etcd.pem --etcd-key /etc/wicket/etcd-key.pem`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runMigrate(cmd, f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.from, "from", "", "source: bbolt:PATH (state file, or the state directory holding state.db)")
	fl.StringVar(&f.to, "to", "", "destination: etcd:URL[,URL...]")
	fl.StringVar(&f.config, "config", "", "issuer config whose [state] section gives etcd TLS, prefix and timeouts")
	fl.StringVar(&f.prefix, "etcd-prefix", "", "etcd key prefix (default /wicket/)")
	fl.StringVar(&f.cert, "etcd-cert", "", "etcd client certificate")
	fl.StringVar(&f.key, "etcd-key", "", "etcd client key")
	fl.StringVar(&f.ca, "etcd-ca", "", "CA verifying the etcd members")
	fl.DurationVar(&f.dialTimeout, "dial-timeout", 0, "etcd dial timeout (default 5s)")
	fl.DurationVar(&f.reqTimeout, "request-timeout", 0, "etcd request timeout (default 5s)")
	fl.BoolVar(&f.allowPlaintext, "allow-plaintext", false, "allow http:// endpoints that are not loopback")
	cmd.MarkFlagRequired("from")
	cmd.MarkFlagRequired("to")
	return cmd
}

// migrateSource parses bbolt:PATH; a directory means its state.db.
func migrateSource(spec string) (string, error) {
	path, ok := strings.CutPrefix(spec, "bbolt:")
	if !ok {
		path, ok = strings.CutPrefix(spec, "bolt:")
	}
	if !ok || path == "" {
		return "", fmt.Errorf("--from %q: want bbolt:PATH", spec)
	}
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		path = filepath.Join(path, "state.db")
	}
	// bbolt would create a missing file; a typo must not migrate nothing.
	if _, err := os.Stat(path); err != nil {
		return "", fmt.Errorf("--from: %w", err)
	}
	return path, nil
}

// migrateDest parses etcd:URL[,URL...].
func migrateDest(spec string) ([]string, error) {
	list, ok := strings.CutPrefix(spec, "etcd:")
	var eps []string
	for _, e := range strings.Split(list, ",") {
		if e = strings.TrimSpace(e); e != "" {
			eps = append(eps, e)
		}
	}
	if !ok || len(eps) == 0 {
		return nil, fmt.Errorf("--to %q: want etcd:URL[,URL...]", spec)
	}
	return eps, nil
}

func runMigrate(cmd *cobra.Command, f *migrateFlags) error {
	src, err := migrateSource(f.from)
	if err != nil {
		return err
	}
	eps, err := migrateDest(f.to)
	if err != nil {
		return err
	}
	st := config.DefaultIssuer().State
	if f.config != "" {
		cfg, err := config.LoadIssuer(f.config)
		if err != nil {
			return err
		}
		st = cfg.State
	}
	st.Backend, st.Endpoints = "etcd", eps
	for _, o := range []struct {
		dst *string
		v   string
	}{{&st.Prefix, f.prefix}, {&st.TLSCert, f.cert}, {&st.TLSKey, f.key}, {&st.TLSCA, f.ca}} {
		if o.v != "" {
			*o.dst = o.v
		}
	}
	if f.dialTimeout > 0 {
		st.DialTimeout.Duration = f.dialTimeout
	}
	if f.reqTimeout > 0 {
		st.RequestTimeout.Duration = f.reqTimeout
	}
	st.AllowPlaintext = st.AllowPlaintext || f.allowPlaintext
	// The same checks as the issuer's own config (TLS pairs, plaintext).
	check := config.DefaultIssuer()
	check.State = st
	if err := check.Validate(); err != nil {
		return err
	}

	logger, _, err := cli.NewLogger(cmd.ErrOrStderr(), "text")
	if err != nil {
		return err
	}
	from, err := bolt.Open(src, &bolt.Options{LockTimeout: time.Second})
	if errors.Is(err, bolt.ErrLocked) {
		return fmt.Errorf("%w: stop the issuer before migrating", err)
	}
	if err != nil {
		return err
	}
	defer from.Close()
	to, err := etcd.Open(cmd.Context(), issuer.EtcdConfig(st, logger))
	if err != nil {
		return err
	}
	defer to.Close()
	res, err := issuer.Migrate(cmd.Context(), to, from)
	if res != nil {
		fmt.Fprintf(cmd.OutOrStdout(), "copied %d keys, %d revocations, %d machines (%d already there) from %s to etcd %s prefix %s\n",
			res.Keys, res.Revocations, res.Machines, res.Unchanged, src, strings.Join(eps, ","), st.Prefix)
	}
	if err != nil {
		return err
	}
	fmt.Fprintln(cmd.OutOrStdout(), "run every replica with the seal key of the bbolt state (state.seal_key_file or state.seal_key_env)")
	return nil
}
