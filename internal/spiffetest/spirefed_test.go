package spiffetest

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/e2e"
	"github.com/wicket-sh/wicket/internal/issuer"
	"github.com/wicket-sh/wicket/internal/spire"
	"github.com/wicket-sh/wicket/internal/spire/spiretest"
	"github.com/wicket-sh/wicket/internal/wait"
)

// The SPIRE side of the federation tests runs on internal/spire.
const (
	spireTD       = "spire.test"
	spireWorkload = "spiffe://spire.test/workload/app"
)

func freeTCPPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// spireServer starts a SPIRE server of spire.test whose server block
// holds federation, stopped when the test ends; a failed test shows its
// log's tail.
func spireServer(t *testing.T, federation string) *spire.Server {
	t.Helper()
	srv, err := spire.StartServer(t.Context(), e2e.ShortDir(t), spire.ServerOptions{
		Bins: spiretest.Binaries(t), TrustDomain: spireTD, ServerHCL: federation, LogLevel: "DEBUG",
		// SPIRE's https_web federation client trusts the system roots:
		// the test CA.
		Env: []string{"SSL_CERT_FILE=" + webPKI.caFile},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			logTail(t, srv.Log())
		}
		srv.Close()
	})
	return srv
}

func logTail(t *testing.T, path string) {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	t.Logf("%s (last lines):\n%s", filepath.Base(path), strings.Join(lines[max(0, len(lines)-40):], "\n"))
}

// x509Source is go-spiffe's X509Source on a Workload API socket, once it
// holds a bundle of every trust domain in want.
func x509Source(t *testing.T, sock string, want ...spiffeid.TrustDomain) *workloadapi.X509Source {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+sock)))
	if err != nil {
		t.Fatalf("X509Source on %s: %v", sock, err)
	}
	t.Cleanup(func() { src.Close() })
	wait.Eventually(t, 60*time.Second, func() bool {
		for _, td := range want {
			if _, err := src.GetX509BundleForTrustDomain(td); err != nil {
				return false
			}
		}
		return true
	}, fmt.Sprintf("bundles of %v on %s", want, sock))
	return src
}

// mtlsServer accepts mTLS connections with svid and bundles, authorizing
// only peer; it answers "hello <peer ID>" to each line and reports each
// handshake's error (nil when it succeeded) on the returned channel.
func mtlsServer(t *testing.T, svid x509svid.Source, bundles x509bundle.Source, peer spiffeid.ID) (string, <-chan error) {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", tlsconfig.MTLSServerConfig(svid, bundles, tlsconfig.AuthorizeID(peer)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	results := make(chan error, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tc := c.(*tls.Conn)
				tc.SetDeadline(time.Now().Add(10 * time.Second))
				if err := tc.Handshake(); err != nil {
					results <- err
					return
				}
				if _, err := bufio.NewReader(tc).ReadString('\n'); err != nil {
					results <- err
					return
				}
				id, _ := x509svid.IDFromCert(tc.ConnectionState().PeerCertificates[0])
				fmt.Fprintf(tc, "hello %s\n", id)
				results <- nil
			}()
		}
	}()
	return ln.Addr().String(), results
}

