package promtext

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/wicket-sh/wicket/client"
	"github.com/wicket-sh/wicket/internal/config"
	"github.com/wicket-sh/wicket/internal/e2e"
	"github.com/wicket-sh/wicket/internal/sockettest"
)

func TestMain(m *testing.M) { sockettest.Main(m) }

// TestMetrics_ValidPrometheus scrapes /metrics on the admin sockets of a
// real issuer and a real agent after some traffic (tokens, a token file
// whose path needs escaping in a label, refused callers and a refused
// machine token) and reads it with Prometheus's text parser: it must
// parse, every family must have one HELP and one TYPE (counter or gauge),
// and no series may appear twice. It reads the HTTP output only, so it
// holds whatever registry produces the samples.
func TestMetrics_ValidPrometheus(t *testing.T) {
	sockettest.RequireRoot(t, "needs root to be refused as another uid")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// Both services' sockets admit group 65534 to the connection, so the
	// other uid reaches them and is refused by the peer check (counted).
	issuerDir := reachableDir(t)
	issuerAdmin := filepath.Join(issuerDir, "admin.sock")
	ti := e2e.StartIssuerWith(t, func(c *config.Issuer) {
		c.Admin.Path, c.Admin.Group, c.Admin.Mode = issuerAdmin, "65534", config.Mode(0o660)
	})
	mt := ti.MachineToken(t, "dev", "dev-app", "web-1")
	dir := reachableDir(t)
	// A directory name with a quote, a backslash and a space: the path is
	// a label value of the token-file series.
	tokPath := filepath.Join(dir, `to"k\ s`, "f")
	ag := e2e.StartAgentConfig(t, dir, fmt.Sprintf(`[api]
socket_path = %q
socket_group = "65534"
[admin]
socket_path = %q
socket_group = "65534"
socket_mode = "0660"
[issuer]
url = %q
[[token_file]]
path = %q
audience = "files.example.com"
`, filepath.Join(dir, "api.sock"), filepath.Join(dir, "admin.sock"), ti.URL, tokPath), mt)
	if err := ag.WaitStarted(ctx); err != nil {
		t.Fatal(err)
	}
	c := client.New(filepath.Join(dir, "api.sock"))
	for _, aud := range []string{"a.example.com", "b.example.com", "a.example.com"} {
		if _, _, err := c.OIDCToken(ctx, aud); err != nil {
			t.Fatal(err)
		}
	}
	if r := sockettest.RequestAs(t, 65534, 65534, filepath.Join(dir, "api.sock"), "GET", "/v1/metadata", "", nil); r.Status != http.StatusForbidden {
		t.Fatalf("uid 65534 on the API socket: %+v", r)
	}
	if r := sockettest.RequestAs(t, 65534, 65534, filepath.Join(dir, "admin.sock"), "GET", "/metrics", "", nil); r.Status != http.StatusForbidden {
		t.Fatalf("uid 65534 on the agent's admin socket: %+v", r)
	}
	if r := sockettest.RequestAs(t, 65534, 65534, issuerAdmin, "GET", "/metrics", "", nil); r.Status != http.StatusForbidden {
		t.Fatalf("uid 65534 on the issuer's admin socket: %+v", r)
	}
	if _, _, err := ti.OIDCSource("fm2_bogus", "x")(ctx); err == nil {
		t.Fatal("a bogus machine token got a token")
	}

	for _, s := range []struct{ name, socket, family string }{
		{"agent", filepath.Join(dir, "admin.sock"), "wicket_token_file_refreshes_total"},
		{"issuer", issuerAdmin, "wicket_oidc_tokens_issued_total"},
	} {
		t.Run(s.name, func(t *testing.T) {
			r := sockettest.Do(s.socket, "GET", "/metrics", "", nil)
			if r.Status != http.StatusOK {
				t.Fatalf("GET /metrics: %+v", r)
			}
			if ct := r.Header["Content-Type"]; !strings.HasPrefix(ct, "text/plain") || !strings.Contains(ct, "version=0.0.4") {
				t.Errorf("Content-Type %q, want the text format's text/plain; version=0.0.4", ct)
			}
			fams := checkExposition(t, r.Body)
			if len(fams) < 5 || fams[s.family] == nil {
				t.Fatalf("%d families, %s missing:\n%s", len(fams), s.family, r.Body)
			}
			if s.name == "agent" && !strings.Contains(r.Body, `\"k\\ s`) {
				t.Errorf("the token file's path is not escaped in its label:\n%s", r.Body)
			}
		})
	}
}

// checkExposition parses body strictly and checks what the parser lets
// through: HELP and TYPE once per family (a family split in two, or one
// without HELP, parses), a known type, and unique series.
func checkExposition(t *testing.T, body string) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("Prometheus's parser refuses the output: %v\n%s", err, body)
	}
	help, typ := map[string]int{}, map[string]int{}
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 3 && f[0] == "#" {
			switch f[1] {
			case "HELP":
				help[f[2]]++
			case "TYPE":
				typ[f[2]]++
			}
		}
	}
	for name, mf := range fams {
		if help[name] != 1 || typ[name] != 1 || mf.GetHelp() == "" {
			t.Errorf("%s: %d HELP (%q), %d TYPE lines; want one each", name, help[name], mf.GetHelp(), typ[name])
		}
		if k := mf.GetType(); k != dto.MetricType_COUNTER && k != dto.MetricType_GAUGE {
			t.Errorf("%s: type %s, want counter or gauge", name, k)
		}
		if mf.GetType() == dto.MetricType_COUNTER && !strings.HasSuffix(name, "_total") {
			t.Errorf("%s: a counter's name should end in _total", name)
		}
		seen := map[string]bool{}
		for _, m := range mf.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, l.GetName()+"="+l.GetValue())
			}
			sort.Strings(ls)
			sig := strings.Join(ls, "\xff")
			if seen[sig] {
				t.Errorf("%s{%s}: the series appears twice", name, strings.Join(ls, ","))
			}
			seen[sig] = true
		}
	}
	return fams
}

// reachableDir is a directory other uids may traverse but not write.
func reachableDir(t *testing.T) string {
	t.Helper()
	d := e2e.ShortDir(t)
	if err := os.Chmod(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}
