package workloadapi

import "testing"

// A stream answers again only when the names change, compared as sets:
// order and repeats do not count, a different name does, even when the
// lists are as long.
func TestSameNames(t *testing.T) {
	cases := []struct {
		a, b []string
		want bool
	}{
		{nil, nil, true},
		{nil, []string{}, true},
		{[]string{"default"}, []string{"default"}, true},
		{[]string{"default", "ROOTCA"}, []string{"ROOTCA", "default"}, true},
		{[]string{"x", "x", "y"}, []string{"y", "x"}, true},
		{[]string{"x", "x"}, []string{"x", "y"}, false},
		{[]string{"x", "y"}, []string{"x", "x"}, false},
		{[]string{"default"}, []string{"default", "ALL"}, false},
		{[]string{"default", "ALL"}, []string{"default"}, false},
		{nil, []string{""}, false},
		{[]string{""}, nil, false},
	}
	for _, c := range cases {
		if got := sameNames(c.a, c.b); got != c.want {
			t.Errorf("sameNames(%q, %q) = %v, want %v", c.a, c.b, got, c.want)
		}
	}
}
