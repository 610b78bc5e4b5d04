package supervise

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func testDB(t *testing.T) UserDB {
	t.Helper()
	dir := t.TempDir()
	db := UserDB{Passwd: filepath.Join(dir, "passwd"), Group: filepath.Join(dir, "group")}
	passwd := `# comment
root:x:0:0:root:/root:/bin/sh
app:x:1000:1000::/home/app:/bin/sh
+nis
svc:x:1001:2000:service:/srv:/sbin/nologin
broken:x:notanumber:1:::
`
	group := `root:x:0:
app:x:1000:
web:x:3000:app,svc
ssl:x:3001:svc
dup:x:1000:app
staff:x:50:application
`
	if err := os.WriteFile(db.Passwd, []byte(passwd), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(db.Group, []byte(group), 0o644); err != nil {
		t.Fatal(err)
	}
	return db
}

func TestUserDB_Lookup(t *testing.T) {
	db := testDB(t)
	euid := uint32(os.Geteuid())
	tests := []struct {
		user, group string
		want        *Credential
		err         string
	}{
		{"", "", nil, ""},
		// A name: primary group plus every group listing the user, sorted, once.
		{"app", "", &Credential{UID: 1000, GID: 1000, Groups: []uint32{1000, 3000}, Home: "/home/app"}, ""},
		{"svc", "", &Credential{UID: 1001, GID: 2000, Groups: []uint32{2000, 3000, 3001}, Home: "/srv"}, ""},
		// A uid with an entry is the same user.
		{"1001", "", &Credential{UID: 1001, GID: 2000, Groups: []uint32{2000, 3000, 3001}, Home: "/srv"}, ""},
		// --group: that group only, no supplementary groups at all.
		{"svc", "web", &Credential{UID: 1001, GID: 3000, Groups: []uint32{}, Home: "/srv"}, ""},
		{"app", "77", &Credential{UID: 1000, GID: 77, Groups: []uint32{}, Home: "/home/app"}, ""},
		{"4242", "4243", &Credential{UID: 4242, GID: 4243, Groups: []uint32{}}, ""},
		{"", "web", &Credential{UID: euid, GID: 3000, Groups: []uint32{}}, ""},
		{"root", "", &Credential{UID: 0, GID: 0, Groups: []uint32{0}, Home: "/root"}, ""},
		// A uid nobody knows would get gid 0 elsewhere: refused here.
		{"4242", "", nil, "give a group"},
		{"nobody-here", "", nil, "unknown user"},
		{"app", "nogroup", nil, "unknown group"},
		{"broken", "", nil, "unknown user"},
		{"4294967295", "1", nil, "unknown user"},
		{"app", "-1", nil, "unknown group"},
	}
	for _, tt := range tests {
		t.Run(tt.user+":"+tt.group, func(t *testing.T) {
			got, err := db.Lookup(tt.user, tt.group)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("Lookup(%q, %q) = %+v, %v; want error with %q", tt.user, tt.group, got, err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Lookup(%q, %q) (-want +got):\n%s", tt.user, tt.group, diff)
			}
		})
	}
}

// No group file: a user simply has no supplementary groups; a numeric id
// needs no passwd file if the group is given.
func TestUserDB_MissingFiles(t *testing.T) {
	dir := t.TempDir()
	db := testDB(t)
	db.Group = filepath.Join(dir, "nope")
	got, err := db.Lookup("app", "")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(&Credential{UID: 1000, GID: 1000, Groups: []uint32{1000}, Home: "/home/app"}, got); diff != "" {
		t.Error(diff)
	}
	db = UserDB{Passwd: filepath.Join(dir, "nope"), Group: filepath.Join(dir, "nope")}
	if got, err := db.Lookup("5", "6"); err != nil || got.UID != 5 || got.GID != 6 {
		t.Errorf("numeric without files: %+v, %v", got, err)
	}
	if _, err := db.Lookup("app", ""); err == nil {
		t.Error("name without a passwd file: no error")
	}
}

func TestStatus_ExitCode(t *testing.T) {
	for _, tt := range []struct {
		st   Status
		want int
	}{
		{Status{Code: 0}, 0},
		{Status{Code: 7}, 7},
		{Status{Signal: 9}, 137},
		{Status{Signal: 15}, 143},
	} {
		if got := tt.st.ExitCode(); got != tt.want {
			t.Errorf("%v: ExitCode %d, want %d", tt.st, got, tt.want)
		}
	}
}
