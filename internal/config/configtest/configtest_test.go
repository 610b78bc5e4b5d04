package configtest

import "testing"

func TestMergeTOML(t *testing.T) {
	base := "top = 1\n[oidc]\ngrace = \"2h\"\nalg = \"RS256\"\n[log]\nlevel = \"info\"\n"
	extra := "[oidc]\ngrace = \"15m\"\n[[policy]]\nuids = [0]\n[[policy]]\nuids = [1]\n[new]\nk = 2\n"
	want := "top = 1\n[oidc]\nalg = \"RS256\"\ngrace = \"15m\"\n[log]\nlevel = \"info\"\n[[policy]]\nuids = [0]\n[[policy]]\nuids = [1]\n[new]\nk = 2\n"
	if got := MergeTOML(base, extra); got != want {
		t.Errorf("MergeTOML:\n%s\nwant:\n%s", got, want)
	}
}
