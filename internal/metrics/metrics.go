// Package metrics writes samples in the Prometheus text exposition format.
// wicket's metrics are a handful of counters and gauges read from atomics
// the services already keep, so a client library would not earn its place.
package metrics

import (
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"
)

// Type is a Prometheus metric type.
type Type string

// Metric types.
const (
	Counter Type = "counter"
	Gauge   Type = "gauge"
)

// Sample is one metric value with its labels.
type Sample struct {
	Name   string
	Help   string
	Type   Type
	Labels map[string]string
	Value  float64
}

// Write writes samples grouped by name, each family with one HELP and TYPE line.
func Write(w io.Writer, samples []Sample) error {
	var b strings.Builder
	seen := map[string]bool{}
	order := []string{}
	byName := map[string][]Sample{}
	for _, s := range samples {
		if !seen[s.Name] {
			seen[s.Name] = true
			order = append(order, s.Name)
		}
		byName[s.Name] = append(byName[s.Name], s)
	}
	for _, name := range order {
		fam := byName[name]
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n", name, escapeHelp(fam[0].Help), name, fam[0].Type)
		for _, s := range fam {
			b.WriteString(name)
			if len(s.Labels) > 0 {
				keys := make([]string, 0, len(s.Labels))
				for k := range s.Labels {
					keys = append(keys, k)
				}
				sort.Strings(keys)
				b.WriteByte('{')
				for i, k := range keys {
					if i > 0 {
						b.WriteByte(',')
					}
					fmt.Fprintf(&b, "%s=\"%s\"", k, escapeLabel(s.Labels[k]))
				}
				b.WriteByte('}')
			}
			b.WriteByte(' ')
			b.WriteString(formatValue(s.Value))
			b.WriteByte('\n')
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func formatValue(v float64) string {
	if v == math.Trunc(v) && math.Abs(v) < 1e15 {
		return strconv.FormatInt(int64(v), 10)
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}

var helpEscaper = strings.NewReplacer(`\`, `\\`, "\n", `\n`)
var labelEscaper = strings.NewReplacer(`\`, `\\`, "\n", `\n`, `"`, `\"`)

func escapeHelp(s string) string  { return helpEscaper.Replace(s) }
func escapeLabel(s string) string { return labelEscaper.Replace(s) }

// CounterDef is one counter a service reports twice: under Key in its status
// document's "counters" and as the sample Name{Labels} on /metrics.
// Declaring it once, in a CounterSet both are built from, is what keeps
// the two from drifting apart.
type CounterDef struct {
	Key    string // status key, e.g. "tokens_served"
	Name   string // metric name, e.g. "wicket_oidc_tokens_served_total"
	Help   string
	Labels map[string]string
	Value  func() uint64
}

// CounterSet is a service's list of counters.
type CounterSet []CounterDef

// Status returns the counters by status key.
func (cs CounterSet) Status() map[string]uint64 {
	m := make(map[string]uint64, len(cs))
	for _, c := range cs {
		m[c.Key] = c.Value()
	}
	return m
}

// Samples returns the counters as metric samples.
func (cs CounterSet) Samples() []Sample {
	s := make([]Sample, len(cs))
	for i, c := range cs {
		s[i] = Sample{Name: c.Name, Help: c.Help, Type: Counter, Labels: c.Labels, Value: float64(c.Value())}
	}
	return s
}
