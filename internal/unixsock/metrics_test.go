package unixsock

import (
	"reflect"
	"strings"
	"testing"
)

// Every field of Stats (what status shows for a socket) has a metric
// with the same value, and every socket metric is a Stats field: the two
// cannot drift (peer_cred_errors once was in status only).
func TestStats_EveryFieldHasAMetric(t *testing.T) {
	// Distinct values, so a field wired to another's value shows.
	st := Stats{Open: 1, Accepted: 2, Rejected: 3, RejectedUID: 4, CredError: 5, Max: 6, MaxPerUID: 7}
	byKey := map[string]statField{}
	for _, f := range st.fields() {
		if _, dup := byKey[f.key]; dup {
			t.Errorf("field %s listed twice", f.key)
		}
		byKey[f.key] = f
	}
	v := reflect.ValueOf(st)
	typ := v.Type()
	for i := 0; i < typ.NumField(); i++ {
		key, _, _ := strings.Cut(typ.Field(i).Tag.Get("json"), ",")
		f, ok := byKey[key]
		if !ok {
			t.Errorf("status field %s has no metric", key)
			continue
		}
		delete(byKey, key)
		if want := float64(v.Field(i).Convert(reflect.TypeOf(int64(0))).Int()); f.value != want {
			t.Errorf("metric %s = %v, status %s = %v", f.name, f.value, key, want)
		}
		if !strings.HasPrefix(f.name, "wicket_connections_") {
			t.Errorf("metric %s: want the wicket_connections_ prefix", f.name)
		}
	}
	for key := range byKey {
		t.Errorf("metric for %s has no status field", key)
	}
}
