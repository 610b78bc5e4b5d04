package agent

import (
	"encoding/json"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/wicket-sh/wicket/internal/agent/agenttest"
)

// parseMetrics reads Prometheus text into name{labels} → value, and the
// type of each family.
func parseMetrics(t *testing.T, text string) (map[string]float64, map[string]string) {
	t.Helper()
	vals, types := map[string]float64{}, map[string]string{}
	for _, line := range strings.Split(text, "\n") {
		if f, ok := strings.CutPrefix(line, "# TYPE "); ok {
			name, typ, _ := strings.Cut(f, " ")
			types[name] = typ
			continue
		}
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		vals[line[:i]] = v
	}
	return vals, types
}

// sampleKey is how a sample appears in Prometheus text: labels sorted.
func sampleKey(name string, labels map[string]string) string {
	if len(labels) == 0 {
		return name
	}
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + strconv.Quote(labels[k])
	}
	return name + "{" + strings.Join(parts, ",") + "}"
}

// TestStatusAndMetrics_SameCounters: every counter /v1/status shows is on
// /metrics with the same value, and every counter family on /metrics is
// either a status counter or one of the per-socket, per-file and denial
// families status shows in its own sections. token_refreshes,
// proxy_errors and the sockets' peer_cred_errors were once in status only.
func TestStatusAndMetrics_SameCounters(t *testing.T) {
	is := agenttest.New(t)
	g := startGuest(t, is, "[[proxy.route]]\nmatch = \"GET /gw/*\"\n")
	g.waitMetadata(t)
	for i := 0; i < 3; i++ { // a miss, then hits
		if r := g.req(t, "POST", "/v1/tokens/oidc", `{"aud":"x"}`, nil); r.Status != 200 {
			t.Fatalf("token: %+v", r)
		}
	}
	g.req(t, "GET", "/gw/a", "", nil)
	g.do("GET", g.admin, "/v1/nope", "", nil)

	var st struct {
		Counters map[string]uint64                     `json:"counters"`
		Sockets  map[string]map[string]json.RawMessage `json:"sockets"`
	}
	if err := json.Unmarshal([]byte(g.do("GET", g.admin, "/v1/status", "", nil).Body), &st); err != nil {
		t.Fatal(err)
	}
	// The counters do not move between the two reads: nothing else runs.
	vals, types := parseMetrics(t, g.do("GET", g.admin, "/metrics", "", nil).Body)

	reg := append(g.agent.counters(), g.agent.admin.Counters()...)
	byKey := map[string]string{}
	families := map[string]bool{}
	for _, c := range reg {
		byKey[c.Key] = sampleKey(c.Name, c.Labels)
		families[c.Name] = true
	}
	if len(st.Counters) == 0 {
		t.Fatal("status has no counters")
	}
	for key, v := range st.Counters {
		sk, ok := byKey[key]
		if !ok {
			t.Errorf("status counter %s is in no counter set", key)
			continue
		}
		got, ok := vals[sk]
		if !ok {
			t.Errorf("status counter %s has no metric (%s)", key, sk)
			continue
		}
		if got != float64(v) {
			t.Errorf("status counter %s = %d, metric %s = %v", key, v, sk, got)
		}
		delete(byKey, key)
	}
	for key, sk := range byKey {
		t.Errorf("metric %s has no status counter %s", sk, key)
	}
	for _, key := range []string{"tokens_served", "token_cache_hits", "proxied"} {
		if st.Counters[key] == 0 {
			t.Errorf("status counter %s is 0: the test's requests did not count", key)
		}
	}

	for name, typ := range types {
		switch {
		case typ != "counter", families[name]:
		case strings.HasPrefix(name, "wicket_connections_"), // status: sockets
			strings.HasPrefix(name, "wicket_denials_"),    // the denial log's summary lines
			strings.HasPrefix(name, "wicket_token_file_"): // status: token_files
		default:
			t.Errorf("counter metric %s has no status counter", name)
		}
	}
	// Each socket's fields against their metrics: TestStats_EveryFieldHasAMetric.
	for sock := range st.Sockets {
		if _, ok := vals[sampleKey("wicket_connections_peer_cred_errors_total", map[string]string{"socket": sock})]; !ok {
			t.Errorf("socket %s: no peer_cred_errors metric", sock)
		}
	}
}
