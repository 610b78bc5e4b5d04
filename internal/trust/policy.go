package trust

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
)

// Policy is an AWS IAM policy document, as much of it as a role trust
// policy uses. Decoding accepts IAM's shorthands (one statement as an
// object, one value as a string); encoding writes one value as a string.
type Policy struct {
	Version   string     `json:"Version"`
	ID        string     `json:"Id,omitempty"`
	Statement Statements `json:"Statement"`
}

// Statements decodes from one statement object or an array of them.
type Statements []Statement

// UnmarshalJSON implements json.Unmarshaler.
func (s *Statements) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '{' {
		var one Statement
		if err := json.Unmarshal(b, &one); err != nil {
			return err
		}
		*s = Statements{one}
		return nil
	}
	var many []Statement
	if err := json.Unmarshal(b, &many); err != nil {
		return err
	}
	*s = many
	return nil
}

// Statement is one policy statement.
type Statement struct {
	Sid          string                       `json:"Sid,omitempty"`
	Effect       string                       `json:"Effect"`
	Principal    *Principal                   `json:"Principal,omitempty"`
	NotPrincipal *Principal                   `json:"NotPrincipal,omitempty"`
	Action       Values                       `json:"Action,omitempty"`
	NotAction    Values                       `json:"NotAction,omitempty"`
	Resource     Values                       `json:"Resource,omitempty"`
	Condition    map[string]map[string]Values `json:"Condition,omitempty"`
}

// Principal is "*" (Wildcard) or a map of principal types ("Federated",
// "AWS", "Service", ...) to values.
type Principal struct {
	Wildcard bool
	Types    map[string]Values
}

// MarshalJSON implements json.Marshaler.
func (p Principal) MarshalJSON() ([]byte, error) {
	if p.Wildcard {
		return []byte(`"*"`), nil
	}
	return json.Marshal(p.Types)
}

// UnmarshalJSON implements json.Unmarshaler.
func (p *Principal) UnmarshalJSON(b []byte) error {
	var s string
	if json.Unmarshal(b, &s) == nil {
		if s != "*" {
			return errors.New(`a principal that is a string must be "*"`)
		}
		*p = Principal{Wildcard: true}
		return nil
	}
	var m map[string]Values
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	*p = Principal{Types: m}
	return nil
}

// Values is a string or an array of strings; booleans and numbers (as in
// some conditions) decode to their JSON text.
type Values []string

// MarshalJSON implements json.Marshaler.
func (v Values) MarshalJSON() ([]byte, error) {
	if len(v) == 1 {
		return json.Marshal(v[0])
	}
	return json.Marshal([]string(v))
}

// UnmarshalJSON implements json.Unmarshaler.
func (v *Values) UnmarshalJSON(b []byte) error {
	var raw any
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	one := func(x any) (string, error) {
		switch x := x.(type) {
		case string:
			return x, nil
		case bool:
			return strconv.FormatBool(x), nil
		case float64:
			return strconv.FormatFloat(x, 'f', -1, 64), nil
		}
		return "", fmt.Errorf("want a string, got %T", x)
	}
	switch raw := raw.(type) {
	case []any:
		out := make(Values, 0, len(raw))
		for _, x := range raw {
			s, err := one(x)
			if err != nil {
				return err
			}
			out = append(out, s)
		}
		*v = out
	default:
		s, err := one(raw)
		if err != nil {
			return err
		}
		*v = Values{s}
	}
	return nil
}

// sortedKeys returns m's keys in order, so findings come out the same way
// every time.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
