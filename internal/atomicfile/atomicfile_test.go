package atomicfile_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/atomicfile"
)

// The test binary doubles as the child process of the crash and
// failure-injection tests: ATOMICFILE_CHILD names what it does.
func TestMain(m *testing.M) {
	switch os.Getenv("ATOMICFILE_CHILD") {
	case "":
		os.Exit(m.Run())
	case "rewrite-forever":
		rewriteForever(os.Args[len(os.Args)-1])
	case "write-over-limit":
		writeOverLimit(os.Args[len(os.Args)-1])
	default:
		fmt.Fprintln(os.Stderr, "unknown ATOMICFILE_CHILD")
		os.Exit(2)
	}
}

const crashSize = 8 << 20

// content is crashSize bytes of one letter: a mix of two is easy to spot.
func content(c byte) []byte { return bytes.Repeat([]byte{c}, crashSize) }

// rewriteForever replaces path with all-'a' and all-'b' in turn, in small
// writes so that a kill lands inside a write most of the time.
func rewriteForever(path string) {
	bodies := [][]byte{content('a'), content('b')}
	for i := 0; ; i++ {
		f, err := atomicfile.New(path, 0o644)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		for b := bodies[i%2]; len(b) > 0; b = b[min(len(b), 4096):] {
			if _, err := f.Write(b[:min(len(b), 4096)]); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
		}
		if err := f.Commit(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		if i == 0 {
			fmt.Println("ready")
		}
	}
}

// writeOverLimit tries to replace path with more than the file size limit
// it sets for itself lets it write: the write fails with EFBIG.
func writeOverLimit(path string) {
	signal.Ignore(syscall.SIGXFSZ) // get EFBIG instead of dying
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	lim.Cur = 1 << 20
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	err := atomicfile.WriteFile(path, make([]byte, 2<<20), 0o644)
	if !errors.Is(err, syscall.EFBIG) {
		fmt.Fprintf(os.Stderr, "WriteFile over the size limit: %v, want EFBIG\n", err)
		os.Exit(1)
	}
}

func child(mode, path string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^$", path)
	cmd.Env = append(os.Environ(), "ATOMICFILE_CHILD="+mode)
	cmd.Stderr = os.Stderr
	return cmd
}

// leftovers lists dir's entries other than keep.
func leftovers(t *testing.T, dir string, keep ...string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if !contains(keep, e.Name()) {
			out = append(out, e.Name())
		}
	}
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// TestCrashLeavesOldOrNew kills a writer at random moments: the target
// holds one complete version every time, never a mix or a truncation.
func TestCrashLeavesOldOrNew(t *testing.T) {
	const rounds = 20
	midWrite := 0
	for round := range rounds {
		dir := t.TempDir()
		path := filepath.Join(dir, "target")
		cmd := child("rewrite-forever", path)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "ready\n" {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("round %d: child said %q, %v", round, line, err)
		}
		time.Sleep(time.Duration(round%7) * 3 * time.Millisecond)
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		cmd.Wait()

		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if !bytes.Equal(got, content('a')) && !bytes.Equal(got, content('b')) {
			t.Fatalf("round %d: target holds %d bytes that are neither version", round, len(got))
		}
		// A kill inside a write leaves the hidden temporary file, never
		// anything else.
		for _, name := range leftovers(t, dir, "target") {
			if !strings.HasPrefix(name, ".target.tmp-") {
				t.Fatalf("round %d: unexpected file %q", round, name)
			}
			midWrite++
		}
	}
	if midWrite == 0 {
		t.Fatalf("no kill in %d rounds landed inside a write: the test did not test anything", rounds)
	}
	t.Logf("%d of %d kills landed inside a write", midWrite, rounds)
}

// TestFailuresKeepOldContent injects failures at each step: the target
// keeps its old content and no temporary file is left.
func TestFailuresKeepOldContent(t *testing.T) {
	old := []byte("old content\n")
	tests := []struct {
		name    string
		replace func(path string) error
	}{
		{
			name: "write fails (file size limit)",
			replace: func(path string) error {
				return child("write-over-limit", path).Run()
			},
		},
		{
			name: "aborted stream",
			replace: func(path string) error {
				f, err := atomicfile.New(path, 0o644)
				if err != nil {
					return err
				}
				f.Write([]byte("half of the new"))
				f.Abort()
				f.Abort() // twice is harmless
				return nil
			},
		},
		{
			name: "rename fails (directory in the way)",
			replace: func(path string) error {
				// The old content lives beside a directory the rename hits.
				f, err := atomicfile.New(filepath.Join(filepath.Dir(path), "blocked"), 0o644)
				if err != nil {
					return err
				}
				defer f.Abort()
				f.Write([]byte("new"))
				if err := f.Commit(); err == nil {
					return errors.New("commit over a non-empty directory succeeded")
				}
				return nil
			},
		},
		{
			name: "commit twice, write after commit",
			replace: func(path string) error {
				f, err := atomicfile.New(filepath.Join(filepath.Dir(path), "other"), 0o644)
				if err != nil {
					return err
				}
				defer f.Abort()
				f.Write([]byte("x"))
				if err := f.Commit(); err != nil {
					return err
				}
				if err := f.Commit(); !errors.Is(err, os.ErrClosed) {
					return fmt.Errorf("second commit: %v, want ErrClosed", err)
				}
				if _, err := f.Write([]byte("y")); !errors.Is(err, os.ErrClosed) {
					return fmt.Errorf("write after commit: %v, want ErrClosed", err)
				}
				return os.Remove(filepath.Join(filepath.Dir(path), "other"))
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "target")
			if err := os.WriteFile(path, old, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.MkdirAll(filepath.Join(dir, "blocked", "inside"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := tt.replace(path); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(path)
			if err != nil || !bytes.Equal(got, old) {
				t.Fatalf("target = %q, %v; want the old content", got, err)
			}
			if left := leftovers(t, dir, "target", "blocked"); len(left) > 0 {
				t.Fatalf("left behind: %v", left)
			}
		})
	}
}

func TestWriteFileModeIsExact(t *testing.T) {
	tests := []struct {
		name     string
		existing fs.FileMode // 0: no file before
		perm     fs.FileMode
	}{
		{"new secret", 0, 0o600},
		{"new group-readable", 0, 0o640},
		{"new executable", 0, 0o755},
		{"replace widens", 0o600, 0o644},
		{"replace narrows", 0o666, 0o600},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "f")
			if tt.existing != 0 {
				if err := os.WriteFile(path, []byte("old"), tt.existing); err != nil {
					t.Fatal(err)
				}
				os.Chmod(path, tt.existing)
			}
			if err := atomicfile.WriteFile(path, []byte("new"), tt.perm); err != nil {
				t.Fatal(err)
			}
			st, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode().Perm() != tt.perm {
				t.Fatalf("mode %v, want %v", st.Mode().Perm(), tt.perm)
			}
			if got, _ := os.ReadFile(path); string(got) != "new" {
				t.Fatalf("content %q", got)
			}
		})
	}
}

