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
		lb := map[string]string{"socket": l.Name()}
		for _, f := range l.Stats().fields() {
			s = append(s, metrics.Sample{Name: f.name, Help: f.help, Type: f.typ, Labels: lb, Value: f.value})
		}
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

// statField is one Stats field as a metric sample.
type statField struct {
	key, name, help string // key: the field's JSON name
	typ             metrics.Type
	value           float64
}

// fields lists every Stats field with its metric, so /metrics and the
// status document's sockets show the same numbers
// (TestStats_EveryFieldHasAMetric).
func (st Stats) fields() []statField {
	return []statField{
		{"open", "wicket_connections_open", "Open connections.", metrics.Gauge, float64(st.Open)},
		{"accepted", "wicket_connections_accepted_total", "Accepted connections.", metrics.Counter, float64(st.Accepted)},
		{"rejected_over_cap", "wicket_connections_rejected_total", "Connections closed at once because the socket was at its cap.", metrics.Counter, float64(st.Rejected)},
		{"rejected_over_uid_cap", "wicket_connections_rejected_per_uid_total", "Connections closed at once because their peer uid was at its cap.", metrics.Counter, float64(st.RejectedUID)},
		{"peer_cred_errors", "wicket_connections_peer_cred_errors_total", "Connections closed because their peer credentials could not be read.", metrics.Counter, float64(st.CredError)},
		{"max", "wicket_connections_max", "The socket's connection cap.", metrics.Gauge, float64(st.Max)},
		{"max_per_uid", "wicket_connections_max_per_uid", "The socket's connection cap per peer uid.", metrics.Gauge, float64(st.MaxPerUID)},
	}
}
