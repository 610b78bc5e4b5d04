package issuer

// The remote admin API: scoped admin tokens over HTTP(S), the same
// commands as the admin socket.

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/wicket-sh/wicket/api"
	"github.com/wicket-sh/wicket/internal/admintoken"
	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/macaroonwire"
)

// withRemote enables the remote admin API on a loopback port.
func withRemote(extra func(*config.Issuer)) func(*config.Issuer) {
	return func(c *config.Issuer) {
		c.RemoteAdmin.Listen = "127.0.0.1:0"
		if extra != nil {
			extra(c)
		}
	}
}

func (ti *testIssuer) remoteURL() string { return "http://" + ti.RemoteAdminAddr().String() }

// mintAdmin mints a root admin token on the admin socket.
func (ti *testIssuer) mintAdmin(t *testing.T, req api.AdminTokenRequest) api.AdminTokenMinted {
	t.Helper()
	b, _ := json.Marshal(req)
	r := ti.admin(t, "POST", "/v1/admin-tokens", string(b))
	if r.Status != 201 {
		t.Fatalf("mint admin token: %+v", r)
	}
	var out api.AdminTokenMinted
	if err := json.Unmarshal([]byte(r.Body), &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// remote calls the remote admin API with an admin token.
func (ti *testIssuer) remote(t *testing.T, method, path, tok, body string) resp {
	t.Helper()
	req, _ := http.NewRequest(method, ti.remoteURL()+path, strings.NewReader(body))
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return resp{res.StatusCode, res.Header, string(b)}
}

func attenuate(t *testing.T, tok string, s admintoken.Scope) string {
	t.Helper()
	out, err := admintoken.Attenuate(tok, s)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func wantCode(t *testing.T, what string, r resp, status int, code string) {
	t.Helper()
	var e api.ErrorReply
	json.Unmarshal([]byte(r.body), &e)
	if r.status != status || e.Code != code {
		t.Errorf("%s: %d %s, want %d %s", what, r.status, strings.TrimSpace(r.body), status, code)
	}
}

func spec(org, region, name string) string {
	b, _ := json.Marshal(api.MachineSpec{Name: name, Org: org, App: "web", Region: region, Image: "img:1"})
	return string(b)
}

// TestRemoteAdmin_Scoping is the issue's scoping test: a token attenuated
// to acme, fra and machine.add,token.mint registers and mints there and
// nowhere else; it cannot be widened; expired, revoked, tampered and
// out-of-network uses are 401.
func TestRemoteAdmin_Scoping(t *testing.T) {
	ti := startIssuer(t, shortDir(t), withRemote(nil))
	root := ti.mintAdmin(t, api.AdminTokenRequest{Label: "fleet-root", TTL: "720h"})
	fra := attenuate(t, root.Token, admintoken.Scope{Orgs: []string{"acme"}, Regions: []string{"fra"},
		Ops: []admintoken.Op{admintoken.OpMachineAdd, admintoken.OpTokenMint}, MaxMachineTTL: 24 * time.Hour})

	r := ti.remote(t, "POST", "/v1/machines", fra, spec("acme", "fra", "m1"))
	if r.status != 201 {
		t.Fatalf("add in scope: %d %s", r.status, r.body)
	}
	var added api.MachineAdded
	json.Unmarshal([]byte(r.body), &added)
	// An empty token_ttl is the default (720h) cut to the token's cap.
	if life := added.Token.ExpiresAt.Sub(ti.clock.Now()).Round(time.Hour); life != 24*time.Hour {
		t.Errorf("machine token minted at registration lives %v, want the 24h cap", life)
	}
	id := added.Machine.MachineID
	if r := ti.remote(t, "POST", "/v1/machines/"+id+"/tokens", fra, `{"ttl":"12h"}`); r.status != 201 {
		t.Errorf("mint in scope: %d %s", r.status, r.body)
	}
	// The machine's token works on the public API.
	if r := ti.call(t, "GET", "/v1/machines/self", added.Token.Token, ""); r.status != 200 {
		t.Errorf("machine token from the remote API: %d", r.status)
	}

	wantCode(t, "region ord", ti.remote(t, "POST", "/v1/machines", fra, spec("acme", "ord", "m2")), 403, api.CodeForbidden)
	wantCode(t, "org other", ti.remote(t, "POST", "/v1/machines", fra, spec("other", "fra", "m3")), 403, api.CodeForbidden)
	wantCode(t, "machine.remove", ti.remote(t, "DELETE", "/v1/machines/"+id, fra, ""), 403, api.CodeForbidden)
	wantCode(t, "ttl above cap", ti.remote(t, "POST", "/v1/machines/"+id+"/tokens", fra, `{"ttl":"48h"}`), 403, api.CodeForbidden)
	wantCode(t, "ttl above cap at add", ti.remote(t, "POST", "/v1/machines", fra, strings.Replace(spec("acme", "fra", "m4"), `"token_ttl":""`, `"token_ttl":"25h"`, 1)), 403, api.CodeForbidden)
	wantCode(t, "list without machine.get", ti.remote(t, "GET", "/v1/machines", fra, ""), 403, api.CodeForbidden)

	// Appending wider caveats narrows nothing more and widens nothing.
	wider := attenuate(t, fra, admintoken.Scope{Orgs: []string{"acme", "other"}, Regions: []string{"fra", "ord"}, Ops: admintoken.Ops(), MaxMachineTTL: 1000 * time.Hour})
	wantCode(t, "widened: region ord", ti.remote(t, "POST", "/v1/machines", wider, spec("acme", "ord", "m5")), 403, api.CodeForbidden)
	wantCode(t, "widened: remove", ti.remote(t, "DELETE", "/v1/machines/"+id, wider, ""), 403, api.CodeForbidden)
	// Removing caveats (re-encoding the token without them) or changing
	// any byte breaks the signature: 401.
	m, err := macaroonwire.Decode(fra)
	if err != nil {
		t.Fatal(err)
	}
	m.UnsafeCaveats.Caveats = m.UnsafeCaveats.Caveats[:1] // the root's window only
	stripped, _ := m.String()
	wantCode(t, "caveats removed", ti.remote(t, "POST", "/v1/machines", stripped, spec("acme", "ord", "m6")), 401, api.CodeUnauthorized)
	wantCode(t, "tampered", ti.remote(t, "POST", "/v1/machines", fra[:len(fra)-6]+"AAAA==", spec("acme", "fra", "m7")), 401, api.CodeUnauthorized)
	wantCode(t, "no token", ti.remote(t, "GET", "/v1/status", "", ""), 401, api.CodeUnauthorized)
	// A machine token is not an admin token.
	wantCode(t, "machine token", ti.remote(t, "GET", "/v1/status", added.Token.Token, ""), 401, api.CodeUnauthorized)

	// Used from outside its networks: 401 (the test calls from 127.0.0.1).
	elsewhere := attenuate(t, fra, admintoken.Scope{SourceAddrs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")}})
	wantCode(t, "outside source cidrs", ti.remote(t, "GET", "/v1/status", elsewhere, ""), 401, api.CodeUnauthorized)
	here := attenuate(t, fra, admintoken.Scope{SourceAddrs: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	if r := ti.remote(t, "GET", "/v1/status", here, ""); r.status != 200 {
		t.Errorf("inside source cidrs: %d %s", r.status, r.body)
	}

	// Expired: a copy with a short window, once the clock passes it.
	short := attenuate(t, fra, admintoken.Scope{NotAfter: ti.clock.Now().Add(time.Hour)})
	if r := ti.remote(t, "GET", "/v1/status", short, ""); r.status != 200 {
		t.Fatalf("short copy before expiry: %d", r.status)
	}
	ti.clock.Advance(2 * time.Hour)
	wantCode(t, "expired copy", ti.remote(t, "GET", "/v1/status", short, ""), 401, api.CodeUnauthorized)
	if r := ti.remote(t, "GET", "/v1/status", fra, ""); r.status != 200 {
		t.Errorf("the token the expired copy was made from: %d", r.status)
	}
	ti.clock.Advance(1000 * time.Hour)
	wantCode(t, "expired root", ti.remote(t, "GET", "/v1/status", root.Token, ""), 401, api.CodeUnauthorized)
	ti.clock.Advance(-1002 * time.Hour)

	// Revoked by id on the admin socket: the root and every copy, at once.
	rv := ti.admin(t, "POST", "/v1/admin-tokens/revocations", `{"token_id":"`+root.TokenID+`","reason":"host decommissioned"}`)
	if rv.Status != 200 {
		t.Fatalf("revoke admin token: %+v", rv)
	}
	for name, tok := range map[string]string{"root": root.Token, "copy": fra, "copy of copy": here} {
		wantCode(t, "revoked "+name, ti.remote(t, "GET", "/v1/status", tok, ""), 401, api.CodeUnauthorized)
	}
	var list api.AdminTokenList
	json.Unmarshal([]byte(ti.admin(t, "GET", "/v1/admin-tokens", "").Body), &list)
	if len(list.AdminTokens) != 1 || list.AdminTokens[0].TokenID != root.TokenID || !list.AdminTokens[0].Revoked || list.AdminTokens[0].Label != "fleet-root" {
		t.Errorf("admin token list after revocation: %+v", list)
	}
	if strings.Contains(ti.logs.String(), root.Token) || strings.Contains(ti.logs.String(), fra) {
		t.Error("an admin token reached the log")
	}
}

// TestRemoteAdmin_OutOfScopeInvisible: a machine outside the token's scope
// is not listed, and get, update, remove and mint answer 404 for it.
func TestRemoteAdmin_OutOfScopeInvisible(t *testing.T) {
	ti := startIssuer(t, shortDir(t), withRemote(nil))
	root := ti.mintAdmin(t, api.AdminTokenRequest{Label: "root"})
	all := attenuate(t, root.Token, admintoken.Scope{Orgs: []string{"acme"}, Regions: []string{"fra"}})
	ord, _ := ti.addMachine(t, api.MachineSpec{Name: "o1", Org: "acme", App: "web", Region: "ord"})
	other, _ := ti.addMachine(t, api.MachineSpec{Name: "x1", Org: "other", App: "web", Region: "fra"})
	mine, _ := ti.addMachine(t, api.MachineSpec{Name: "f1", Org: "acme", App: "web", Region: "fra"})

	var list api.MachineList
	json.Unmarshal([]byte(ti.remote(t, "GET", "/v1/machines", all, "").body), &list)
	if len(list.Machines) != 1 || list.Machines[0].MachineID != mine.MachineID {
		t.Errorf("list = %+v, want only %s", list.Machines, mine.MachineID)
	}
	for _, m := range []*api.MachineView{ord, other} {
		for _, ref := range []string{m.MachineID, m.Org + "/" + m.App + "/" + m.MachineName} {
			p := "/v1/machines/" + strings.ReplaceAll(ref, "/", "%2F")
			wantCode(t, "get "+ref, ti.remote(t, "GET", p, all, ""), 404, api.CodeNotFound)
			wantCode(t, "update "+ref, ti.remote(t, "PATCH", p, all, `{"image":"img:2"}`), 404, api.CodeNotFound)
			wantCode(t, "mint "+ref, ti.remote(t, "POST", p+"/tokens", all, `{}`), 404, api.CodeNotFound)
			wantCode(t, "remove "+ref, ti.remote(t, "DELETE", p, all, ""), 404, api.CodeNotFound)
		}
	}
	// Moving one's own machine out of scope is refused, and it stays.
	wantCode(t, "move to ord", ti.remote(t, "PATCH", "/v1/machines/"+mine.MachineID, all, `{"region":"ord"}`), 403, api.CodeForbidden)
	if r := ti.remote(t, "GET", "/v1/machines/acme%2Fweb%2Ff1", all, ""); r.status != 200 || !strings.Contains(r.body, `"region": "fra"`) {
		t.Errorf("after a refused move: %d %s", r.status, r.body)
	}
	// Revoking a machine token needs the token, and only one's own.
	_, otherTok := ti.addMachine(t, api.MachineSpec{Name: "x2", Org: "other", App: "web", Region: "fra"})
	mt := ti.mintToken(t, mine.MachineID)
	wantCode(t, "revoke by id only", ti.remote(t, "POST", "/v1/revocations", all, `{"token_id":"`+mt.TokenID+`"}`), 400, api.CodeBadRequest)
	b, _ := json.Marshal(api.RevokeRequest{Token: otherTok})
	wantCode(t, "revoke another org's token", ti.remote(t, "POST", "/v1/revocations", all, string(b)), 404, api.CodeNotFound)
	if r := ti.call(t, "GET", "/v1/machines/self", otherTok, ""); r.status != 200 {
		t.Errorf("the other org's token after a refused revocation: %d", r.status)
	}
	b, _ = json.Marshal(api.RevokeRequest{Token: mt.Token, Reason: "rotated"})
	if r := ti.remote(t, "POST", "/v1/revocations", all, string(b)); r.status != 200 || !strings.Contains(r.body, mt.TokenID) {
		t.Errorf("revoke own token: %d %s", r.status, r.body)
	}
	if r := ti.call(t, "GET", "/v1/machines/self", mt.Token, ""); r.status != 401 {
		t.Errorf("own token after revocation: %d, want 401", r.status)
	}
	// Status names the token and its effective scope.
	var st api.RemoteStatus
	json.Unmarshal([]byte(ti.remote(t, "GET", "/v1/status", all, "").body), &st)
	if st.AdminTokenID != root.TokenID || strings.Join(st.Scope.Orgs, ",") != "acme" || st.Scope.Ops != nil {
		t.Errorf("status = %+v", st)
	}
}

// TestRemoteAdmin_Limits: bodies over the limit are 413, a token over its
// rate 429 with Retry-After (its copies share the bucket), and no error
// echoes the request.
func TestRemoteAdmin_Limits(t *testing.T) {
	ti := startIssuer(t, shortDir(t), withRemote(func(c *config.Issuer) {
		c.RemoteAdmin.MaxBodyBytes = 2048
		c.RemoteAdmin.Rate, c.RemoteAdmin.Burst = 0.01, 8
	}))
	root := ti.mintAdmin(t, api.AdminTokenRequest{Label: "limits"})
	// 3 kB: over the limit, and one write of the client's (a request in
	// two can meet the connection closed after the 413, and the client
	// then reports the broken pipe, not the reply).
	wantCode(t, "body over limit", ti.remote(t, "POST", "/v1/machines", root.Token, `{"name":"`+strings.Repeat("x", 3000)+`"}`), 413, api.CodeBodyTooLarge)

	marker := "zq-marker-7f3a"
	for _, c := range []struct{ method, path, body string }{
		{"GET", "/v1/" + marker, ""},
		{"POST", "/v1/machines", `{"name":"` + marker + `","org":"` + marker + `"}`},
		{"POST", "/v1/machines", `{"` + marker + `":1}`},
		{"PATCH", "/v1/machines/" + marker, `{}`},
		{"DELETE", "/v1/machines", ""},
	} {
		r := ti.remote(t, c.method, c.path, root.Token, c.body)
		if r.status < 400 || strings.Contains(r.body, marker) {
			t.Errorf("%s %s: %d %s: want an error that does not echo the input", c.method, c.path, r.status, r.body)
		}
	}
	copy1 := attenuate(t, root.Token, admintoken.Scope{Orgs: []string{"acme"}})
	var limited resp
	for range 10 {
		if limited = ti.remote(t, "GET", "/v1/status", copy1, ""); limited.status == 429 {
			break
		}
	}
	wantCode(t, "over the rate", limited, 429, api.CodeRateLimited)
	if ra := limited.header.Get("Retry-After"); ra == "" || ra == "0" {
		t.Errorf("429 without a Retry-After: %q", ra)
	}
	// Another token has its own bucket.
	other := ti.mintAdmin(t, api.AdminTokenRequest{Label: "other"})
	if r := ti.remote(t, "GET", "/v1/status", other.Token, ""); r.status != 200 {
		t.Errorf("another token: %d", r.status)
	}
	if m := ti.admin(t, "GET", "/metrics", "").Body; !strings.Contains(m, "wicket_remote_admin_rate_limited_total 1\n") {
		t.Errorf("metrics do not count the 429:\n%s", m)
	}
	if st := ti.admin(t, "GET", "/v1/status", "").Body; !strings.Contains(st, `"rate_limited": 1`) {
		t.Errorf("status does not count the 429: %s", st)
	}
	logs := ti.logs.String()
	if !regexp.MustCompile(`remote admin request" .*admin_token_id=` + root.TokenID + ` outcome=rate_limited status=429`).MatchString(logs) {
		t.Errorf("no audit line for the rate-limited call:\n%s", logs)
	}
	if !regexp.MustCompile(`remote admin request" .*admin_token_id=` + root.TokenID + ` outcome=bad_body status=413`).MatchString(logs) {
		t.Errorf("no audit line for the refused body")
	}
	if strings.Contains(logs, root.Token) || strings.Contains(logs, copy1) {
		t.Error("an admin token reached the log")
	}
}

// TestRemoteAdmin_PlaintextBeyondLoopbackRefused: without TLS the remote
// API listens on loopback only, unless allow_plaintext says TLS ends in
// front of the issuer.
func TestRemoteAdmin_PlaintextBeyondLoopbackRefused(t *testing.T) {
	dir := shortDir(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, err = Start(context.Background(), StartOptions{Init: true, Options: Options{Listener: ln, Overrides: []config.IssuerOverride{
		issuerConfig(dir, func(c *config.Issuer) { c.RemoteAdmin.Listen = "192.0.2.10:8651" }),
	}}})
	if err == nil || !strings.Contains(err.Error(), "remote_admin.listen") || !strings.Contains(err.Error(), "not loopback") {
		t.Fatalf("Start with a plaintext remote admin API beyond loopback: %v, want refused", err)
	}
}

// TestRemoteAdmin_TLSAndClientCertificate: with tls_cert the API speaks
// only TLS; with client_ca it also requires a client certificate.
func TestRemoteAdmin_TLSAndClientCertificate(t *testing.T) {
	dir := shortDir(t)
	pki := newTestPKI(t, dir)
	ti := startIssuer(t, dir, withRemote(func(c *config.Issuer) {
		c.RemoteAdmin.TLSCert, c.RemoteAdmin.TLSKey, c.RemoteAdmin.ClientCA = pki.serverCert, pki.serverKey, pki.caFile
	}))
	root := ti.mintAdmin(t, api.AdminTokenRequest{Label: "tls"})
	get := func(cfg *tls.Config, scheme string) (int, error) {
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}, Timeout: 10 * time.Second}
		req, _ := http.NewRequest("GET", scheme+"://"+ti.RemoteAdminAddr().String()+"/v1/status", nil)
		req.Header.Set("Authorization", "Bearer "+root.Token)
		res, err := c.Do(req)
		if err != nil {
			return 0, err
		}
		res.Body.Close()
		return res.StatusCode, nil
	}
	if st, err := get(&tls.Config{RootCAs: pki.pool, Certificates: []tls.Certificate{pki.client}}, "https"); err != nil || st != 200 {
		t.Fatalf("TLS with a client certificate: %d %v", st, err)
	}
	if st, err := get(&tls.Config{RootCAs: pki.pool}, "https"); err == nil {
		t.Errorf("TLS without a client certificate answered %d, want a failed handshake", st)
	}
	if st, err := get(nil, "http"); err == nil && st == 200 {
		t.Error("plaintext HTTP answered 200 on the TLS listener")
	}
}

type testPKI struct {
	caFile, serverCert, serverKey string
	pool                          *x509.CertPool
	client                        tls.Certificate
}

// newTestPKI writes a CA, a server certificate for 127.0.0.1 and returns
// a client certificate, all made now (no key is committed).
func newTestPKI(t *testing.T, dir string) *testPKI {
	t.Helper()
	key := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	caKey := key()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test ca"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	issue := func(n int64, usage x509.ExtKeyUsage, ips ...net.IP) ([]byte, *ecdsa.PrivateKey) {
		k := key()
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(n), Subject: pkix.Name{CommonName: fmt.Sprint("leaf ", n)}, NotBefore: time.Now().Add(-time.Hour),
			NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{usage}, IPAddresses: ips, KeyUsage: x509.KeyUsageDigitalSignature}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return der, k
	}
	write := func(name, typ string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	p := &testPKI{pool: x509.NewCertPool()}
	p.pool.AddCert(ca)
	p.caFile = write("ca.pem", "CERTIFICATE", caDER)
	sDER, sKey := issue(2, x509.ExtKeyUsageServerAuth, net.ParseIP("127.0.0.1"))
	sk, _ := x509.MarshalECPrivateKey(sKey)
	p.serverCert, p.serverKey = write("server.pem", "CERTIFICATE", sDER), write("server-key.pem", "EC PRIVATE KEY", sk)
	cDER, cKey := issue(3, x509.ExtKeyUsageClientAuth)
	p.client = tls.Certificate{Certificate: [][]byte{cDER}, PrivateKey: cKey}
	return p
}

// TestAdminTokens_SealedAtRest: an admin token's root key, label and
// expiry are sealed in the state; the token itself is stored nowhere.
func TestAdminTokens_SealedAtRest(t *testing.T) {
	dir := shortDir(t)
	ti := startIssuer(t, dir, withRemote(nil))
	label := "label-zq81-sealed"
	tok := ti.mintAdmin(t, api.AdminTokenRequest{Label: label})
	ti.stop()
	db, err := os.ReadFile(filepath.Join(dir, "state", "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	raw := strings.TrimPrefix(tok.Token, "fm2_")
	for what, s := range map[string]string{"label": label, "token": raw[len(raw)-40:]} {
		if strings.Contains(string(db), s) {
			t.Errorf("the admin token's %s is in the state file in clear", what)
		}
	}
	// After a restart (keys unsealed again) the token still works.
	ti = startIssuer(t, dir, withRemote(nil))
	if r := ti.remote(t, "GET", "/v1/status", tok.Token, ""); r.status != 200 {
		t.Errorf("admin token after restart: %d", r.status)
	}
}

// bodyTimeout sends the head of a request and part of its body, then
// waits for the reply: the status line's code.
func bodyTimeout(t *testing.T, addr, tok string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	fmt.Fprintf(c, "POST /v1/machines HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: 100\r\n\r\n{", tok)
	line, _ := bufio.NewReader(c).ReadString('\n')
	f := strings.Fields(line)
	if len(f) < 2 {
		return line
	}
	return f[1]
}

// TestRemoteAdmin_SameResultsAsSocket runs one sequence of machine and
// token commands through the admin socket and through the remote admin
// API (with an unscoped admin token), each against a fresh issuer: the
// statuses and bodies are identical once ids, tokens and times are masked.
func TestRemoteAdmin_SameResultsAsSocket(t *testing.T) {
	steps := []struct{ method, path, body string }{
		{"POST", "/v1/machines", spec("acme", "fra", "m1")},
		{"POST", "/v1/machines", spec("acme", "fra", "m1")}, // exists
		{"POST", "/v1/machines", `{"name":`},                // not JSON
		{"POST", "/v1/machines", `{"name":"m2","org":"acme","app":"web","token_ttl":"1s"}`},
		{"GET", "/v1/machines", ""},
		{"GET", "/v1/machines/{id}", ""},
		{"GET", "/v1/machines/acme%2Fweb%2Fm1", ""},
		{"GET", "/v1/machines/nope", ""},
		{"PATCH", "/v1/machines/{id}", `{"image":"img:2","set_tags":{"a":"b"}}`},
		{"PATCH", "/v1/machines/{id}", `{"image":"img:3","expect_version":99}`},
		{"PATCH", "/v1/machines/{id}", `{"private_ip":"not-an-ip"}`},
		{"POST", "/v1/machines/{id}/tokens", `{"ttl":"2h"}`},
		{"POST", "/v1/machines/{id}/tokens", `{"ttl":"1s"}`},
		{"POST", "/v1/revocations", `{"token":"{tok}","reason":"rotated"}`},
		{"POST", "/v1/revocations", `{"token":"fm2_AAAA"}`},
		{"PUT", "/v1/machines/{id}", ""},
		{"DELETE", "/v1/machines/{id}", ""},
		{"DELETE", "/v1/machines/{id}", ""},
		{"GET", "/v1/machines", ""},
	}
	mask := []struct {
		re   *regexp.Regexp
		with string
	}{
		{regexp.MustCompile(`fm2_[A-Za-z0-9+/=]+`), "<token>"},
		{regexp.MustCompile(`\b[0-9a-f]{32}\b`), "<token-id>"},
		{regexp.MustCompile(`\b[0-9a-f]{16}\b`), "<machine-id>"},
		{regexp.MustCompile(`\d{4}-\d\d-\d\dT[0-9:.]+Z`), "<time>"},
	}
	run := func(t *testing.T, do func(method, path, body string) (int, string)) []string {
		var out []string
		var id, tok string
		for _, st := range steps {
			p := strings.ReplaceAll(st.path, "{id}", id)
			b := strings.ReplaceAll(st.body, "{tok}", tok)
			status, body := do(st.method, p, b)
			if id == "" && status == 201 {
				var a api.MachineAdded
				json.Unmarshal([]byte(body), &a)
				id = a.Machine.MachineID
			}
			if strings.HasSuffix(p, "/tokens") && status == 201 {
				var m api.MintedToken
				json.Unmarshal([]byte(body), &m)
				tok = m.Token
			}
			for _, m := range mask {
				body = m.re.ReplaceAllString(body, m.with)
			}
			out = append(out, fmt.Sprintf("%s %s → %d %s", st.method, st.path, status, body))
		}
		return out
	}
	sock := startIssuer(t, shortDir(t), nil)
	viaSocket := run(t, func(method, path, body string) (int, string) {
		r := sock.admin(t, method, path, body)
		return r.Status, r.Body
	})
	rem := startIssuer(t, shortDir(t), withRemote(nil))
	root := rem.mintAdmin(t, api.AdminTokenRequest{Label: "same"}).Token
	viaRemote := run(t, func(method, path, body string) (int, string) {
		r := rem.remote(t, method, path, root, body)
		return r.status, r.body
	})
	for i := range steps {
		if viaSocket[i] != viaRemote[i] {
			t.Errorf("step %d differs:\n socket: %s\n remote: %s", i, viaSocket[i], viaRemote[i])
		}
	}
	if testing.Verbose() {
		t.Logf("sequence:\n%s", strings.Join(viaSocket, "\n"))
	}
}
