package unixsock

import "github.com/wicket-sh/wicket/internal/metrics"

// Metrics returns connection metrics for listeners (nil ones skipped).
func Metrics(ls ...*Listener) []metrics.Sample {
	var s []metrics.Sample
	for _, l := range ls {
		if l == nil {
			continue
		}
		st := l.Stats()
		lb := map[string]string{"socket": l.Name()}
		s = append(s,
			metrics.Sample{Name: "wicket_connections_open", Help: "Open connections.", Type: metrics.Gauge, Labels: lb, Value: float64(st.Open)},
			metrics.Sample{Name: "wicket_connections_accepted_total", Help: "Accepted connections.", Type: metrics.Counter, Labels: lb, Value: float64(st.Accepted)},
			metrics.Sample{Name: "wicket_connections_rejected_total", Help: "Connections closed at once because the socket was at its cap.", Type: metrics.Counter, Labels: lb, Value: float64(st.Rejected)},
		)
	}
	return s
}
