package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeIssuerFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "issuer.toml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadIssuer_EtcdState(t *testing.T) {
	c, err := LoadIssuer(writeIssuerFile(t, `
[state]
backend = "etcd"
endpoints = ["https://10.0.0.1:2379", "https://10.0.0.2:2379"]
tls_ca = "/etc/wicket/ca.pem"
tls_cert = "/etc/wicket/c.pem"
tls_key = "/etc/wicket/k.pem"
request_timeout = "2s"
`))
	if err != nil {
		t.Fatal(err)
	}
	st := c.State
	if len(st.Endpoints) != 2 || st.TLSCA != "/etc/wicket/ca.pem" || st.RequestTimeout.Duration != 2*time.Second {
		t.Errorf("state = %+v", st)
	}
	// Unset keys keep their defaults.
	if st.Prefix != "/wicket/" || st.CacheGrace.Duration != 5*time.Minute || st.DialTimeout.Duration != 5*time.Second {
		t.Errorf("defaults not applied: %+v", st)
	}
}

func TestValidate_EtcdState(t *testing.T) {
	tests := []struct {
		name    string
		set     func(*State)
		wantErr string // "" = valid
	}{
		{"loopback http", func(s *State) {}, ""},
		{"https with client cert", func(s *State) {
			s.Endpoints = []string{"https://10.0.0.1:2379"}
			s.TLSCert, s.TLSKey = "/c.pem", "/k.pem"
		}, ""},
		{"no endpoints", func(s *State) { s.Endpoints = nil }, "state.endpoints"},
		{"not a URL", func(s *State) { s.Endpoints = []string{"10.0.0.1:2379"} }, "want http(s)://host:port"},
		{"URL with a path", func(s *State) { s.Endpoints = []string{"https://e:2379/v3"} }, "want http(s)://host:port"},
		// S-rule: state in clear text over a real network only when asked.
		{"plaintext beyond loopback refused", func(s *State) { s.Endpoints = []string{"http://10.0.0.1:2379"} }, "not loopback"},
		{"plaintext beyond loopback allowed", func(s *State) {
			s.Endpoints = []string{"http://10.0.0.1:2379"}
			s.AllowPlaintext = true
		}, ""},
		{"cert without key", func(s *State) { s.TLSCert = "/c.pem" }, "tls_cert and tls_key"},
		{"empty prefix", func(s *State) { s.Prefix = "" }, "state.prefix"},
		{"zero request timeout", func(s *State) { s.RequestTimeout = Duration{} }, "request_timeout"},
		{"negative grace", func(s *State) { s.CacheGrace = Duration{-time.Second} }, "cache_grace"},
		{"zero grace fails closed", func(s *State) { s.CacheGrace = Duration{} }, ""},
		{"seal key from env, no dir", func(s *State) { s.Dir, s.SealKeyEnv = "", "WICKET_SEAL" }, ""},
		{"no dir and no seal key", func(s *State) { s.Dir = "" }, "seal_key_file"},
		{"relative seal key file", func(s *State) { s.SealKeyFile = "seal.key" }, "seal_key_file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultIssuer()
			c.State.Backend = "etcd"
			c.State.Endpoints = []string{"http://127.0.0.1:2379", "http://localhost:2379"}
			tt.set(&c.State)
			err := c.Validate()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("Validate: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("Validate err = %v, want one mentioning %q", err, tt.wantErr)
			}
		})
	}
}

func TestValidate_UnknownBackend(t *testing.T) {
	c := DefaultIssuer()
	c.State.Backend = "consul"
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), `"etcd"`) {
		t.Errorf("Validate err = %v", err)
	}
}

// TestClusterDoc_TOML: every issuer.toml snippet in docs/cluster.md is a
// valid config, so the guide cannot drift from the keys.
func TestClusterDoc_TOML(t *testing.T) {
	doc, err := os.ReadFile("../../docs/cluster.md")
	if err != nil {
		t.Fatal(err)
	}
	var blocks []string
	var cur []string
	in := false
	for _, l := range strings.Split(string(doc), "\n") {
		switch {
		case !in && strings.TrimSpace(l) == "```toml":
			in, cur = true, nil
		case in && strings.TrimSpace(l) == "```":
			in = false
			blocks = append(blocks, strings.Join(cur, "\n")+"\n")
		case in:
			cur = append(cur, l)
		}
	}
	if len(blocks) == 0 {
		t.Fatal("no toml snippet in docs/cluster.md")
	}
	for i, b := range blocks {
		c, err := LoadIssuer(writeIssuerFile(t, b))
		if err != nil {
			t.Errorf("snippet %d:\n%s\n%v", i, b, err)
			continue
		}
		if c.State.Backend != "etcd" || len(c.State.Endpoints) != 3 {
			t.Errorf("snippet %d is not a three-member etcd config: %+v", i, c.State)
		}
	}
}

