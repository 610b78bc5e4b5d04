package builtin

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wicket-sh/wicket/internal/agent/feature"
	"github.com/wicket-sh/wicket/internal/agent/feature/spiffe"
	"github.com/wicket-sh/wicket/internal/config"
)

// [spiffe] is the feature's own section: decoded from its primitive,
// checked by its Validate with the core's socket rules, its socket kept
// apart from every token file, all of it static.
func TestSPIFFESection(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "spiffe.sock")
	c, err := LoadAgent(writeFile(t, cloudBase+fmt.Sprintf("[spiffe]\nenabled = true\nsocket_path = %q\njwt_copy_ttl = \"10m\"\n", sock)))
	if err != nil {
		t.Fatal(err)
	}
	s := spiffe.From(c)
	if !s.Enabled || s.Path != sock || s.Mode != 0o660 || s.JWTCopyTTL.Minutes() != 10 || s.X509CopyTTL.Hours() != 1 {
		t.Errorf("[spiffe] = %+v", s)
	}
	for _, f := range config.AgentDynamicFields(feature.Sections(Features())) {
		if strings.HasPrefix(f, spiffe.Key+".") {
			t.Errorf("%s is dynamic; [spiffe] is static", f)
		}
	}
	for name, tc := range map[string]struct{ toml, want string }{
		"no issuer":          {fmt.Sprintf("[spiffe]\nenabled = true\nsocket_path = %q\n", sock), "spiffe.enabled needs issuer.url"},
		"api socket":         {cloudBase + "[api]\nsocket_path = \"/run/x/api.sock\"\n[spiffe]\nenabled = true\nsocket_path = \"/run/x/api.sock\"\n", "must differ from api.socket_path"},
		"mode for others":    {cloudBase + fmt.Sprintf("[spiffe]\nenabled = true\nsocket_path = %q\nsocket_mode = \"0666\"\n", sock), "spiffe.socket_mode 0666"},
		"copy ttl":           {cloudBase + fmt.Sprintf("[spiffe]\nenabled = true\nsocket_path = %q\nx509_copy_ttl = \"1m\"\n", sock), "spiffe.x509_copy_ttl"},
		"token file over it": {cloudBase + fmt.Sprintf("[spiffe]\nenabled = true\nsocket_path = %q\n[[token_file]]\npath = %q\naudience = \"a\"\n", sock, sock), "is also spiffe.socket_path"},
		"unknown key":        {cloudBase + "[spiffe]\nenabeld = true\n", "enabeld"},
	} {
		if _, err := LoadAgent(writeFile(t, tc.toml)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want %q", name, err, tc.want)
		}
	}
	// Disabled, nothing is checked or reserved: the default path may be a
	// token file's.
	if _, err := LoadAgent(writeFile(t, cloudBase+"[[token_file]]\npath = \"/run/wicket/spiffe.sock\"\naudience = \"a\"\n")); err != nil {
		t.Errorf("disabled [spiffe] reserved its path: %v", err)
	}
}
