package metrics

import (
	"math"
	"strings"
	"testing"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

func TestWrite(t *testing.T) {
	var b strings.Builder
	err := Write(&b, []Sample{
		{Name: "wicket_connections_open", Help: "Open connections.", Type: Gauge, Labels: map[string]string{"socket": "api"}, Value: 3},
		{Name: "wicket_connections_open", Help: "Open connections.", Type: Gauge, Labels: map[string]string{"socket": "ad\"min"}, Value: 1},
		{Name: "wicket_uptime_seconds", Help: "Uptime.", Type: Gauge, Value: 1.5},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := `# HELP wicket_connections_open Open connections.
# TYPE wicket_connections_open gauge
wicket_connections_open{socket="api"} 3
wicket_connections_open{socket="ad\"min"} 1
# HELP wicket_uptime_seconds Uptime.
# TYPE wicket_uptime_seconds gauge
wicket_uptime_seconds 1.5
`
	if b.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestCounterSet_StatusAndSamplesAgree(t *testing.T) {
	n := uint64(3)
	cs := CounterSet{
		{Key: "a", Name: "wicket_a_total", Help: "A.", Value: func() uint64 { return n }},
		{Key: "b_hit", Name: "wicket_b_total", Help: "B.", Labels: map[string]string{"result": "hit"}, Value: func() uint64 { return n + 1 }},
	}
	st := cs.Status()
	s := cs.Samples()
	if len(st) != 2 || len(s) != 2 {
		t.Fatalf("status %v, samples %v", st, s)
	}
	if st["a"] != 3 || s[0].Value != 3 || s[0].Type != Counter || s[0].Name != "wicket_a_total" {
		t.Errorf("a: status %d, sample %+v", st["a"], s[0])
	}
	if st["b_hit"] != 4 || s[1].Value != 4 || s[1].Labels["result"] != "hit" {
		t.Errorf("b: status %d, sample %+v", st["b_hit"], s[1])
	}
}

// TestWrite_PrometheusParses: the edge cases of the format (special
// floats, escapes in HELP and label values, non-ASCII, empty values) read
// back through Prometheus's own parser with the values written.
func TestWrite_PrometheusParses(t *testing.T) {
	samples := []Sample{
		{Name: "a_total", Help: "back\\slash and\nnewline", Type: Counter, Value: 1e20},
		{Name: "b", Help: "floats", Type: Gauge, Labels: map[string]string{"v": "nan"}, Value: math.NaN()},
		{Name: "b", Help: "floats", Type: Gauge, Labels: map[string]string{"v": "inf"}, Value: math.Inf(1)},
		{Name: "b", Help: "floats", Type: Gauge, Labels: map[string]string{"v": "-inf"}, Value: math.Inf(-1)},
		{Name: "b", Help: "floats", Type: Gauge, Labels: map[string]string{"v": "small"}, Value: -0.000125},
		{Name: "c", Help: "labels", Type: Gauge, Labels: map[string]string{"path": "/run/a \"q\" \\ b\nc ü", "empty": ""}, Value: 2},
	}
	var b strings.Builder
	if err := Write(&b, samples); err != nil {
		t.Fatal(err)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(b.String()))
	if err != nil {
		t.Fatalf("%v\n%s", err, b.String())
	}
	if h := fams["a_total"].GetHelp(); h != "back\\slash and\nnewline" {
		t.Errorf("help %q", h)
	}
	if v := fams["a_total"].GetMetric()[0].GetCounter().GetValue(); v != 1e20 {
		t.Errorf("a_total %v", v)
	}
	got := map[string]float64{}
	for _, m := range fams["b"].GetMetric() {
		got[m.GetLabel()[0].GetValue()] = m.GetGauge().GetValue()
	}
	if !math.IsNaN(got["nan"]) || !math.IsInf(got["inf"], 1) || !math.IsInf(got["-inf"], -1) || got["small"] != -0.000125 {
		t.Errorf("floats %v", got)
	}
	labels := map[string]string{}
	for _, l := range fams["c"].GetMetric()[0].GetLabel() {
		labels[l.GetName()] = l.GetValue()
	}
	if labels["path"] != samples[5].Labels["path"] || labels["empty"] != "" {
		t.Errorf("labels %q", labels)
	}
}
