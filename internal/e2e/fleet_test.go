package e2e

// The fleet: five host orchestrators, each with an admin token scoped to
// its region, manage their machines concurrently through three issuer
// replicas sharing one embedded etcd; the machines' agents then work.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/client"
	issuerclient "github.com/wicket-sh/wicket/client/issuer"
	"github.com/wicket-sh/wicket/internal/admintoken"
	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/store/etcd/etcdtest"
	"github.com/wicket-sh/wicket/internal/wait"
)

func TestFleet_HostOrchestratorsOnReplicas(t *testing.T) {
	// Under a second here: etcd, three issuers and five agents all
	// in-process, so it runs in -short too.
	const perHost = 6
	regions := []string{"fra", "ord", "sin", "syd", "gru"}

	etcd := etcdtest.Start(t, 1)
	sealKey := filepath.Join(ShortDir(t), "seal.key")
	var replicas []*Issuer
	for range 3 {
		replicas = append(replicas, StartIssuerWith(t, func(c *config.Issuer) {
			c.State.Backend, c.State.Endpoints, c.State.Prefix = "etcd", etcd.Endpoints(), "/wicket-fleet/"
			c.State.SealKeyFile = sealKey
			c.RemoteAdmin.Listen = "127.0.0.1:0"
			c.RemoteAdmin.Rate, c.RemoteAdmin.Burst = 1000, 1000
		}))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// The platform mints one root token and gives each host a copy scoped
	// to its region; every replica knows the root key once its key watch
	// fires.
	root, err := replicas[0].MintAdminToken(ctx, api.AdminTokenRequest{Label: "fleet"})
	if err != nil {
		t.Fatal(err)
	}
	hostClients := make([][]*issuerclient.Client, len(regions)) // host → one client per replica
	for h, region := range regions {
		tok, err := admintoken.Attenuate(root.Token, admintoken.Scope{Orgs: []string{"acme"}, Regions: []string{region},
			Ops: []admintoken.Op{admintoken.OpMachineAdd, admintoken.OpMachineGet, admintoken.OpMachineRemove}})
		if err != nil {
			t.Fatal(err)
		}
		f := filepath.Join(t.TempDir(), "host-"+region)
		os.WriteFile(f, []byte(tok), 0o600)
		for _, r := range replicas {
			c, err := issuerclient.New(issuerclient.Config{URL: "http://" + r.RemoteAdminAddr().String(), TokenFile: f, Backoff: 20 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			hostClients[h] = append(hostClients[h], c)
		}
	}
	for i, c := range hostClients[0] {
		wait.Eventually(t, 10*time.Second, func() bool { _, err := c.Status(ctx); return err == nil }, "replica %d knows the admin token", i)
	}

	type kept struct {
		id, region, token string
	}
	var (
		mu      sync.Mutex
		keptAll []kept
		removed []string // tokens of removed machines
		wg      sync.WaitGroup
	)
	for h, region := range regions {
		wg.Go(func() {
			cs := hostClients[h]
			var ids []string
			for i := range perHost {
				// Each call goes to another replica.
				added, err := cs[(h+i)%len(cs)].AddMachine(ctx, api.MachineSpec{Org: "acme", App: "web", Region: region, Name: fmt.Sprintf("%s-%d", region, i)})
				if err != nil {
					t.Errorf("host %s add %d: %v", region, i, err)
					return
				}
				ids = append(ids, added.Machine.MachineID)
				mu.Lock()
				if i%2 == 0 {
					keptAll = append(keptAll, kept{added.Machine.MachineID, region, added.Token.Token})
				} else {
					removed = append(removed, added.Token.Token)
				}
				mu.Unlock()
			}
			for i := 1; i < perHost; i += 2 {
				if err := cs[(h+i+1)%len(cs)].RemoveMachine(ctx, ids[i]); err != nil {
					t.Errorf("host %s remove %d: %v", region, i, err)
				}
			}
			// Each host sees its own machines only, on every replica.
			for r, c := range cs {
				ms, err := c.ListMachines(ctx)
				if err != nil {
					t.Errorf("host %s list on replica %d: %v", region, r, err)
					continue
				}
				var got []string
				for _, m := range ms {
					if m.Region != region {
						t.Errorf("host %s sees a machine of %s", region, m.Region)
					}
					got = append(got, m.MachineID)
				}
				want := []string{ids[0], ids[2], ids[4]}
				slices.Sort(got)
				slices.Sort(want)
				if !slices.Equal(got, want) {
					t.Errorf("host %s on replica %d lists %v, want %v", region, r, got, want)
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}

	// Nothing lost, nothing duplicated: the state holds exactly the kept
	// machines, once each.
	ms, err := replicas[2].Store().ListMachines(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var stored, want []string
	for _, m := range ms {
		stored = append(stored, m.ID)
	}
	for _, k := range keptAll {
		want = append(want, k.id)
	}
	slices.Sort(stored)
	slices.Sort(want)
	if !slices.Equal(stored, want) || len(want) != len(regions)*perHost/2 {
		t.Fatalf("stored machines %v, want the %d kept %v", stored, len(regions)*perHost/2, want)
	}
	// Another host's machine is not found, even by id.
	for _, k := range keptAll {
		if k.region == regions[0] {
			continue
		}
		if _, err := hostClients[0][1].GetMachine(ctx, k.id); issuerclient.Code(err) != api.CodeNotFound {
			t.Errorf("host %s gets a machine of %s: %v, want not_found", regions[0], k.region, err)
		}
		if err := hostClients[0][2].RemoveMachine(ctx, k.id); issuerclient.Code(err) != api.CodeNotFound {
			t.Errorf("host %s removes a machine of %s: %v, want not_found", regions[0], k.region, err)
		}
		break
	}

	// One kept machine per host boots an agent against some replica: it
	// gets its metadata and an OIDC token. Removed machines' tokens fail.
	seen := map[string]bool{}
	for i, k := range keptAll {
		if seen[k.region] {
			continue
		}
		seen[k.region] = true
		r := replicas[i%len(replicas)]
		ag := StartAgent(t, r.URL, k.token, "")
		wc := client.New(ag.APISocket)
		md, _, err := wc.Metadata(ctx)
		if err != nil || md.MachineID != k.id || md.Region != k.region {
			t.Errorf("agent of %s: metadata %+v, %v", k.id, md, err)
		}
		if jwt, _, err := wc.OIDCToken(ctx, "sts.amazonaws.com"); err != nil || jwt == "" {
			t.Errorf("agent of %s: oidc token: %v", k.id, err)
		}
	}
	for _, tok := range removed {
		if _, _, err := replicas[0].OIDCSource(tok, "x")(ctx); err == nil {
			t.Error("a removed machine's token still gets OIDC tokens")
		}
	}
}
