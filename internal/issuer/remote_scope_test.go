package issuer

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/admintoken"
	"github.com/wicket-sh/wicket/internal/store"
)

// movingStore moves one machine to another region right after the next
// read of it, once armed: the change lands between a command's scope
// check on what it read and the act itself, the window a concurrent
// PATCH by the machine's other manager could hit.
type movingStore struct {
	store.Store
	id     atomic.Value // string: the machine to move
	armed  atomic.Bool
	region string
}

func (s *movingStore) GetMachine(ctx context.Context, id string) (*store.Machine, error) {
	m, err := s.Store.GetMachine(ctx, id)
	if err == nil && id == s.id.Load() && s.armed.CompareAndSwap(true, false) {
		if _, err := s.Store.UpdateMachine(ctx, id, 0, func(m *store.Machine) error { m.Region = s.region; return nil }); err != nil {
			panic(err)
		}
	}
	return m, err
}

// A remote DELETE or token mint acts only on a machine that is in the
// token's scope when it acts, not merely when it was looked up: a
// machine moved out of scope in between is neither removed nor given a
// token (404, as for any machine out of scope).
func TestRemoteAdmin_ScopeCheckedOnTheRecordActedOn(t *testing.T) {
	ms := &movingStore{region: "ord"}
	ti := startIssuerWith(t, shortDir(t), withRemote(nil), func(o *Options) {
		o.wrapStore = func(s store.Store) store.Store { ms.Store = s; return ms }
	})
	root := ti.mintAdmin(t, api.AdminTokenRequest{Label: "root"})
	fra := attenuate(t, root.Token, admintoken.Scope{Orgs: []string{"acme"}, Regions: []string{"fra"},
		Ops: []admintoken.Op{admintoken.OpMachineGet, admintoken.OpMachineRemove, admintoken.OpTokenMint}})
	r := ti.admin(t, "POST", "/v1/machines", spec("acme", "fra", "m1"))
	if r.Status != 201 {
		t.Fatalf("add: %+v", r)
	}
	var added api.MachineAdded
	json.Unmarshal([]byte(r.Body), &added)
	id := added.Machine.MachineID
	ms.id.Store(id)
	backToFra := func() {
		t.Helper()
		if r := ti.admin(t, "PATCH", "/v1/machines/"+id, `{"region":"fra"}`); r.Status != 200 {
			t.Fatalf("move back: %+v", r)
		}
	}

	ms.armed.Store(true)
	wantCode(t, "delete of a machine moved out of scope", ti.remote(t, "DELETE", "/v1/machines/"+id, fra, ""), 404, api.CodeNotFound)
	m, err := ti.Store().GetMachine(t.Context(), id)
	if err != nil || m.Region != "ord" {
		t.Fatalf("the machine moved out of scope was removed: %v, %v", m, err)
	}

	backToFra()
	ms.armed.Store(true)
	// The reply is not printed: on failure it would hold a machine token.
	if r2 := ti.remote(t, "POST", "/v1/machines/"+id+"/tokens", fra, `{"ttl":"1h"}`); r2.status != 404 || strings.Contains(r2.body, "fm2_") {
		t.Errorf("mint for a machine moved out of scope: %d (token in the reply: %v), want 404", r2.status, strings.Contains(r2.body, "fm2_"))
	}
	if !strings.Contains(ti.logs.String(), "token dropped") {
		t.Error("no log line for the dropped token")
	}

	// Unmoved, the same token removes and mints as before.
	backToFra()
	if r := ti.remote(t, "POST", "/v1/machines/"+id+"/tokens", fra, `{"ttl":"1h"}`); r.status != 201 {
		t.Errorf("mint in scope: %d", r.status)
	}
	if r := ti.remote(t, "DELETE", "/v1/machines/"+id, fra, ""); r.status != 200 {
		t.Errorf("delete in scope: %d %s", r.status, r.body)
	}
}

