package ecosystem

import (
	"testing"
)

type verdict struct {
	OK    bool   `json:"ok"`
	Sub   string `json:"sub"`
	Error string `json:"error"`
}

// checkVerdicts: the machine's token passes with its subject; every
// negative case is refused.
func checkVerdicts(t *testing.T, w *world, got map[string]verdict, cases map[string]string) {
	t.Helper()
	for name := range cases {
		v, ok := got[name]
		switch {
		case !ok:
			t.Errorf("%s: no verdict", name)
		case name == "good" && (!v.OK || v.Sub != w.subject):
			t.Errorf("the machine's token refused: %+v", v)
		case name != "good" && v.OK:
			t.Errorf("%s accepted (sub %s)", name, v.Sub)
		case name != "good":
			t.Logf("%s refused: %s", name, v.Error)
		}
	}
}

func verifierCases(t *testing.T, w *world, aud string) map[string]string {
	cases := w.bad(t, aud)
	cases["good"] = w.token(t, aud)
	return cases
}

// TestJose_StrictVerifier: jose's createRemoteJWKSet + jwtVerify, issuer,
// audience and algorithms pinned.
func TestJose_StrictVerifier(t *testing.T) {
	needNode(t)
	done(t, "jose")
	w := newWorld(t, nil)
	const aud = "api.example.com"
	cases := verifierCases(t, w, aud)
	var got map[string]verdict
	runJSON(t, js("verify.mjs"), nil, map[string]any{"issuer": w.issuer, "audience": aud, "tokens": cases}, &got)
	checkVerdicts(t, w, got, cases)
	tested("jose", npmVersion(t, "jose"), "`createRemoteJWKSet` + `jwtVerify`, issuer, audience and algorithms pinned")
}

// TestPyJWT_StrictVerifier: PyJWT's PyJWKClient + jwt.decode, issuer,
// audience and algorithms pinned.
func TestPyJWT_StrictVerifier(t *testing.T) {
	needPython(t, "jwt")
	done(t, "pyjwt")
	w := newWorld(t, nil)
	const aud = "api.example.com"
	cases := verifierCases(t, w, aud)
	var got map[string]verdict
	runJSON(t, py("verify.py"), nil, map[string]any{"issuer": w.issuer, "audience": aud, "tokens": cases}, &got)
	checkVerdicts(t, w, got, cases)
	tested("PyJWT (Debian python3-jwt)", pythonVersion(t, "jwt"), "`PyJWKClient` + `jwt.decode`, issuer, audience and algorithms pinned")
}
