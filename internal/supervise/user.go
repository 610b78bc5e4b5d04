package supervise

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strconv"
	"strings"
)

// Credential is the identity the workload runs as.
type Credential struct {
	UID, GID uint32
	// Groups are the supplementary groups set with setgroups; empty means
	// none at all (never "inherit this process's groups").
	Groups []uint32
	// Home is the user's home directory from the passwd file, "" when the
	// user has no entry there.
	Home string
}

// UserDB names the files users and groups are looked up in. Like runc, it
// reads them directly instead of going through NSS: an init in a container
// must resolve names from the image's own files, the same way whether the
// binary is static or not.
type UserDB struct {
	Passwd, Group string
}

// SystemUserDB is /etc/passwd and /etc/group.
var SystemUserDB = UserDB{Passwd: "/etc/passwd", Group: "/etc/group"}

// LookupCredential resolves user and group (names or numeric ids) with
// SystemUserDB; see [UserDB.Lookup].
func LookupCredential(user, group string) (*Credential, error) {
	return SystemUserDB.Lookup(user, group)
}

// Lookup resolves user and group, each a name or a numeric id:
//
//   - neither given: nil, the workload keeps this process's identity;
//   - user alone: the user's uid, primary group and, as initgroups(3)
//     does, every group of the group file that lists the user by name;
//     a numeric uid without a passwd entry needs an explicit group, so
//     that the workload never silently runs with gid 0;
//   - group given: exactly that gid and no supplementary groups at all;
//     without user, the uid stays this process's effective uid.
func (db UserDB) Lookup(user, group string) (*Credential, error) {
	if user == "" && group == "" {
		return nil, nil
	}
	c := &Credential{UID: uint32(os.Geteuid()), GID: uint32(os.Getegid())}
	var name string
	if user != "" {
		pw, err := db.lookupUser(user)
		if err != nil {
			return nil, err
		}
		c.UID = pw.uid
		if pw.name != "" {
			name = pw.name
			c.GID, c.Home = pw.gid, pw.home
		} else if group == "" {
			return nil, fmt.Errorf("user %s has no entry in %s: give a group as well", user, db.Passwd)
		}
	}
	if group != "" {
		gid, err := db.lookupGroup(group)
		if err != nil {
			return nil, err
		}
		c.GID, c.Groups = gid, []uint32{}
		return c, nil
	}
	groups, err := db.memberOf(name)
	if err != nil {
		return nil, err
	}
	c.Groups = append([]uint32{c.GID}, groups...)
	c.Groups = slices.Compact(sortedCopy(c.Groups))
	return c, nil
}

func sortedCopy(s []uint32) []uint32 {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

type passwdEntry struct {
	name     string // "" when a numeric uid has no entry
	uid, gid uint32
	home     string
}

// parseID parses a numeric uid or gid; -1 (4294967295) is not an id.
func parseID(s string) (uint32, bool) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n == 1<<32-1 {
		return 0, false
	}
	return uint32(n), true
}

func (db UserDB) lookupUser(user string) (passwdEntry, error) {
	uid, numeric := parseID(user)
	var found *passwdEntry
	err := eachLine(db.Passwd, func(f []string) bool {
		if len(f) < 7 {
			return true
		}
		u, ok1 := parseID(f[2])
		g, ok2 := parseID(f[3])
		if !ok1 || !ok2 {
			return true
		}
		if (numeric && u == uid) || (!numeric && f[0] == user) {
			found = &passwdEntry{name: f[0], uid: u, gid: g, home: f[5]}
			return false
		}
		return true
	})
	switch {
	case err != nil && !(numeric && errors.Is(err, fs.ErrNotExist)):
		return passwdEntry{}, fmt.Errorf("look up user %q: %w", user, err)
	case found != nil:
		return *found, nil
	case numeric:
		return passwdEntry{uid: uid}, nil
	}
	return passwdEntry{}, fmt.Errorf("unknown user %q (not in %s)", user, db.Passwd)
}

func (db UserDB) lookupGroup(group string) (uint32, error) {
	if gid, ok := parseID(group); ok {
		return gid, nil
	}
	var (
		gid   uint32
		found bool
	)
	err := eachLine(db.Group, func(f []string) bool {
		if len(f) < 3 || f[0] != group {
			return true
		}
		gid, found = parseID(f[2])
		return !found
	})
	if err != nil {
		return 0, fmt.Errorf("look up group %q: %w", group, err)
	}
	if !found {
		return 0, fmt.Errorf("unknown group %q (not in %s)", group, db.Group)
	}
	return gid, nil
}

// memberOf returns the gids of the groups that list name as a member. A
// missing group file means no supplementary groups.
func (db UserDB) memberOf(name string) ([]uint32, error) {
	if name == "" {
		return nil, nil
	}
	var gids []uint32
	err := eachLine(db.Group, func(f []string) bool {
		if len(f) < 4 {
			return true
		}
		gid, ok := parseID(f[2])
		if ok && slices.Contains(strings.Split(f[3], ","), name) {
			gids = append(gids, gid)
		}
		return true
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read groups of %q: %w", name, err)
	}
	return gids, nil
}

// maxLine bounds one line of a passwd or group file.
const maxLine = 64 << 10

// eachLine calls fn with the colon-separated fields of every entry of the
// file at path, skipping blank lines, comments and NIS compat entries,
// until fn returns false.
func eachLine(path string, fn func(fields []string) bool) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 4096), maxLine)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == '+' || line[0] == '-' {
			continue
		}
		if !fn(strings.Split(line, ":")) {
			return nil
		}
	}
	return sc.Err()
}
