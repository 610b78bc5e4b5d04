package metrics

import (
	"strings"
	"testing"
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
