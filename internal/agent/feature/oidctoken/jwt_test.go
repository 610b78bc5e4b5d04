package oidctoken

import (
	"encoding/base64"
	"testing"
)

func TestJWTIssuedAt(t *testing.T) {
	enc := func(payload string) string {
		return "e30." + base64.RawURLEncoding.EncodeToString([]byte(payload)) + ".c2ln"
	}
	for _, tc := range []struct {
		tok  string
		want int64 // 0: not found
	}{
		{enc(`{"iat":1700000000,"exp":1700000600}`), 1700000000},
		{enc(`{"iat":1700000000.5}`), 1700000000},
		{enc(`{"exp":1}`), 0},
		{enc(`{"iat":"soon"}`), 0},
		{enc(`{"iat":-5}`), 0},
		{"a.b", 0},
		{"a.!!.c", 0},
	} {
		got, ok := jwtIssuedAt(tc.tok)
		if ok != (tc.want != 0) || ok && got.Unix() != tc.want {
			t.Errorf("jwtIssuedAt(%q) = %v, %v; want %d", tc.tok, got, ok, tc.want)
		}
	}
}
