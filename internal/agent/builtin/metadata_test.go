package builtin

import (
	"strings"
	"testing"
)

// TestMetadata_OwnsNoSection: the metadata feature has no settings, so a
// [metadata] table in the file is an unknown key, as it was before the
// feature became a module.
func TestMetadata_OwnsNoSection(t *testing.T) {
	if _, err := LoadAgent(writeFile(t, "[metadata]\nwait = \"1s\"\n")); err == nil || !strings.Contains(err.Error(), "unknown keys") {
		t.Errorf("[metadata]: err = %v", err)
	}
}
