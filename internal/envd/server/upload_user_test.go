package server

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestUploadAsDefaultUser: with a non-root default user (set by /init, as
// the agent does for a template's user), an upload creates missing
// parents owned by that user, replaces a file it may write (keeping the
// file's owner and mode), and is refused where the user may not write.
func TestUploadAsDefaultUser(t *testing.T) {
	requireRoot(t)
	const uid = 65534 // nobody
	e := newEnv(t, Config{})
	res := e.do("POST", "/init", strings.NewReader(`{"defaultUser":"nobody"}`), nil)
	if readAll(t, res); res.StatusCode != http.StatusNoContent {
		t.Fatalf("init: %d", res.StatusCode)
	}
	dir := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Chmod(dir, 0o777))
	rootDir := filepath.Join(dir, "root-only")
	must(os.Mkdir(rootDir, 0o755))
	shared := filepath.Join(rootDir, "shared.txt") // root's, but anyone may write it
	must(os.WriteFile(shared, []byte("old"), 0o666))
	must(os.Chmod(shared, 0o666))
	secret := filepath.Join(rootDir, "secret.txt")
	must(os.WriteFile(secret, []byte("old"), 0o644))

	owner := func(p string) (uint32, os.FileMode) {
		st, err := os.Stat(p)
		if err != nil {
			return 1<<32 - 1, 0
		}
		return st.Sys().(*syscall.Stat_t).Uid, st.Mode().Perm()
	}
	tests := []struct {
		name     string
		path     string
		wantCode int
		// owned are the paths that must then exist with the given owner.
		owned map[string]uint32
		// absent must not exist afterwards.
		absent []string
	}{
		{"new parents in a writable directory", filepath.Join(dir, "a", "b", "f.txt"), 200,
			map[string]uint32{filepath.Join(dir, "a"): uid, filepath.Join(dir, "a", "b"): uid, filepath.Join(dir, "a", "b", "f.txt"): uid}, nil},
		{"a file of the user's again", filepath.Join(dir, "a", "b", "f.txt"), 200,
			map[string]uint32{filepath.Join(dir, "a", "b", "f.txt"): uid}, nil},
		{"a root file the user may write keeps its owner", shared, 200, map[string]uint32{shared: 0}, nil},
		{"a root file the user may not write", secret, 401, map[string]uint32{secret: 0}, nil},
		{"a new file in a root directory", filepath.Join(rootDir, "new.txt"), 401, nil, []string{filepath.Join(rootDir, "new.txt")}},
		{"new parents under a root directory", filepath.Join(rootDir, "x", "y", "f.txt"), 401, nil, []string{filepath.Join(rootDir, "x")}},
	}
	for _, tc := range tests {
		res := e.do("POST", "/files?path="+tc.path, strings.NewReader("new"), nil)
		out := readAll(t, res)
		if res.StatusCode != tc.wantCode {
			t.Errorf("%s: %d %s, want %d", tc.name, res.StatusCode, out, tc.wantCode)
		}
		for p, want := range tc.owned {
			if got, _ := owner(p); got != want {
				t.Errorf("%s: %s owned by %d, want %d", tc.name, p, got, want)
			}
		}
		for _, p := range tc.absent {
			if _, err := os.Lstat(p); err == nil {
				t.Errorf("%s: %s was created", tc.name, p)
			}
		}
	}
	if b, _ := os.ReadFile(shared); string(b) != "new" {
		t.Errorf("shared file = %q", b)
	}
	if _, mode := owner(shared); mode != 0o666 {
		t.Errorf("shared file mode %o, want 666", mode)
	}
	if b, _ := os.ReadFile(secret); string(b) != "old" {
		t.Errorf("secret changed to %q", b)
	}
}
