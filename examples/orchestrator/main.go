// Command orchestrator is an example host orchestrator for wicket: the part
// of a platform's per-host agent (a VM manager, a container supervisor)
// that registers each machine it creates with the wicket issuer, hands the
// machine its token before boot, re-mints the token before it expires, and
// removes the machine when it is destroyed. It uses only the public Go
// client, github.com/wicket-sh/wicket/client/issuer, and an admin token
// attenuated to this host's org, app and region.
//
//	orchestrator -issuer-url https://issuer.internal:8651 \
//	  -admin-token-file /etc/orchestrator/wicket-admin-token \
//	  -org acme -app web -region fra -root /var/lib/machines \
//	  -count 2 -hold 30s
//
// For each machine it writes <root>/<name>/etc/wicket/machine-token (mode
// 0600; the machine's agent reads it once with token_unlink = true) and
// <root>/<name>/etc/wicket/agent.toml, waits -hold (a real orchestrator
// runs the machine meanwhile), then destroys the machines it made. See
// docs/orchestrator.md for the whole integration.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/client/issuer"
)

// Orchestrator manages this host's machines on the issuer.
type Orchestrator struct {
	Issuer           *issuer.Client
	Org, App, Region string
	// Root holds one directory per machine: what becomes its filesystem.
	Root string
	// IssuerPublicURL is what the machine's agent calls (issuer.url).
	IssuerPublicURL string
}

// Machine is one machine this orchestrator created.
type Machine struct {
	ID, Name  string
	Dir       string // the machine's filesystem on this host
	TokenID   string
	ExpiresAt time.Time
}

// tokenPath is where the machine finds its token: inside its own
// filesystem, so nothing else on the host needs to read it.
func (m *Machine) tokenPath() string { return filepath.Join(m.Dir, "etc", "wicket", "machine-token") }

// Create registers a machine and writes its token and agent config into
// its filesystem, before it boots.
func (o *Orchestrator) Create(ctx context.Context, name string) (*Machine, error) {
	added, err := o.Issuer.AddMachine(ctx, api.MachineSpec{Name: name, Org: o.Org, App: o.App, Region: o.Region})
	if err != nil {
		return nil, fmt.Errorf("register %s: %w", name, err)
	}
	m := &Machine{ID: added.Machine.MachineID, Name: name, Dir: filepath.Join(o.Root, name)}
	if err := o.deliver(m, added.Token); err != nil {
		// A machine that cannot get its token must not stay registered.
		o.Issuer.RemoveMachine(context.WithoutCancel(ctx), m.ID)
		return nil, err
	}
	cfg := fmt.Sprintf("[issuer]\nurl = %q\ntoken_file = %q\ntoken_unlink = true\n", o.IssuerPublicURL, "/etc/wicket/machine-token")
	if err := os.WriteFile(filepath.Join(m.Dir, "etc", "wicket", "agent.toml"), []byte(cfg), 0o644); err != nil {
		o.Issuer.RemoveMachine(context.WithoutCancel(ctx), m.ID)
		return nil, fmt.Errorf("agent config for %s: %w", name, err)
	}
	return m, nil
}

// deliver writes tok into the machine's filesystem: a new file, mode
// 0600, renamed into place so the agent never reads half a token.
func (o *Orchestrator) deliver(m *Machine, tok *api.MintedToken) error {
	dir := filepath.Dir(m.tokenPath())
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("machine %s: %w", m.Name, err)
	}
	f, err := os.CreateTemp(dir, ".machine-token-*")
	if err != nil {
		return fmt.Errorf("machine %s: %w", m.Name, err)
	}
	defer os.Remove(f.Name()) // after the rename, a no-op
	if _, err := io.WriteString(f, tok.Token); err != nil {
		f.Close()
		return fmt.Errorf("machine %s token: %w", m.Name, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("machine %s token: %w", m.Name, err)
	}
	if err := os.Rename(f.Name(), m.tokenPath()); err != nil {
		return fmt.Errorf("machine %s token: %w", m.Name, err)
	}
	m.TokenID, m.ExpiresAt = tok.TokenID, tok.ExpiresAt
	return nil
}

// Renew mints a new token for a machine that is still to boot (or will be
// restarted) once the old one nears expiry; a running agent holds its token
// in memory, so a long-running machine gets a new one at its next boot or
// through its platform's own channel. The old token's copies expire on
// their own; revoke it when it may have leaked.
func (o *Orchestrator) Renew(ctx context.Context, m *Machine) error {
	tok, err := o.Issuer.MintToken(ctx, m.ID, 0)
	if err != nil {
		return fmt.Errorf("renew %s: %w", m.Name, err)
	}
	return o.deliver(m, tok)
}

// Destroy removes the machine from the issuer (its tokens stop working at
// once) and then its filesystem. A machine already gone is not an error:
// destroy must be safe to repeat after a crash.
func (o *Orchestrator) Destroy(ctx context.Context, m *Machine) error {
	if err := o.Issuer.RemoveMachine(ctx, m.ID); err != nil && issuer.Code(err) != api.CodeNotFound {
		return fmt.Errorf("remove %s: %w", m.Name, err)
	}
	return os.RemoveAll(m.Dir)
}

// run is main with its arguments, output and context.
func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("orchestrator", flag.ContinueOnError)
	url := fs.String("issuer-url", "", "the issuer's remote admin API")
	tokenFile := fs.String("admin-token-file", "", "this host's admin token")
	caFile := fs.String("issuer-ca", "", "CA bundle for the issuer's certificate (default: system roots)")
	publicURL := fs.String("issuer-public-url", "", "the issuer URL machines' agents use (issuer.url)")
	org := fs.String("org", "", "org of the machines")
	app := fs.String("app", "", "app of the machines")
	region := fs.String("region", "", "this host's region")
	root := fs.String("root", "", "directory holding the machines' filesystems")
	count := fs.Int("count", 1, "machines to create")
	hold := fs.Duration("hold", 0, "how long the machines live before they are destroyed")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *url == "" || *tokenFile == "" || *root == "" || *org == "" || *app == "" {
		return errors.New("-issuer-url, -admin-token-file, -root, -org and -app are required")
	}
	tc, err := issuer.TLSFiles(*caFile, "", "")
	if err != nil {
		return err
	}
	c, err := issuer.New(issuer.Config{URL: *url, TokenFile: *tokenFile, TLS: tc})
	if err != nil {
		return err
	}
	o := &Orchestrator{Issuer: c, Org: *org, App: *app, Region: *region, Root: *root, IssuerPublicURL: *publicURL}

	var made []*Machine
	defer func() {
		// Destroy what was made, whatever happened: a machine left
		// registered keeps a working token.
		for _, m := range made {
			if err := o.Destroy(context.WithoutCancel(ctx), m); err != nil {
				fmt.Fprintf(out, "destroy %s: %v\n", m.Name, err)
				continue
			}
			fmt.Fprintf(out, "destroyed %s (%s)\n", m.Name, m.ID)
		}
	}()
	for i := range *count {
		m, err := o.Create(ctx, fmt.Sprintf("%s-%s-%d", *app, *region, i+1))
		if err != nil {
			return err
		}
		made = append(made, m)
		fmt.Fprintf(out, "created %s (%s): token %s in %s, expires %s\n", m.Name, m.ID, m.TokenID, m.tokenPath(), m.ExpiresAt.Format(time.RFC3339))
	}
	select {
	case <-ctx.Done():
	case <-time.After(*hold):
	}
	return nil
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "orchestrator:", err)
		os.Exit(1)
	}
}
