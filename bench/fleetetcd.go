package main

import (
	"bufio"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// serveEtcd runs one etcd member (the etcd server's embed package) in this
// process for the fleet simulator's cluster mode: a process of its own, so
// that its RSS and CPU are measured apart from the issuers'. spec is
// "dir,client host:port,peer host:port". It prints "ready" once the member
// serves and runs until SIGINT or SIGTERM.
func serveEtcd(spec string) error {
	parts := strings.Split(spec, ",")
	if len(parts) != 3 {
		return fmt.Errorf("serve-etcd %q: want dir,client,peer", spec)
	}
	cu, pu := url.URL{Scheme: "http", Host: parts[1]}, url.URL{Scheme: "http", Host: parts[2]}
	cfg := embed.NewConfig()
	cfg.Name = "fleet"
	cfg.Dir = parts[0]
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{cu}, []url.URL{cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{pu}, []url.URL{pu}
	cfg.InitialCluster = cfg.Name + "=" + pu.String()
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return err
	}
	defer e.Close()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		return err
	case <-time.After(60 * time.Second):
		return errors.New("etcd not ready after 60s")
	}
	fmt.Println("ready")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	select {
	case <-sig:
		return nil
	case err := <-e.Err():
		return err
	}
}

// startEtcd runs serveEtcd in a child process of this binary with its data
// under dir, and returns it once it serves, with its client URL.
func startEtcd(dir string) (*exec.Cmd, string, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, "", err
	}
	client, err := freePort()
	if err != nil {
		return nil, "", err
	}
	peer, err := freePort()
	if err != nil {
		return nil, "", err
	}
	c := exec.Command(self, "-serve-etcd", dir+","+client+","+peer)
	c.Stderr = os.Stderr
	out, err := c.StdoutPipe()
	if err != nil {
		return nil, "", err
	}
	if err := c.Start(); err != nil {
		return nil, "", err
	}
	ready := make(chan bool, 1)
	go func() {
		line, _ := bufio.NewReader(out).ReadString('\n')
		ready <- strings.TrimSpace(line) == "ready"
	}()
	select {
	case ok := <-ready:
		if ok {
			return c, "http://" + client, nil
		}
	case <-time.After(90 * time.Second):
	}
	c.Process.Kill()
	c.Wait()
	return nil, "", errors.New("fleet: etcd helper did not start")
}

// stopProcess interrupts c and waits (bounded) for it to exit.
func stopProcess(c *exec.Cmd) {
	if c == nil || c.Process == nil {
		return
	}
	c.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { c.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		c.Process.Kill()
		<-done
	}
}

// somaxconn is the kernel's accept queue cap in use (every listener's
// backlog is cut to it), or -1 when unreadable.
func somaxconn() int {
	b, err := os.ReadFile("/proc/sys/net/core/somaxconn")
	if err != nil {
		return -1
	}
	var n int
	if _, err := fmt.Sscan(string(b), &n); err != nil {
		return -1
	}
	return n
}
