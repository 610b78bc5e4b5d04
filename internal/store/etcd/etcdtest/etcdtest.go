// Package etcdtest runs real etcd members in-process for tests: one member
// for the store conformance suite, three for failure tests. Members listen
// on free loopback ports and keep their data in t.TempDir(), so a stopped
// member restarts with its data on the same addresses.
//
// Clients reach each member through a TCP relay, so that Stop can cut
// every client connection at once, the way a killed process does; etcd's
// own Close would first wait several seconds for open watch streams.
package etcdtest

import (
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// readyTimeout bounds the wait for a member (or a whole cluster) to serve.
const readyTimeout = 20 * time.Second

// Cluster is a running set of etcd members.
type Cluster struct {
	t       testing.TB
	mu      sync.Mutex
	members []*member
}

type member struct {
	name, dir          string
	peerURL, clientURL url.URL
	relay              *relay
	etcd               *embed.Etcd // nil while stopped
}

// Start runs an n-member cluster until the test ends.
func Start(t testing.TB, n int) *Cluster {
	t.Helper()
	c := &Cluster{t: t}
	var initial []string
	for i := range n {
		m := &member{
			name:      fmt.Sprintf("m%d", i),
			dir:       t.TempDir(),
			peerURL:   url.URL{Scheme: "http", Host: freeAddr(t)},
			clientURL: url.URL{Scheme: "http", Host: freeAddr(t)},
		}
		m.relay = &relay{addr: freeAddr(t), target: m.clientURL.Host}
		c.members = append(c.members, m)
		initial = append(initial, m.name+"="+m.peerURL.String())
	}
	cluster := strings.Join(initial, ",")
	// A cluster forms only once a quorum runs, so start all, then wait.
	for _, m := range c.members {
		c.start(m, cluster, embed.ClusterStateFlagNew)
	}
	for _, m := range c.members {
		c.waitReady(m)
	}
	t.Cleanup(c.StopAll)
	return c
}

// Endpoints returns the client URL of every member (its relay).
func (c *Cluster) Endpoints() []string {
	var out []string
	for _, m := range c.members {
		out = append(out, "http://"+m.relay.addr)
	}
	return out
}

// Stop stops member i, keeping its data. Its clients see their
// connections cut at once.
func (c *Cluster) Stop(i int) {
	c.mu.Lock()
	m := c.members[i]
	e := m.etcd
	m.etcd = nil
	c.mu.Unlock()
	m.relay.stop()
	if e != nil {
		e.Close()
	}
}

// StopAll stops every member.
func (c *Cluster) StopAll() {
	for i := range c.members {
		c.Stop(i)
	}
}

// Restart starts the stopped members idx (all when none are given) again
// from their data directories and waits until they serve.
func (c *Cluster) Restart(idx ...int) {
	c.t.Helper()
	if len(idx) == 0 {
		for i := range c.members {
			idx = append(idx, i)
		}
	}
	for _, i := range idx {
		// With data on disk the initial cluster is ignored; it must only parse.
		m := c.members[i]
		c.start(m, m.name+"="+m.peerURL.String(), embed.ClusterStateFlagExisting)
	}
	for _, i := range idx {
		c.waitReady(c.members[i])
	}
}

func (c *Cluster) start(m *member, initialCluster, state string) {
	c.t.Helper()
	cfg := embed.NewConfig()
	cfg.Name = m.name
	cfg.Dir = m.dir
	cfg.ListenPeerUrls = []url.URL{m.peerURL}
	cfg.AdvertisePeerUrls = []url.URL{m.peerURL}
	cfg.ListenClientUrls = []url.URL{m.clientURL}
	cfg.AdvertiseClientUrls = []url.URL{m.clientURL}
	cfg.InitialCluster = initialCluster
	cfg.InitialClusterToken = "wicket-test"
	cfg.ClusterState = state
	// Faster elections than the WAN-friendly defaults, so failover tests
	// stay short; no fsync, since the data dies with the test anyway.
	cfg.TickMs, cfg.ElectionMs = 25, 250
	cfg.UnsafeNoFsync = true
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		c.t.Fatalf("etcd member %s: %v", m.name, err)
	}
	c.mu.Lock()
	m.etcd = e
	c.mu.Unlock()
	if err := m.relay.start(); err != nil {
		c.t.Fatalf("etcd member %s relay: %v", m.name, err)
	}
}

func (c *Cluster) waitReady(m *member) {
	c.t.Helper()
	c.mu.Lock()
	e := m.etcd
	c.mu.Unlock()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		c.t.Fatalf("etcd member %s: %v", m.name, err)
	case <-time.After(readyTimeout):
		c.t.Fatalf("etcd member %s not ready after %v", m.name, readyTimeout)
	}
}

// freeAddr returns a loopback address with a port free at the time of the
// call.
func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// relay forwards TCP connections from addr to target until stopped.
type relay struct {
	addr, target string

	mu    sync.Mutex
	ln    net.Listener
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func (r *relay) start() error {
	ln, err := net.Listen("tcp", r.addr)
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.ln, r.conns = ln, map[net.Conn]struct{}{}
	r.mu.Unlock()
	r.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			r.wg.Go(func() { r.forward(c) })
		}
	})
	return nil
}

func (r *relay) track(c net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.conns == nil {
		return false
	}
	r.conns[c] = struct{}{}
	return true
}

func (r *relay) untrack(c net.Conn) {
	c.Close()
	r.mu.Lock()
	delete(r.conns, c)
	r.mu.Unlock()
}

func (r *relay) forward(c net.Conn) {
	defer r.untrack(c)
	if !r.track(c) {
		return
	}
	up, err := net.Dial("tcp", r.target)
	if err != nil {
		return
	}
	defer r.untrack(up)
	if !r.track(up) {
		return
	}
	done := make(chan struct{}, 2)
	go func() { io.Copy(up, c); done <- struct{}{} }()
	go func() { io.Copy(c, up); done <- struct{}{} }()
	<-done
}

// stop closes the listener and every forwarded connection.
func (r *relay) stop() {
	r.mu.Lock()
	if r.ln != nil {
		r.ln.Close()
	}
	for c := range r.conns {
		c.Close()
	}
	r.conns = nil
	r.mu.Unlock()
	r.wg.Wait()
}
