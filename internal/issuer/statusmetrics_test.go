package issuer

import (
	"encoding/json"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/wicket-sh/wicket/internal/sockettest"
)

// TestStatusAndMetrics_SameCounters: every counter the issuer's status
// shows is on /metrics with the same value (reloads_ok and reloads_failed
// were once in status only), and every counter family on /metrics is a
// status counter or a socket's or the denial log's.
func TestStatusAndMetrics_SameCounters(t *testing.T) {
	ti := startIssuer(t, shortDir(t), nil)
	var st struct {
		Counters map[string]uint64 `json:"counters"`
	}
	if err := json.Unmarshal([]byte(sockettest.Do(ti.adminSock, "GET", "/v1/status", "", nil).Body), &st); err != nil {
		t.Fatal(err)
	}
	text := sockettest.Do(ti.adminSock, "GET", "/metrics", "", nil).Body
	vals, types := map[string]float64{}, map[string]string{}
	for _, line := range strings.Split(text, "\n") {
		if f, ok := strings.CutPrefix(line, "# TYPE "); ok {
			name, typ, _ := strings.Cut(f, " ")
			types[name] = typ
		} else if line != "" && !strings.HasPrefix(line, "#") {
			i := strings.LastIndexByte(line, ' ')
			v, _ := strconv.ParseFloat(line[i+1:], 64)
			vals[line[:i]] = v
		}
	}
	reg := append(ti.counters(), ti.Issuer.admin.Counters()...)
	families := map[string]bool{}
	keys := map[string]bool{}
	for _, c := range reg {
		families[c.Name] = true
		keys[c.Key] = true
		sk := c.Name
		if len(c.Labels) > 0 {
			var ls []string
			for k, v := range c.Labels {
				ls = append(ls, k+"="+strconv.Quote(v))
			}
			sort.Strings(ls)
			sk += "{" + strings.Join(ls, ",") + "}"
		}
		got, ok := vals[sk]
		if !ok {
			t.Errorf("counter %s has no metric %s", c.Key, sk)
		}
		if sv, ok := st.Counters[c.Key]; !ok {
			t.Errorf("metric %s has no status counter %s", sk, c.Key)
		} else if got != float64(sv) {
			t.Errorf("status %s = %d, metric %s = %v", c.Key, sv, sk, got)
		}
	}
	for key := range st.Counters {
		if !keys[key] {
			t.Errorf("status counter %s is in no counter set", key)
		}
	}
	for name, typ := range types {
		if typ == "counter" && !families[name] && !strings.HasPrefix(name, "wicket_connections_") && !strings.HasPrefix(name, "wicket_denials_") {
			t.Errorf("counter metric %s has no status counter", name)
		}
	}
}
