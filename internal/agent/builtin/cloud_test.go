package builtin

import (
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/google/go-cmp/cmp"

	"github.com/wicket-sh/wicket/internal/agent/feature"
	"github.com/wicket-sh/wicket/internal/agent/feature/aws"
	"github.com/wicket-sh/wicket/internal/agent/feature/azure"
	"github.com/wicket-sh/wicket/internal/agent/feature/proxyroutes"
	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/proxy"
)

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "agent.toml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// LoadAgent loads a config with the built-in features, as the agent does.
func LoadAgent(path string) (*config.Agent, error) {
	return config.LoadAgent(path, feature.Sections(Features()))
}

// cloudBase is the minimum a config with token files needs: an issuer.
const cloudBase = "[issuer]\nurl = \"https://issuer.example\"\n"

func TestLoadAgent_CloudKeys(t *testing.T) {
	c, err := LoadAgent(writeFile(t, cloudBase+`
[[token_file]]
path = "/run/wicket/tokens/gcp"
audience = "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/x"
mode = "0400"
group = "0"
refresh = "50%"
ttl = "30m"

[[token_file]]
path = "/run/wicket/tokens/minio"
audience = "minio.example.com"

[aws]
role_arn = "arn:minio:iam:::role/abc"
session_name = "web-1"
token_file = "/run/wicket/tokens/minio"

[azure]
client_id = "00000000-0000-0000-0000-000000000001"
tenant_id = "00000000-0000-0000-0000-000000000002"
authority_host = "https://login.microsoftonline.us/"
`))
	if err != nil {
		t.Fatal(err)
	}
	want := []config.TokenFileSpec{
		{Path: "/run/wicket/tokens/gcp", Audience: "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/x", Mode: 0o400, GID: 0, Refresh: 0.5, TTL: 30 * time.Minute},
		{Path: "/run/wicket/tokens/minio", Audience: "minio.example.com", Mode: 0o440, GID: -1, Refresh: 0.8},
		{Path: azure.DefaultTokenFile, Audience: azure.Audience, Mode: 0o440, GID: -1, Refresh: 0.8, TTL: time.Hour, ImpliedBy: "azure"},
	}
	if diff := cmp.Diff(want, c.TokenFileSpecs()); diff != "" {
		t.Errorf("token files (-want +got):\n%s", diff)
	}
	if aws.From(c).TokenFilePath() != "/run/wicket/tokens/minio" || azure.From(c).TokenFilePath() != azure.DefaultTokenFile {
		t.Errorf("aws file %q, azure file %q", aws.From(c).TokenFilePath(), azure.From(c).TokenFilePath())
	}
	if aws.From(c).SessionName != "web-1" || azure.From(c).AuthorityHost != "https://login.microsoftonline.us/" {
		t.Errorf("aws %+v azure %+v", aws.From(c), azure.From(c))
	}
}

// TestLoadAgent_AzureTokenTTL: the file the Azure SDKs read gets 1 h
// tokens (they cache its content for up to 10 minutes), whether [azure]
// implies it or a [[token_file]] describes it without a ttl; a ttl the
// [[token_file]] sets wins; other files keep sharing the API's tokens.
func TestLoadAgent_AzureTokenTTL(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		want       map[string]time.Duration
	}{
		{"implied", "[azure]\nclient_id = \"c\"\ntenant_id = \"t\"\n", map[string]time.Duration{azure.DefaultTokenFile: time.Hour}},
		{"declared without ttl", "[[token_file]]\npath = \"/t/az\"\naudience = \"api://AzureADTokenExchange\"\n[[token_file]]\npath = \"/t/other\"\naudience = \"x\"\n[azure]\nclient_id = \"c\"\ntenant_id = \"t\"\n",
			map[string]time.Duration{"/t/az": time.Hour, "/t/other": 0}},
		{"declared with ttl", "[[token_file]]\npath = \"/t/az\"\naudience = \"api://AzureADTokenExchange\"\nttl = \"20m\"\n[azure]\nclient_id = \"c\"\ntenant_id = \"t\"\n",
			map[string]time.Duration{"/t/az": 20 * time.Minute}},
		{"no azure section", "[[token_file]]\npath = \"/t/az\"\naudience = \"api://AzureADTokenExchange\"\n", map[string]time.Duration{"/t/az": 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := LoadAgent(writeFile(t, cloudBase+tc.body))
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]time.Duration{}
			for _, s := range c.TokenFileSpecs() {
				got[s.Path] = s.TTL
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("ttl by path (-want +got):\n%s", diff)
			}
		})
	}
}