func TestNewInMissingDirectory(t *testing.T) {
	if _, err := atomicfile.New(filepath.Join(t.TempDir(), "missing", "f"), 0o644); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("err = %v, want ErrNotExist", err)
	}
}

// A tool writing the temporary file by name (mkfs, qemu-img) is synced
// and published like a stream.
func TestToolWritesByName(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "img")
	f, err := atomicfile.New(path, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Abort()
	if err := exec.Command("sh", "-c", `printf tool > "$1"`, "sh", f.TempName()).Run(); err != nil {
		t.Fatal(err)
	}
	if err := f.Commit(); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(path); string(got) != "tool" {
		t.Fatalf("content %q", got)
	}
	if left := leftovers(t, dir, "img"); len(left) > 0 {
		t.Fatalf("left behind: %v", left)
	}
}

func TestSymlinkReplaces(t *testing.T) {
	dir := t.TempDir()
	link := filepath.Join(dir, "current")
	for _, target := range []string{"v1", "v2"} {
		if err := atomicfile.Symlink(target, link); err != nil {
			t.Fatal(err)
		}
		if got, err := os.Readlink(link); err != nil || got != target {
			t.Fatalf("link -> %q, %v; want %q", got, err, target)
		}
	}
	if left := leftovers(t, dir, "current"); len(left) > 0 {
		t.Fatalf("left behind: %v", left)
	}
	// A directory in the way: the error is reported and nothing is left.
	if err := os.MkdirAll(filepath.Join(dir, "dir", "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := atomicfile.Symlink("v3", filepath.Join(dir, "dir")); err == nil {
		t.Fatal("symlink over a non-empty directory succeeded")
	}
	if left := leftovers(t, dir, "current", "dir"); len(left) > 0 {
		t.Fatalf("left behind: %v", left)
	}
}
