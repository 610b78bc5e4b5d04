package spiffetest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/wicket-sh/wicket/internal/sockettest"
)

// helperEnv makes the test binary a workload: a go-spiffe client of the
// Workload API at Socket, run as another uid by startAs / runAs.
const helperEnv = "WICKET_SPIFFETEST_HELPER"

type helperSpec struct {
	Mode      string // "fetch", "sds", "serve" or "dial"
	Socket    string
	Addr      string // dial: the server
	Authorize string // serve, dial: the only peer ID accepted
}

func TestMain(m *testing.M) {
	if spec := os.Getenv(helperEnv); spec != "" {
		os.Exit(runHelper(spec))
	}
	if sockettest.IsHelper() {
		sockettest.Main(m)
	}
	// The web PKI of the tests whose issuer serves TLS (the SPIRE
	// federation test): its CA is the process's only system root, set
	// before anything could load the system roots.
	var err error
	if webPKI, err = newTestPKI(); err != nil {
		fmt.Fprintln(os.Stderr, "test pki:", err)
		os.Exit(2)
	}
	os.Setenv("SSL_CERT_FILE", webPKI.caFile)
	os.Unsetenv("SSL_CERT_DIR")
	code := m.Run()
	os.RemoveAll(webPKI.dir)
	os.Exit(code)
}

func clientOpt(socket string) workloadapi.ClientOption {
	return workloadapi.WithAddr("unix://" + socket)
}

// runHelper is the workload side. It prints one JSON result line (dial,
// fetch) or the address it listens on and then one line per connection
// it accepted (serve).
func runHelper(raw string) int {
	var sp helperSpec
	if err := json.Unmarshal([]byte(raw), &sp); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out := json.NewEncoder(os.Stdout)
	switch sp.Mode {
	case "fetch":
		c, err := workloadapi.New(ctx, clientOpt(sp.Socket))
		if err != nil {
			out.Encode(map[string]string{"err": err.Error()})
			return 0
		}
		defer c.Close()
		svid, err := c.FetchX509SVID(ctx)
		if err != nil {
			out.Encode(map[string]string{"err": err.Error(), "code": status.Code(err).String()})
			return 0
		}
		out.Encode(map[string]string{"id": svid.ID.String()})
	case "sds":
		out.Encode(sdsFetch(ctx, sp.Socket))
	case "serve":
		id := spiffeid.RequireFromString(sp.Authorize)
		ln, err := spiffetls.ListenWithMode(ctx, "tcp", "127.0.0.1:0",
			spiffetls.MTLSServerWithSourceOptions(tlsconfig.AuthorizeID(id), workloadapi.WithClientOptions(clientOpt(sp.Socket))))
		if err != nil {
			fmt.Println("ERR", err)
			return 1
		}
		fmt.Println(ln.Addr().String())
		go func() { io.Copy(io.Discard, os.Stdin); os.Exit(0) }() // the test ends us by closing stdin
		for {
			conn, err := ln.Accept()
			if err != nil {
				return 1
			}
			go func() {
				defer conn.Close()
				conn.SetDeadline(time.Now().Add(10 * time.Second))
				line, err := bufio.NewReader(conn).ReadString('\n')
				peer, _ := spiffetls.PeerIDFromConn(conn)
				if err != nil {
					fmt.Println("refused", err)
					return
				}
				fmt.Fprintf(conn, "hello %s\n", peer)
				fmt.Println("served", peer, strings.TrimSpace(line))
			}()
		}
	case "dial":
		res := dial(ctx, sp.Socket, sp.Addr, sp.Authorize)
		out.Encode(res)
	}
	return 0
}

// dial connects to addr with mTLS, authorizing only the peer ID
// authorize, says hi and returns what the server answered.
func dial(ctx context.Context, socket, addr, authorize string) map[string]string {
	id := spiffeid.RequireFromString(authorize)
	conn, err := spiffetls.DialWithMode(ctx, "tcp", addr,
		spiffetls.MTLSClientWithSourceOptions(tlsconfig.AuthorizeID(id), workloadapi.WithClientOptions(clientOpt(socket))))
	if err != nil {
		return map[string]string{"err": err.Error()}
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintln(conn, "hi"); err != nil {
		return map[string]string{"err": err.Error()}
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return map[string]string{"err": err.Error()}
	}
	return map[string]string{"reply": strings.TrimSpace(line)}
}

func helperCmd(t *testing.T, uid, gid uint32, sp helperSpec) *exec.Cmd {
	t.Helper()
	sockettest.RequireRoot(t, "workloads of other uids get other SPIFFE IDs")
	exe, err := sockettest.HelperBinary()
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(sp)
	cmd := exec.Command(exe)
	cmd.Env = []string{helperEnv + "=" + string(raw)}
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{}}}
	return cmd
}

// runAs runs one helper to its end and decodes its JSON line.
func runAs(t *testing.T, uid, gid uint32, sp helperSpec) map[string]string {
	t.Helper()
	cmd := helperCmd(t, uid, gid, sp)
	var stderr sockettest.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helper as uid %d: %v\n%s", uid, err, stderr.String())
	}
	var res map[string]string
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("helper output %q: %v", out, err)
	}
	return res
}

// server is a serve helper running as another uid.
type server struct {
	addr  string
	lines chan string
}

func serveAs(t *testing.T, uid, gid uint32, socket, authorize string) *server {
	t.Helper()
	cmd := helperCmd(t, uid, gid, helperSpec{Mode: "serve", Socket: socket, Authorize: authorize})
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	var stderr sockettest.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("server helper stderr:\n%s", stderr.String())
		}
	})
	s := &server{lines: make(chan string, 16)}
	sc := bufio.NewScanner(stdout)
	first := make(chan string, 1)
	go func() {
		if sc.Scan() {
			first <- sc.Text()
		}
		close(first)
		for sc.Scan() {
			s.lines <- sc.Text()
		}
		close(s.lines)
	}()
	select {
	case a, ok := <-first:
		if !ok || strings.HasPrefix(a, "ERR") {
			t.Fatalf("server helper did not start: %q\n%s", a, stderr.String())
		}
		s.addr = a
	case <-time.After(30 * time.Second):
		t.Fatalf("server helper did not start in 30s\n%s", stderr.String())
	}
	return s
}

// sdsFetch asks the agent's SDS, as Envoy would (no security header), for
// all of the caller's Secrets and returns its SVID's ID or the error.
func sdsFetch(ctx context.Context, socket string) map[string]string {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return map[string]string{"err": err.Error()}
	}
	defer conn.Close()
	resp, err := secretv3.NewSecretDiscoveryServiceClient(conn).FetchSecrets(ctx, sdsRequest())
	if err != nil {
		return map[string]string{"err": err.Error(), "code": status.Code(err).String()}
	}
	for _, a := range resp.Resources {
		var s tlsv3.Secret
		if err := a.UnmarshalTo(&s); err != nil {
			return map[string]string{"err": err.Error()}
		}
		if tc := s.GetTlsCertificate(); tc != nil {
			svid, err := x509svid.Parse(tc.GetCertificateChain().GetInlineBytes(), tc.GetPrivateKey().GetInlineBytes())
			if err != nil {
				return map[string]string{"err": err.Error()}
			}
			return map[string]string{"id": svid.ID.String(), "name": s.Name}
		}
	}
	return map[string]string{"err": "no tls_certificate"}
}