// mtlsDial connects with svid and bundles, authorizing only peer, and
// returns the server's answer to "hi".
func mtlsDial(addr string, svid x509svid.Source, bundles x509bundle.Source, peer spiffeid.ID) (string, error) {
	d := &net.Dialer{Timeout: 10 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, tlsconfig.MTLSClientConfig(svid, bundles, tlsconfig.AuthorizeID(peer)))
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintln(c, "hi"); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

func handshakeResult(t *testing.T, results <-chan error) error {
	t.Helper()
	select {
	case err := <-results:
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("the server saw no handshake in 30s")
		return nil
	}
}

// A SPIRE server federates with wicket's trust domain through wicket's
// bundle endpoint (https_web), and wicket's issuer with SPIRE's through
// SPIRE's (https_web, serving_cert_file). A workload with a SPIRE-issued
// SVID and one with a wicket SVID complete mTLS with each other, in both
// roles, each authorizing the other's exact SPIFFE ID; a workload of a
// wicket org that does not federate with spire.test is refused both ways,
// and another identity of the federated org is refused by the ID check.
func TestSPIRE_FederationMTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("starts SPIRE's server (and agent): seconds of real time")
	}
	spiretest.Binaries(t)
	bundlePort := freeTCPPort(t)

	// The issuer's listener comes first: SPIRE's config names its URL.
	issuerLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	issuerURL := "https://" + issuerLn.Addr().String()

	// SPIRE: federates with dev.wicket.internal through wicket's bundle
	// endpoint, and serves its own over https_web with the test PKI's
	// certificate.
	federation := fmt.Sprintf(`  federation {
    bundle_endpoint {
      address = "127.0.0.1"
      port = %d
      refresh_hint = "1m"
      profile "https_web" {
        serving_cert_file {
          cert_file_path = %q
          key_file_path = %q
          file_sync_interval = "1h"
        }
      }
    }
    federates_with %q {
      bundle_endpoint_url = "%s/dev/.well-known/spiffe-bundle"
      bundle_endpoint_profile "https_web" {}
    }
  }`, bundlePort, webPKI.certFile, webPKI.keyFile, td, issuerURL)
	srv := spireServer(t, federation)

	// wicket: org dev federates with spire.test; org other does not.
	iss := e2e.StartIssuerOpts(t, func(c *config.Issuer) {
		c.Server.PublicURL, c.Server.Listen = issuerURL, issuerLn.Addr().String()
		c.Server.TLSCert, c.Server.TLSKey = webPKI.certFile, webPKI.keyFile
		c.SPIFFE.BundleRefreshHint = config.Duration{Duration: time.Second}
		c.SPIFFE.Federation = []config.SPIFFEFederation{{
			TrustDomain:       spireTD,
			BundleEndpointURL: fmt.Sprintf("https://127.0.0.1:%d", bundlePort),
			Profile:           config.ProfileHTTPSWeb,
			CAFile:            webPKI.caFile,
			Orgs:              []string{"dev"},
		}}
	}, func(o *issuer.Options) {
		o.Listener.Close()
		o.Listener = issuerLn
		o.FederationRefreshMin = time.Millisecond
	})
	e := setupWith(t, iss)
	if _, err := e.client(t).FetchX509SVID(ctxT(t)); err != nil { // dev's CA exists from here on
		t.Fatalf("wicket svid: %v", err)
	}
	otherSock := filepath.Join(e2e.ShortDir(t), "spiffe.sock")
	e2e.StartAgent(t, iss.URL, iss.MachineToken(t, "other", "web", "m1"), fmt.Sprintf(`
[spiffe]
enabled = true
socket_path = %q

[[policy]]
name = "root"
uids = [0]
allow = ["*"]
`, otherSock))

	wicketTDID := "spiffe://" + td
	var lastErr error
	if !wait.Until(60*time.Second, func() bool {
		srv.CLI(t.Context(), "federation", "refresh", "-id", wicketTDID)
		_, lastErr = srv.CLI(t.Context(), "bundle", "list", "-id", wicketTDID)
		return lastErr == nil
	}) {
		t.Fatalf("spire-server never got %s's bundle from wicket's endpoint: %v", td, lastErr)
	}
	ag, err := spire.StartAgent(t.Context(), e2e.ShortDir(t), srv, spire.AgentOptions{LogLevel: "DEBUG"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			logTail(t, ag.Log())
		}
		ag.Close()
	})
	agentSock := ag.SocketPath()
	if _, err := srv.CreateEntry(t.Context(), spire.Entry{SPIFFEID: spireWorkload, ParentID: ag.ID(),
		Selectors: []string{"unix:uid:" + strconv.Itoa(os.Getuid())}, FederatesWith: []string{wicketTDID}}); err != nil {
		t.Fatal(err)
	}

	wicketTD, spireDomain := spiffeid.RequireTrustDomainFromString(td), spiffeid.RequireTrustDomainFromString(spireTD)
	spireSrc := x509Source(t, agentSock, spireDomain, wicketTD)
	wicketSrc := x509Source(t, e.sock, wicketTD, spireDomain)
	otherSrc := x509Source(t, otherSock, spiffeid.RequireTrustDomainFromString("other.wicket.internal"))
	spireID, wicketID := spiffeid.RequireFromString(spireWorkload), spiffeid.RequireFromString(machineID)
	if sv, _ := spireSrc.GetX509SVID(); sv.ID != spireID {
		t.Fatalf("SPIRE's agent gave %s, want %s", sv.ID, spireID)
	}
	if _, err := otherSrc.GetX509BundleForTrustDomain(spireDomain); err == nil {
		t.Fatal("an org that does not federate with spire.test has its bundle")
	}

	// SPIRE-identified server, wicket-identified client.
	addr, results := mtlsServer(t, spireSrc, spireSrc, wicketID)
	if reply, err := mtlsDial(addr, wicketSrc, wicketSrc, spireID); err != nil || reply != "hello "+machineID {
		t.Fatalf("wicket client → SPIRE server: %q, %v", reply, err)
	}
	if err := handshakeResult(t, results); err != nil {
		t.Fatalf("SPIRE server side: %v", err)
	}
	// And the other way round.
	waddr, wresults := mtlsServer(t, wicketSrc, wicketSrc, spireID)
	if reply, err := mtlsDial(waddr, spireSrc, spireSrc, wicketID); err != nil || reply != "hello "+spireWorkload {
		t.Fatalf("SPIRE client → wicket server: %q, %v", reply, err)
	}
	if err := handshakeResult(t, wresults); err != nil {
		t.Fatalf("wicket server side: %v", err)
	}

	// Refusals. A workload of the unfederated org cannot verify the
	// SPIRE server: it has no bundle of spire.test.
	if reply, err := mtlsDial(addr, otherSrc, otherSrc, spireID); err == nil || reply != "" {
		t.Fatalf("unfederated org's workload → SPIRE server: %q, %v", reply, err)
	}
	handshakeResult(t, results) // the server's side of that failed handshake
	// Even handed spire.test's bundle, its SVID is refused by the SPIRE
	// side: SPIRE's agent has no bundle of other.wicket.internal.
	if reply, err := mtlsDial(addr, otherSrc, spireSrc, spireID); err == nil || reply != "" {
		t.Fatalf("unfederated org's SVID accepted by the SPIRE server: %q, %v", reply, err)
	}
	if err := handshakeResult(t, results); err == nil || !strings.Contains(err.Error(), "other.wicket.internal") {
		t.Fatalf("SPIRE server side of the unfederated SVID: %v, want a refusal naming other.wicket.internal", err)
	}
	// A wicket server refuses the unfederated org's client the same way
	// (it authorizes only SPIRE's workload, and has no bundle for other).
	if reply, err := mtlsDial(waddr, otherSrc, spireSrc, wicketID); err == nil || reply != "" {
		t.Fatalf("unfederated org's SVID accepted by the wicket server: %q, %v", reply, err)
	}
	if err := handshakeResult(t, wresults); err == nil {
		t.Fatal("wicket server accepted an SVID of the unfederated org")
	}
	// Another identity of the federated org (uid 65534: workload
	// "frontend") is refused by the SPIRE server's exact-ID check.
	res := runAs(t, uidFrontend, gidWorkloads, helperSpec{Mode: "dial", Socket: e.sock, Addr: addr, Authorize: spireWorkload})
	if res["reply"] != "" {
		t.Fatalf("frontend → SPIRE server authorizing only %s: %v", machineID, res)
	}
	if err := handshakeResult(t, results); err == nil || !strings.Contains(err.Error(), "unexpected ID") {
		t.Fatalf("SPIRE server side of frontend's handshake: %v, want unexpected ID", err)
	}
}