func TestValidate_RemoteAdmin(t *testing.T) {
	tests := []struct {
		name    string
		set     func(*RemoteAdmin)
		wantErr string // "" = valid
	}{
		{"disabled", func(r *RemoteAdmin) { r.Listen = "" }, ""},
		{"loopback plaintext", func(r *RemoteAdmin) {}, ""},
		{"tls beyond loopback", func(r *RemoteAdmin) { r.Listen, r.TLSCert, r.TLSKey = "10.0.0.5:8651", "/c.pem", "/k.pem" }, ""},
		{"client ca", func(r *RemoteAdmin) {
			r.Listen, r.TLSCert, r.TLSKey, r.ClientCA = "10.0.0.5:8651", "/c.pem", "/k.pem", "/ca.pem"
		}, ""},
		// Admin tokens in clear text over a real network only when asked.
		{"plaintext beyond loopback refused", func(r *RemoteAdmin) { r.Listen = "10.0.0.5:8651" }, "not loopback"},
		{"plaintext on every address refused", func(r *RemoteAdmin) { r.Listen = ":8651" }, "not loopback"},
		{"plaintext beyond loopback allowed", func(r *RemoteAdmin) { r.Listen, r.AllowPlaintext = "10.0.0.5:8651", true }, ""},
		{"client ca without tls", func(r *RemoteAdmin) { r.ClientCA = "/ca.pem" }, "client_ca"},
		{"cert without key", func(r *RemoteAdmin) { r.TLSCert = "/c.pem" }, "tls_cert and tls_key"},
		{"bad listen", func(r *RemoteAdmin) { r.Listen = "8651" }, "host:port"},
		{"zero rate", func(r *RemoteAdmin) { r.Rate = 0 }, "rate"},
		{"huge body", func(r *RemoteAdmin) { r.MaxBodyBytes = 16 << 20 }, "max_body_bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultIssuer()
			c.RemoteAdmin.Listen = "127.0.0.1:8651"
			tt.set(&c.RemoteAdmin)
			err := c.Validate()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("Validate: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("Validate err = %v, want one mentioning %q", err, tt.wantErr)
			}
		})
	}
}

// An explicit trust domain that the template gives another org (one not
// listed itself) is refused: the two orgs would share a trust domain.
func TestValidate_TrustDomainEqualsAnotherOrgsTemplated(t *testing.T) {
	for _, tc := range []struct {
		name     string
		template string
		explicit map[string]string
		bad      string // in the error; "" when valid
	}{
		{"another org's templated name", "", map[string]string{"acme": "beta.wicket.internal"}, `"beta"`},
		{"custom template", "td-{org}.example", map[string]string{"acme": "td-beta.example"}, `"beta"`},
		{"its own templated name", "", map[string]string{"acme": "acme.wicket.internal"}, ""},
		{"the other org is listed too", "", map[string]string{"acme": "beta.wicket.internal", "beta": "b.example"}, ""},
		{"no org can have that name", "", map[string]string{"acme": "a.b.wicket.internal"}, ""},
		{"unrelated name", "", map[string]string{"acme": "acme.example"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultIssuer()
			if tc.template != "" {
				c.SPIFFE.TrustDomain = tc.template
			}
			c.SPIFFE.TrustDomains = tc.explicit
			err := c.Validate()
			switch {
			case tc.bad == "" && err != nil && strings.Contains(err.Error(), "spiffe.trust_domains"):
				t.Errorf("Validate = %v, want no trust_domains error", err)
			case tc.bad != "" && (err == nil || !strings.Contains(err.Error(), tc.bad) || !strings.Contains(err.Error(), "spiffe.trust_domains.acme")):
				t.Errorf("Validate = %v, want spiffe.trust_domains.acme naming %s", err, tc.bad)
			}
		})
	}
}
func TestLoadIssuer_SPIFFEFederation(t *testing.T) {
	c, err := LoadIssuer(writeIssuerFile(t, `
[[spiffe.federation]]
trust_domain = "spire.example"
bundle_endpoint_url = "https://spire.example:8443/"
profile = "https_web"
ca_file = "/etc/wicket/spire-ca.pem"
orgs = ["acme"]

[[spiffe.federation]]
trust_domain = "other.example"
bundle_endpoint_url = "https://10.0.0.9:8443"
profile = "https_spiffe"
endpoint_spiffe_id = "spiffe://other.example/spire/server"
bundle_file = "/etc/wicket/other.bundle.json"
orgs = ["acme", "dev"]
`))
	if err != nil {
		t.Fatal(err)
	}
	f := c.SPIFFE.Federation
	if len(f) != 2 || f[0].TrustDomain != "spire.example" || f[0].CAFile != "/etc/wicket/spire-ca.pem" ||
		f[1].EndpointSPIFFEID != "spiffe://other.example/spire/server" || len(f[1].Orgs) != 2 {
		t.Errorf("federation = %+v", f)
	}
	// Static, like all of [spiffe]: a reload reports it and keeps the
	// running list.
	if got := DynamicFields(c); slicesContainsPrefix(got, "spiffe") {
		t.Errorf("dynamic fields include spiffe: %v", got)
	}
	next := DefaultIssuer()
	if got := RestartRequired(c, next); !slicesContainsPrefix(got, "spiffe.federation") {
		t.Errorf("RestartRequired = %v, want spiffe.federation", got)
	}
	KeepStatic(next, c)
	if len(next.SPIFFE.Federation) != 2 {
		t.Errorf("KeepStatic dropped the running federation: %+v", next.SPIFFE.Federation)
	}
}

