package etcd

import (
	"encoding/json"
	"fmt"

	"github.com/wicket-sh/wicket/internal/store"
	"github.com/wicket-sh/wicket/internal/store/record"
)

// Values in etcd are the same JSON records as store/bolt's (package
// record), so `wicket issuer migrate` needs no conversion and an operator
// reading etcd sees what the bbolt file held.

func encodeMachine(m *store.Machine) (string, error) {
	b, err := json.Marshal(record.FromMachine(m))
	return string(b), err
}

func decodeMachine(v []byte) (*store.Machine, error) {
	var r record.Machine
	if err := json.Unmarshal(v, &r); err != nil {
		return nil, fmt.Errorf("decoding machine: %w", err)
	}
	return r.Machine(), nil
}

func encodeKey(k *store.SealedKey) (string, error) {
	b, err := json.Marshal(record.FromKey(k))
	return string(b), err
}

func decodeKey(v []byte) (*store.SealedKey, error) {
	var r record.Key
	if err := json.Unmarshal(v, &r); err != nil {
		return nil, fmt.Errorf("decoding key: %w", err)
	}
	return r.Key(), nil
}

func encodeRevocation(r *store.Revocation) (string, error) {
	b, err := json.Marshal(record.FromRevocation(r))
	return string(b), err
}

func decodeRevocation(v []byte) (*store.Revocation, error) {
	var r record.Revocation
	if err := json.Unmarshal(v, &r); err != nil {
		return nil, fmt.Errorf("decoding revocation: %w", err)
	}
	return r.Revocation(), nil
}
