package seal

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func newKey(t *testing.T) []byte {
	t.Helper()
	k := make([]byte, KeySize)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

func newSealer(t *testing.T, key []byte) *Sealer {
	t.Helper()
	s, err := New(key)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return s
}

func TestNew_KeyLength(t *testing.T) {
	for _, n := range []int{0, 16, 31, 33, 64} {
		if _, err := New(make([]byte, n)); err == nil {
			t.Errorf("New(%d-byte key) = nil error, want error", n)
		}
	}
}

func TestSealOpen_Roundtrip(t *testing.T) {
	s := newSealer(t, newKey(t))
	for _, plain := range [][]byte{nil, {}, []byte("x"), bytes.Repeat([]byte("private key "), 1000)} {
		ad := []byte("oidc/key-1")
		sealed, err := s.Seal(plain, ad)
		if err != nil {
			t.Fatalf("Seal: %v", err)
		}
		if sealed[0] != version1 {
			t.Errorf("version byte = %d, want %d", sealed[0], version1)
		}
		if len(plain) > 8 && bytes.Contains(sealed, plain[:8]) {
			t.Error("sealed output contains plaintext")
		}
		got, err := s.Open(sealed, ad)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		if !bytes.Equal(got, plain) {
			t.Errorf("Open = %q, want %q", got, plain)
		}
	}
}

func TestSeal_FreshNonce(t *testing.T) {
	s := newSealer(t, newKey(t))
	a, _ := s.Seal([]byte("same"), nil)
	b, _ := s.Seal([]byte("same"), nil)
	if bytes.Equal(a, b) {
		t.Error("two seals of the same input are identical; nonce not random")
	}
}

func TestOpen_Failures(t *testing.T) {
	key := newKey(t)
	s := newSealer(t, key)
	plain := []byte("-----BEGIN PRIVATE KEY----- secret")
	ad := []byte("macaroon/k1")
	sealed, err := s.Seal(plain, ad)
	if err != nil {
		t.Fatal(err)
	}
	flip := func(i int) []byte {
		b := bytes.Clone(sealed)
		b[i] ^= 1
		return b
	}
	tests := []struct {
		name   string
		sealer *Sealer
		blob   []byte
		ad     []byte
	}{
		{"tampered ciphertext", s, flip(len(sealed) - 20), ad},
		{"tampered tag", s, flip(len(sealed) - 1), ad},
		{"tampered nonce", s, flip(1), ad},
		{"unknown version", s, flip(0), ad},
		{"truncated", s, sealed[:len(sealed)-1], ad},
		{"too short", s, sealed[:5], ad},
		{"empty", s, nil, ad},
		{"wrong ad", s, sealed, []byte("macaroon/k2")},
		{"missing ad", s, sealed, nil},
		{"wrong key", newSealer(t, newKey(t)), sealed, ad},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.sealer.Open(tt.blob, tt.ad)
			if !errors.Is(err, ErrOpen) {
				t.Fatalf("Open err = %v, want ErrOpen", err)
			}
			if got != nil {
				t.Errorf("Open returned data %q on failure", got)
			}
			assertNoSecret(t, err, key, plain)
		})
	}
}

// assertNoSecret fails if err's message holds any of secrets, raw or base64.
func assertNoSecret(t *testing.T, err error, secrets ...[]byte) {
	t.Helper()
	msg := err.Error()
	for _, s := range secrets {
		for _, form := range []string{string(s), base64.StdEncoding.EncodeToString(s)} {
			if len(form) >= 4 && strings.Contains(msg, form) {
				t.Errorf("error %q contains secret material", msg)
			}
		}
	}
}

func writeFile(t *testing.T, path string, data []byte, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, data, mode); err != nil {
		t.Fatal(err)
	}
	// WriteFile's mode is filtered by the umask; set it exactly.
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