func slicesContainsPrefix(list []string, prefix string) bool {
	for _, s := range list {
		if strings.HasPrefix(s, prefix) {
			return true
		}
	}
	return false
}

func TestValidate_SPIFFEFederation(t *testing.T) {
	web := func() SPIFFEFederation {
		return SPIFFEFederation{TrustDomain: "spire.example", BundleEndpointURL: "https://spire.example/bundle", Profile: ProfileHTTPSWeb, Orgs: []string{"acme"}}
	}
	spf := func() SPIFFEFederation {
		return SPIFFEFederation{TrustDomain: "spire.example", BundleEndpointURL: "https://spire.example/bundle", Profile: ProfileHTTPSSPIFFE,
			EndpointSPIFFEID: "spiffe://spire.example/spire/server", BundleFile: "/etc/b.json", Orgs: []string{"acme"}}
	}
	tests := []struct {
		name    string
		set     func(*SPIFFE)
		wantErr string // "" = valid
	}{
		{"https_web", func(s *SPIFFE) { s.Federation = []SPIFFEFederation{web()} }, ""},
		{"https_web with ca_file", func(s *SPIFFE) { f := web(); f.CAFile = "/ca.pem"; s.Federation = []SPIFFEFederation{f} }, ""},
		{"https_spiffe", func(s *SPIFFE) { s.Federation = []SPIFFEFederation{spf()} }, ""},
		{"two domains", func(s *SPIFFE) {
			a, b := web(), spf()
			b.TrustDomain, b.EndpointSPIFFEID = "b.example", "spiffe://b.example/x"
			s.Federation = []SPIFFEFederation{a, b}
		}, ""},
		{"no trust domain", func(s *SPIFFE) { f := web(); f.TrustDomain = ""; s.Federation = []SPIFFEFederation{f} }, "trust_domain is required"},
		{"trust domain with scheme", func(s *SPIFFE) {
			f := web()
			f.TrustDomain = "spiffe://spire.example"
			s.Federation = []SPIFFEFederation{f}
		}, "want a trust domain name"},
		{"trust domain uppercase", func(s *SPIFFE) { f := web(); f.TrustDomain = "Spire.example"; s.Federation = []SPIFFEFederation{f} }, "want a trust domain name"},
		{"duplicate", func(s *SPIFFE) { s.Federation = []SPIFFEFederation{web(), web()} }, "listed twice"},
		{"an org's explicit domain", func(s *SPIFFE) {
			s.TrustDomains = map[string]string{"dev": "spire.example"}
			s.Federation = []SPIFFEFederation{web()}
		}, "is org dev's own"},
		{"a templated wicket domain", func(s *SPIFFE) {
			f := web()
			f.TrustDomain = "other.wicket.internal"
			s.Federation = []SPIFFEFederation{f}
		}, `names org "other"'s`},
		{"http endpoint", func(s *SPIFFE) {
			f := web()
			f.BundleEndpointURL = "http://spire.example/b"
			s.Federation = []SPIFFEFederation{f}
		}, "want an https URL"},
		{"no endpoint", func(s *SPIFFE) { f := web(); f.BundleEndpointURL = ""; s.Federation = []SPIFFEFederation{f} }, "bundle_endpoint_url is required"},
		{"endpoint with user info", func(s *SPIFFE) {
			f := web()
			f.BundleEndpointURL = "https://u:p@spire.example/"
			s.Federation = []SPIFFEFederation{f}
		}, "no user info"},
		{"no profile", func(s *SPIFFE) { f := web(); f.Profile = ""; s.Federation = []SPIFFEFederation{f} }, "profile is required"},
		{"unknown profile", func(s *SPIFFE) { f := web(); f.Profile = "https"; s.Federation = []SPIFFEFederation{f} }, `profile "https"`},
		{"web with endpoint id", func(s *SPIFFE) {
			f := web()
			f.EndpointSPIFFEID = "spiffe://spire.example/s"
			s.Federation = []SPIFFEFederation{f}
		}, "for profile \"https_spiffe\" only"},
		{"web relative ca_file", func(s *SPIFFE) { f := web(); f.CAFile = "ca.pem"; s.Federation = []SPIFFEFederation{f} }, "ca_file"},
		{"spiffe with ca_file", func(s *SPIFFE) { f := spf(); f.CAFile = "/ca.pem"; s.Federation = []SPIFFEFederation{f} }, "ca_file is for profile"},
		{"spiffe without endpoint id", func(s *SPIFFE) { f := spf(); f.EndpointSPIFFEID = ""; s.Federation = []SPIFFEFederation{f} }, "endpoint_spiffe_id"},
		{"spiffe endpoint id of another domain", func(s *SPIFFE) {
			f := spf()
			f.EndpointSPIFFEID = "spiffe://x.example/s"
			s.Federation = []SPIFFEFederation{f}
		}, "endpoint_spiffe_id"},
		{"spiffe without bundle file", func(s *SPIFFE) { f := spf(); f.BundleFile = ""; s.Federation = []SPIFFEFederation{f} }, "bundle_file"},
		{"no orgs", func(s *SPIFFE) { f := web(); f.Orgs = nil; s.Federation = []SPIFFEFederation{f} }, "no wildcard"},
		{"invalid org", func(s *SPIFFE) { f := web(); f.Orgs = []string{"*"}; s.Federation = []SPIFFEFederation{f} }, "not a valid org name"},
		{"org twice", func(s *SPIFFE) { f := web(); f.Orgs = []string{"acme", "acme"}; s.Federation = []SPIFFEFederation{f} }, `"acme" is listed twice`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultIssuer()
			tt.set(&c.SPIFFE)
			err := c.Validate()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

// TestSPIFFEDoc_FederationTOML: every issuer snippet of docs/spiffe.md
// with [[spiffe.federation]] is a valid config.
func TestSPIFFEDoc_FederationTOML(t *testing.T) {
	doc, err := os.ReadFile("../../docs/spiffe.md")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for i, b := range strings.Split(string(doc), "```toml\n")[1:] {
		b, _, _ = strings.Cut(b, "```")
		if !strings.Contains(b, "[[spiffe.federation]]") {
			continue
		}
		n++
		c, err := LoadIssuer(writeIssuerFile(t, b))
		if err != nil {
			t.Errorf("snippet %d:\n%s\n%v", i, b, err)
			continue
		}
		if len(c.SPIFFE.Federation) == 0 {
			t.Errorf("snippet %d: no federation read", i)
		}
	}
	if n < 2 {
		t.Fatalf("%d federation snippets in docs/spiffe.md, want the reference one and the SPIRE test's", n)
	}
}

// An org trusts at most MaxFederatedPerOrg foreign trust domains, so
// their bundles (64 KiB each at most) always fit beside its own in the
// reply an agent reads.
func TestValidate_SPIFFEFederationPerOrgBound(t *testing.T) {
	c := DefaultIssuer()
	for i := range MaxFederatedPerOrg + 1 {
		c.SPIFFE.Federation = append(c.SPIFFE.Federation, SPIFFEFederation{TrustDomain: fmt.Sprintf("f%d.example", i),
			BundleEndpointURL: "https://f.example/bundle", Profile: ProfileHTTPSWeb, Orgs: []string{"acme", fmt.Sprintf("o%d", i)}})
	}
	err := c.Validate()
	if err == nil || !strings.Contains(err.Error(), "org acme trusts 9 foreign trust domains") {
		t.Fatalf("Validate = %v, want acme's 9 domains refused", err)
	}
	if strings.Contains(err.Error(), "org o0") {
		t.Errorf("an org with one foreign domain was refused: %v", err)
	}
	c.SPIFFE.Federation = c.SPIFFE.Federation[:MaxFederatedPerOrg]
	if err := c.Validate(); err != nil && strings.Contains(err.Error(), "foreign trust domains") {
		t.Errorf("%d domains refused: %v", MaxFederatedPerOrg, err)
	}
}