// TestLoadAgent_ImpliedTokenFiles: the rule that picks the file [aws] and
// [azure] point their SDKs at.
func TestLoadAgent_ImpliedTokenFiles(t *testing.T) {
	for _, tc := range []struct {
		name, body       string
		awsFile, azFile  string
		paths, impliedBy []string
	}{
		{"none", "", "", "", nil, nil},
		{"aws alone: implied at the default path", "[aws]\nrole_arn = \"arn:aws:iam::1:role/r\"\n",
			aws.DefaultTokenFile, "", []string{aws.DefaultTokenFile}, []string{"aws"}},
		{"aws with its own path", "[aws]\nrole_arn = \"arn:aws:iam::1:role/r\"\ntoken_file = \"/t/aws\"\n",
			"/t/aws", "", []string{"/t/aws"}, []string{"aws"}},
		{"aws reuses the token_file for its audience", "[[token_file]]\npath = \"/t/sts\"\naudience = \"sts.amazonaws.com\"\ngroup = \"0\"\n[aws]\nrole_arn = \"arn:aws:iam::1:role/r\"\n",
			"/t/sts", "", []string{"/t/sts"}, []string{""}},
		{"aws names a token_file of another audience", "[[token_file]]\npath = \"/t/minio\"\naudience = \"minio\"\n[aws]\nrole_arn = \"arn:minio:iam:::role/x\"\ntoken_file = \"/t/minio\"\n",
			"/t/minio", "", []string{"/t/minio"}, []string{""}},
		{"azure alone", "[azure]\nclient_id = \"c\"\ntenant_id = \"t\"\n",
			"", azure.DefaultTokenFile, []string{azure.DefaultTokenFile}, []string{"azure"}},
		{"azure reuses the token_file for its audience", "[[token_file]]\npath = \"/t/az\"\naudience = \"api://AzureADTokenExchange\"\n[azure]\nclient_id = \"c\"\ntenant_id = \"t\"\n",
			"", "/t/az", []string{"/t/az"}, []string{""}},
		{"both implied", "[aws]\nrole_arn = \"arn:aws:iam::1:role/r\"\n[azure]\nclient_id = \"c\"\ntenant_id = \"t\"\n",
			aws.DefaultTokenFile, azure.DefaultTokenFile, []string{aws.DefaultTokenFile, azure.DefaultTokenFile}, []string{"aws", "azure"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := LoadAgent(writeFile(t, cloudBase+tc.body))
			if err != nil {
				t.Fatal(err)
			}
			if aws.From(c).TokenFilePath() != tc.awsFile || azure.From(c).TokenFilePath() != tc.azFile {
				t.Errorf("aws file %q, azure file %q; want %q, %q", aws.From(c).TokenFilePath(), azure.From(c).TokenFilePath(), tc.awsFile, tc.azFile)
			}
			var paths, by []string
			for _, s := range c.TokenFileSpecs() {
				paths, by = append(paths, s.Path), append(by, s.ImpliedBy)
			}
			if diff := cmp.Diff(tc.paths, paths); diff != "" {
				t.Errorf("paths (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.impliedBy, by); diff != "" {
				t.Errorf("implied by (-want +got):\n%s", diff)
			}
		})
	}
}

func TestLoadAgent_CloudInvalid(t *testing.T) {
	tf := func(extra string) string {
		return cloudBase + "[[token_file]]\npath = \"/t/a\"\naudience = \"aud\"\n" + extra
	}
	var many strings.Builder
	many.WriteString(cloudBase)
	for i := 0; i <= config.MaxTokenFiles; i++ {
		many.WriteString("[[token_file]]\npath = \"/t/" + strconv.Itoa(i) + "\"\naudience = \"a\"\n")
	}
	for _, tc := range []struct{ name, body, want string }{
		{"relative path", cloudBase + "[[token_file]]\npath = \"t/a\"\naudience = \"a\"\n", "token_file[0].path"},
		{"unclean path", cloudBase + "[[token_file]]\npath = \"/t/../a\"\naudience = \"a\"\n", "clean absolute"},
		{"root", cloudBase + "[[token_file]]\npath = \"/\"\naudience = \"a\"\n", "clean absolute"},
		{"no path", cloudBase + "[[token_file]]\naudience = \"a\"\n", "token_file[0].path"},
		{"no audience", cloudBase + "[[token_file]]\npath = \"/t/a\"\n", "audience is required"},
		{"audience with a space", cloudBase + "[[token_file]]\npath = \"/t/a\"\naudience = \"a b\"\n", "printable ASCII"},
		{"unknown key", tf("lifetime = \"1h\"\n"), "unknown keys: token_file.lifetime"},
		{"ttl too short", tf("ttl = \"30s\"\n"), "token_file[0].ttl 30s: want 1m0s..1h0m0s"},
		{"ttl too long", tf("ttl = \"2h\"\n"), "token_file[0].ttl 2h0m0s: want 1m0s..1h0m0s"},
		{"mode for others", tf("mode = \"0444\"\n"), "no access for others"},
		{"mode executable", tf("mode = \"0550\"\n"), "execute"},
		{"mode group write", tf("mode = \"0460\"\n"), "not write"},
		{"mode unreadable", tf("mode = \"0000\"\n"), "could read"},
		{"mode not octal", tf("mode = \"rw\"\n"), "invalid mode"},
		{"unknown group", tf("group = \"no-such-group-wicket\"\n"), "token_file[0].group"},
		{"refresh too early", tf("refresh = \"5%\"\n"), "want 10%..95%"},
		{"refresh too late", tf("refresh = \"99%\"\n"), "want 10%..95%"},
		{"refresh as a fraction", tf("refresh = \"0.8\"\n"), "invalid percentage"},
		{"refresh as a number", tf("refresh = 80\n"), "refresh"},
		{"refresh NaN", tf("refresh = \"NaN%\"\n"), "invalid percentage"},
		{"duplicate path", tf("[[token_file]]\npath = \"/t/a\"\naudience = \"other\"\n"), "token_file[1]: path \"/t/a\" is also token_file[0]"},
		{"path of the api socket", cloudBase + "[[token_file]]\npath = \"/run/wicket/api.sock\"\naudience = \"a\"\n", "also api.socket_path"},
		{"path of the machine token", "[issuer]\nurl = \"https://i.example\"\ntoken_file = \"/t/a\"\n[[token_file]]\npath = \"/t/a\"\naudience = \"a\"\n", "also issuer.token_file"},
		{"no issuer", "[[token_file]]\npath = \"/t/a\"\naudience = \"a\"\n", "need issuer.url"},
		{"aws without issuer", "[aws]\nrole_arn = \"arn:aws:iam::1:role/r\"\n", "aws: token files need issuer.url"},
		{"too many", many.String(), "at most 64"},
		{"aws session name without role", cloudBase + "[aws]\nsession_name = \"x1\"\n", "without role_arn"},
		{"gcp project with a space", cloudBase + "[gcp]\nproject = \"a b\"\n", "gcp.project"},
		{"gcp credentials file relative", cloudBase + "[gcp]\ncredentials_file = \"gcp.json\"\n", "gcp.credentials_file"},
		{"aws token file without role", cloudBase + "[aws]\ntoken_file = \"/t/aws\"\n", "without role_arn"},
		{"aws role not an ARN", cloudBase + "[aws]\nrole_arn = \"app\"\n", "not an ARN"},
		{"aws role with a space", cloudBase + "[aws]\nrole_arn = \"arn:aws:iam::1:role/a b\"\n", "printable"},
		{"aws bad session name", cloudBase + "[aws]\nrole_arn = \"arn:aws:iam::1:role/r\"\nsession_name = \"a:b\"\n", "aws.session_name"},
		{"aws relative token file", cloudBase + "[aws]\nrole_arn = \"arn:aws:iam::1:role/r\"\ntoken_file = \"aws\"\n", "aws.token_file"},
		{"aws token file beside the one for its audience", cloudBase + "[[token_file]]\npath = \"/t/sts\"\naudience = \"sts.amazonaws.com\"\n[aws]\nrole_arn = \"arn:aws:iam::1:role/r\"\ntoken_file = \"/t/other\"\n", "use that path"},
		{"aws ambiguous", cloudBase + "[[token_file]]\npath = \"/t/1\"\naudience = \"sts.amazonaws.com\"\n[[token_file]]\npath = \"/t/2\"\naudience = \"sts.amazonaws.com\"\n[aws]\nrole_arn = \"arn:aws:iam::1:role/r\"\n", "several"},
		{"aws implied file on a taken path", cloudBase + "[[token_file]]\npath = \"/run/wicket/tokens/aws\"\naudience = \"other\"\n[aws]\nrole_arn = \"arn:aws:iam::1:role/r\"\n", "aws: path \"/run/wicket/tokens/aws\" is also token_file[0]"},
		{"aws unknown key", cloudBase + "[aws]\nrole = \"arn:aws:iam::1:role/r\"\n", "unknown keys: aws.role"},
		{"azure tenant without client", cloudBase + "[azure]\ntenant_id = \"t\"\n", "without client_id"},
		{"azure client without tenant", cloudBase + "[azure]\nclient_id = \"c\"\n", "azure.tenant_id"},
		{"azure authority over http", cloudBase + "[azure]\nclient_id = \"c\"\ntenant_id = \"t\"\nauthority_host = \"http://login.example/\"\n", "https URL"},
		{"azure authority empty", cloudBase + "[azure]\nauthority_host = \"\"\n", "azure.authority_host"},
		{"azure ambiguous", cloudBase + "[[token_file]]\npath = \"/t/1\"\naudience = \"api://AzureADTokenExchange\"\n[[token_file]]\npath = \"/t/2\"\naudience = \"api://AzureADTokenExchange\"\n[azure]\nclient_id = \"c\"\ntenant_id = \"t\"\n", "several"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadAgent(writeFile(t, tc.body))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

// Token files, [aws] and [azure] are dynamic: a reload applies them.
func TestRestartRequired_Cloud(t *testing.T) {
	a, _ := LoadAgent(writeFile(t, cloudBase))
	b, err := LoadAgent(writeFile(t, cloudBase+"[[token_file]]\npath = \"/t/a\"\naudience = \"a\"\n[aws]\nrole_arn = \"arn:aws:iam::1:role/r\"\n[azure]\nclient_id = \"c\"\ntenant_id = \"t\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := config.RestartRequired(a, b); len(got) != 0 {
		t.Errorf("RestartRequired = %v", got)
	}
}

// TestExampleAgentConfig_EveryKey: examples/agent.toml sets (or shows
// commented out) every key the agent config has, so each one is
// documented where it is shown.
func TestExampleAgentConfig_EveryKey(t *testing.T) {
	const path = "../../../examples/agent.toml"
	var c map[string]any
	md, err := toml.DecodeFile(path, &c)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(path)
	shown := map[string]bool{}
	for _, k := range md.Keys() {
		shown[k.String()] = true
	}
	keys := tomlKeys(reflect.TypeOf(config.Agent{}), "")
	for _, f := range feature.Sections(Features()) {
		keys = append(keys, tomlKeys(reflect.TypeOf(f.New()).Elem(), f.Key())...)
	}
	for _, k := range keys {
		leaf := k[strings.LastIndexByte(k, '.')+1:]
		if !shown[k] && !strings.Contains(string(raw), "\n# "+leaf+" = ") {
			t.Errorf("examples/agent.toml does not show %s", k)
		}
	}
}

// tomlKeys lists the dotted keys of a config struct's leaves.
func tomlKeys(typ reflect.Type, prefix string) []string {
	for typ.Kind() == reflect.Slice {
		typ = typ.Elem() // [[token_file]]: its entries' keys
	}
	var keys []string
	for i := 0; i < typ.NumField(); i++ {
		f := typ.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if name == "-" {
			continue // not read from the file
		}
		ft := f.Type
		for ft.Kind() == reflect.Pointer || ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct {
			ft = ft.Elem()
		}
		full := name
		if prefix != "" {
			full = prefix + "." + name
		}
		switch {
		case f.Anonymous && name == "":
			keys = append(keys, tomlKeys(ft, prefix)...)
		case ft.Kind() == reflect.Struct && ft != reflect.TypeOf(config.Duration{}):
			keys = append(keys, tomlKeys(ft, full)...)
		default:
			keys = append(keys, full)
		}
	}
	return keys
}

// TestFederationDoc_TOML: every agent.toml snippet in docs/federation.md is
// a valid config (with an issuer), so the guide cannot drift from the keys.
func TestFederationDoc_TOML(t *testing.T) {
	doc, err := os.ReadFile("../../../docs/federation.md")
	if err != nil {
		t.Fatal(err)
	}
	var blocks []string
	var cur []string
	in := false
	for _, l := range strings.Split(string(doc), "\n") {
		trimmed := strings.TrimSpace(l)
		switch {
		case !in && trimmed == "```toml":
			in, cur = true, nil
		case in && trimmed == "```":
			in = false
			blocks = append(blocks, strings.Join(cur, "\n")+"\n")
		case in:
			cur = append(cur, trimmed)
		}
	}
	if len(blocks) < 4 {
		t.Fatalf("found %d toml snippets", len(blocks))
	}
	for i, b := range blocks {
		if _, err := LoadAgent(writeFile(t, cloudBase+b)); err != nil {
			t.Errorf("snippet %d:\n%s\n%v", i, b, err)
		}
	}
}

// The shipped example must load: documentation that does not parse is
// worse than none.
func TestExampleAgentConfig(t *testing.T) {
	c, err := LoadAgent("../../../examples/agent.toml")
	if err != nil {
		t.Fatal(err)
	}
	routes := proxyroutes.From(c)
	if c.Issuer.URL == "" || routes.Table().Len() == 0 {
		t.Errorf("example lacks the issuer or proxy sections: %+v", c.Issuer)
	}
	// Its route shows the default forwarded headers.
	want := strings.Join(proxy.DefaultForwardHeaders, ",")
	if got := strings.Join(routes.Routes[0].ForwardHeaders, ","); got != want {
		t.Errorf("examples/agent.toml proxy.route[0].forward_headers = %s, default is %s", got, want)
	}
}