func TestLoadKeyFile(t *testing.T) {
	key := newKey(t)
	enc := base64.StdEncoding.EncodeToString(key)
	tests := []struct {
		name    string
		content string
		mode    os.FileMode
		wantErr bool
	}{
		{"plain", enc, 0o600, false},
		{"trailing newline", enc + "\n", 0o600, false},
		{"trailing crlf", enc + "\r\n", 0o600, false},
		{"owner read only", enc, 0o400, false},
		{"two newlines", enc + "\n\n", 0o600, false},
		{"trailing space", enc + " ", 0o600, true},
		{"not base64", "!!" + enc[2:], 0o600, true},
		{"short key", base64.StdEncoding.EncodeToString(key[:31]), 0o600, true},
		{"long key", base64.StdEncoding.EncodeToString(append(bytes.Clone(key), 0)), 0o600, true},
		{"raw bytes", string(key), 0o600, true},
		{"empty", "", 0o600, true},
		{"mode 0644", enc, 0o644, true},
		{"mode 0640", enc, 0o640, true},
		{"mode 0604", enc, 0o604, true},
		{"mode 0610", enc, 0o610, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "seal.key")
			writeFile(t, path, []byte(tt.content), tt.mode)
			got, err := LoadKeyFile(path)
			if tt.wantErr {
				if err == nil {
					t.Fatal("LoadKeyFile = nil error, want error")
				}
				assertNoSecret(t, err, key, []byte(tt.content))
				return
			}
			if err != nil {
				t.Fatalf("LoadKeyFile: %v", err)
			}
			if !bytes.Equal(got, key) {
				t.Error("LoadKeyFile returned a different key")
			}
		})
	}
}

func TestLoadKeyFile_GroupReadableRefused(t *testing.T) {
	key := newKey(t)
	enc := base64.StdEncoding.EncodeToString(key)
	path := filepath.Join(t.TempDir(), "seal.key")
	writeFile(t, path, []byte(enc+"\n"), 0o644)
	_, err := LoadKeyFile(path)
	if err == nil || !strings.Contains(err.Error(), "group or others") {
		t.Fatalf("LoadKeyFile(0644) err = %v, want permission refusal", err)
	}
	assertNoSecret(t, err, key, []byte(enc))
}

func TestLoadKeyFile_SymlinkRefused(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "real.key")
	if err := GenerateKeyFile(target); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "seal.key")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadKeyFile(link); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("LoadKeyFile(symlink) err = %v, want refusal", err)
	}
}

func TestLoadKeyFile_NotRegularRefused(t *testing.T) {
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadKeyFile(dir); err == nil {
		t.Fatal("LoadKeyFile(directory) = nil error, want refusal")
	}
	if _, err := LoadKeyFile(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("LoadKeyFile(missing) err = %v, want ErrNotExist", err)
	}
}

func TestGenerateKeyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "seal.key")
	if err := GenerateKeyFile(path); err != nil {
		t.Fatalf("GenerateKeyFile: %v", err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("mode = %#o, want 0600", perm)
	}
	key, err := LoadKeyFile(path)
	if err != nil {
		t.Fatalf("LoadKeyFile of generated file: %v", err)
	}
	if _, err := New(key); err != nil {
		t.Errorf("generated key unusable: %v", err)
	}
}

func TestGenerateKeyFile_NeverOverwrites(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "seal.key")
	if err := GenerateKeyFile(path); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(path)
	if err := GenerateKeyFile(path); !errors.Is(err, os.ErrExist) {
		t.Fatalf("second GenerateKeyFile err = %v, want ErrExist", err)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Error("existing key file was modified")
	}

	// A dangling symlink must not be followed to create a file elsewhere.
	elsewhere := filepath.Join(dir, "elsewhere.key")
	link := filepath.Join(dir, "link.key")
	if err := os.Symlink(elsewhere, link); err != nil {
		t.Fatal(err)
	}
	if err := GenerateKeyFile(link); !errors.Is(err, os.ErrExist) {
		t.Fatalf("GenerateKeyFile(dangling symlink) err = %v, want ErrExist", err)
	}
	if _, err := os.Lstat(elsewhere); !errors.Is(err, os.ErrNotExist) {
		t.Error("GenerateKeyFile followed a symlink")
	}
}

func TestKeyFromEnv(t *testing.T) {
	key := newKey(t)
	enc := base64.StdEncoding.EncodeToString(key)

	t.Setenv("WICKET_TEST_SEAL_KEY", enc+"\n")
	got, err := KeyFromEnv("WICKET_TEST_SEAL_KEY")
	if err != nil {
		t.Fatalf("KeyFromEnv: %v", err)
	}
	if !bytes.Equal(got, key) {
		t.Error("KeyFromEnv returned a different key")
	}

	bad := enc[:len(enc)-4]
	t.Setenv("WICKET_TEST_SEAL_KEY", bad)
	if _, err = KeyFromEnv("WICKET_TEST_SEAL_KEY"); err == nil {
		t.Fatal("KeyFromEnv(short key) = nil error")
	}
	assertNoSecret(t, err, key, []byte(bad))

	if _, err := KeyFromEnv("WICKET_TEST_SEAL_KEY_UNSET"); err == nil {
		t.Fatal("KeyFromEnv(unset) = nil error")
	}
}
