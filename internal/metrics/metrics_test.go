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