// GET /v1/status states exactly what a token copy with a machine-token
// cap of 0 can do: it mints no machine token, so neither token.mint nor
// machine.add is among its operations and its cap shows as "0s", not as
// no cap, nor as the cap of a larger caveat appended after it. The
// issuer refuses both, as shown.
func TestRemoteStatus_CapZeroShownExactly(t *testing.T) {
	ti := startIssuer(t, shortDir(t), withRemote(nil))
	root := ti.mintAdmin(t, api.AdminTokenRequest{Label: "root"})
	none := attenuate(t, root.Token, admintoken.Scope{MintsNone: true})
	noneThenDay := attenuate(t, none, admintoken.Scope{MaxMachineTTL: 24 * time.Hour})
	r := ti.admin(t, "POST", "/v1/machines", spec("acme", "fra", "m1"))
	var added api.MachineAdded
	json.Unmarshal([]byte(r.Body), &added)
	for name, tok := range map[string]string{"cap 0": none, "cap 0, then 24h": noneThenDay} {
		var st api.RemoteStatus
		if r := ti.remote(t, "GET", "/v1/status", tok, ""); r.status != 200 || json.Unmarshal([]byte(r.body), &st) != nil {
			t.Fatalf("%s: status %d %s", name, r.status, r.body)
		}
		if st.Scope.MaxMachineTTL != "0s" {
			t.Errorf("%s: max_machine_ttl %q, want \"0s\"", name, st.Scope.MaxMachineTTL)
		}
		want := []string{"machine.update", "machine.remove", "machine.get", "token.revoke"}
		if !slices.Equal(st.Scope.Ops, want) {
			t.Errorf("%s: ops %v, want %v", name, st.Scope.Ops, want)
		}
		// Replies not printed: on failure they would hold a machine token.
		if r := ti.remote(t, "POST", "/v1/machines/"+added.Machine.MachineID+"/tokens", tok, `{"ttl":"1h"}`); r.status != 403 {
			t.Errorf("%s: mint: %d, want 403", name, r.status)
		}
		if r := ti.remote(t, "POST", "/v1/machines", tok, spec("acme", "fra", "m2")); r.status != 403 {
			t.Errorf("%s: add: %d, want 403", name, r.status)
		}
		if r := ti.remote(t, "GET", "/v1/machines/"+added.Machine.MachineID, tok, ""); r.status != 200 {
			t.Errorf("%s: get, which the status lists: %d", name, r.status)
		}
	}
	// A token with a positive cap shows it, and all its operations.
	day := attenuate(t, root.Token, admintoken.Scope{MaxMachineTTL: 24 * time.Hour})
	var st api.RemoteStatus
	json.Unmarshal([]byte(ti.remote(t, "GET", "/v1/status", day, "").body), &st)
	if st.Scope.MaxMachineTTL != "24h0m0s" || st.Scope.Ops != nil {
		t.Errorf("24h cap: %+v", st.Scope)
	}
}

// unreachableStore is a clustered store that has lost its backend: its
// reads come from its last copy.
type unreachableStore struct {
	store.Store
	down atomic.Bool
}

func (s *unreachableStore) Reachable() bool { return !s.down.Load() }

// A remote token mint is refused (503) while the state store is out of
// reach: the re-read that proves the machine unchanged since the scope
// check would come from the store's cached copy and prove nothing.
func TestRemoteMint_RefusedWhileStoreUnreachable(t *testing.T) {
	us := &unreachableStore{}
	ti := startIssuerWith(t, shortDir(t), withRemote(nil), func(o *Options) {
		o.wrapStore = func(s store.Store) store.Store { us.Store = s; return us }
	})
	root := ti.mintAdmin(t, api.AdminTokenRequest{Label: "root"})
	r := ti.admin(t, "POST", "/v1/machines", spec("acme", "fra", "m1"))
	var added api.MachineAdded
	json.Unmarshal([]byte(r.Body), &added)
	path := "/v1/machines/" + added.Machine.MachineID + "/tokens"
	us.down.Store(true)
	// The reply is not printed: on failure it would hold a machine token.
	if r := ti.remote(t, "POST", path, root.Token, `{"ttl":"1h"}`); r.status != 503 || strings.Contains(r.body, "fm2_") {
		t.Errorf("mint while the store is out of reach: %d (token in the reply: %v), want 503", r.status, strings.Contains(r.body, "fm2_"))
	}
	us.down.Store(false)
	if r := ti.remote(t, "POST", path, root.Token, `{"ttl":"1h"}`); r.status != 201 {
		t.Errorf("mint once it is back: %d", r.status)
	}
}
