package unixsock

import (
	"sort"

	"github.com/wicket-sh/wicket/internal/metrics"
)

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
			metrics.Sample{Name: "wicket_connections_rejected_per_uid_total", Help: "Connections closed at once because their peer uid was at its cap.", Type: metrics.Counter, Labels: lb, Value: float64(st.RejectedUID)},
		)
	}
	return s
}

// DenialMetrics returns the denial counters of a socket's DenialLog: every
// denial by reason, and how many were only counted in a summary line rather
// than logged in full.
func DenialMetrics(socket string, d *DenialLog) []metrics.Sample {
	if d == nil {
		return nil
	}
	st := d.Stats()
	reasons := make([]string, 0, len(st.ByReason))
	for r := range st.ByReason {
		reasons = append(reasons, r)
	}
	sort.Strings(reasons)
	var s []metrics.Sample
	for _, r := range reasons {
		s = append(s, metrics.Sample{Name: "wicket_denials_total", Help: "Requests refused, by socket and reason.", Type: metrics.Counter,
			Labels: map[string]string{"socket": socket, "reason": r}, Value: float64(st.ByReason[r])})
	}
	s = append(s, metrics.Sample{Name: "wicket_denials_log_suppressed_total", Help: "Denials counted in a per-uid summary line instead of logged one by one.", Type: metrics.Counter,
		Labels: map[string]string{"socket": socket}, Value: float64(st.Suppressed)})
	return s
}