// wicket federates with SPIRE through SPIRE's default bundle endpoint
// profile, https_spiffe: the issuer authenticates the endpoint by the
// SPIRE server's X.509-SVID (spiffe://spire.test/spire/server) against
// the bundle it started from (`spire-server bundle show -format spiffe`),
// and the machines of the federating org get spire.test's bundle.
func TestSPIRE_FederationHTTPSSPIFFE(t *testing.T) {
	if testing.Short() {
		t.Skip("starts SPIRE's server (and agent): seconds of real time")
	}
	spiretest.Binaries(t)
	dir := e2e.ShortDir(t)
	bundlePort := freeTCPPort(t)
	srv := spireServer(t, fmt.Sprintf(`  federation {
    bundle_endpoint {
      address = "127.0.0.1"
      port = %d
      profile "https_spiffe" {}
    }
  }`, bundlePort))
	doc, err := srv.CLI(t.Context(), "bundle", "show", "-format", "spiffe")
	if err != nil {
		t.Fatal(err)
	}
	bundleFile := filepath.Join(dir, "spire.test.bundle.json")
	if err := os.WriteFile(bundleFile, doc, 0o600); err != nil {
		t.Fatal(err)
	}
	iss := e2e.StartIssuerOpts(t, func(c *config.Issuer) {
		c.SPIFFE.BundleRefreshHint = config.Duration{Duration: time.Second}
		c.SPIFFE.Federation = []config.SPIFFEFederation{{
			TrustDomain:       spireTD,
			BundleEndpointURL: fmt.Sprintf("https://127.0.0.1:%d", bundlePort),
			Profile:           config.ProfileHTTPSSPIFFE,
			EndpointSPIFFEID:  "spiffe://spire.test/spire/server",
			BundleFile:        bundleFile,
			Orgs:              []string{"dev"},
		}}
	}, func(o *issuer.Options) { o.FederationRefreshMin = time.Millisecond })
	e := setupWith(t, iss)
	spireDomain := spiffeid.RequireTrustDomainFromString(spireTD)
	src := x509Source(t, e.sock, spiffeid.RequireTrustDomainFromString(td), spireDomain)
	got, _ := src.GetX509BundleForTrustDomain(spireDomain)
	want, err := spiffebundle.Parse(spireDomain, doc)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Equal(want.X509Bundle()) {
		t.Fatal("the agent's spire.test bundle is not the SPIRE server's")
	}
	// The issuer has fetched from the endpoint (the bundle is the same as
	// bundle_file's, so only the status tells), and no fetch failed.
	wait.Eventually(t, 30*time.Second, func() bool {
		st := iss.Status().(map[string]any)["spiffe_federation"].(map[string]any)[spireTD].(map[string]any)
		return st["fetched"] == true && st["last_success"] != nil
	}, "a fetch from SPIRE's https_spiffe endpoint")
	if strings.Contains(iss.Logs(), "bundle fetch failed") {
		t.Errorf("fetches from SPIRE's endpoint failed:\n%s", iss.Logs())
	}
	// An issuer expecting another ID of the endpoint refuses SPIRE's.
	wrong := e2e.StartIssuerOpts(t, func(c *config.Issuer) {
		c.SPIFFE.Federation = []config.SPIFFEFederation{{
			TrustDomain: spireTD, BundleEndpointURL: fmt.Sprintf("https://127.0.0.1:%d", bundlePort),
			Profile: config.ProfileHTTPSSPIFFE, EndpointSPIFFEID: "spiffe://spire.test/not-the-server",
			BundleFile: bundleFile, Orgs: []string{"dev"},
		}}
	}, func(o *issuer.Options) { o.FederationRefreshMin = time.Millisecond })
	wait.Eventually(t, 30*time.Second, func() bool { return strings.Contains(wrong.Logs(), "unexpected ID") }, "SPIRE's endpoint refused for its ID")
	if st := wrong.Status().(map[string]any)["spiffe_federation"].(map[string]any)[spireTD].(map[string]any); st["fetched"] != false {
		t.Errorf("status after refused fetches: %v", st)
	}
}
