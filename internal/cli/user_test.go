package cli

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/wrenn-dev/wrenn/internal/controlplane/cptest"
	"github.com/wrenn-dev/wrenn/internal/testenv"
)

// userCLI runs the built binary with its own config directory.
type userCLI struct {
	t   *testing.T
	bin string
	env []string
	cp  *cptest.ControlPlane
}

func newUserCLI(t *testing.T) *userCLI {
	t.Helper()
	cp := cptest.Start(t, nil)
	cfgDir := t.TempDir()
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + cfgDir, "XDG_CONFIG_HOME=" + filepath.Join(cfgDir, "config"), "TERM=xterm"}
	return &userCLI{t: t, bin: wrennBinary(t), env: env, cp: cp}
}

// with is u reporting to the subtest t.
func (u *userCLI) with(t *testing.T) *userCLI {
	c := *u
	c.t = t
	return &c
}

func (u *userCLI) run(stdin string, args ...string) testenv.Result {
	u.t.Helper()
	return testenv.RunProgram(u.t, u.env, stdin, u.bin, args...)
}

// must runs args and fails unless they exit 0.
func (u *userCLI) must(args ...string) string {
	u.t.Helper()
	r := u.run("", args...)
	if r.Code != 0 {
		u.t.Fatalf("wrenn %s: exit %d\n%s", strings.Join(args, " "), r.Code, r.Stderr)
	}
	return r.Stdout
}

func (u *userCLI) json(out any, args ...string) {
	u.t.Helper()
	raw := u.must(append(args, "-o", "json")...)
	if err := json.Unmarshal([]byte(raw), out); err != nil {
		u.t.Fatalf("wrenn %s -o json is not JSON (%v):\n%s", strings.Join(args, " "), err, raw)
	}
}

// oneLineError: exit 1 and the message on one line containing want.
func oneLineError(t *testing.T, r testenv.Result, want string) {
	t.Helper()
	if r.Code != 1 || !strings.Contains(r.Stderr, want) || strings.Count(strings.TrimSpace(r.Stderr), "\n") != 0 {
		t.Fatalf("exit %d, stderr %q; want exit 1 and one line with %q", r.Code, r.Stderr, want)
	}
}

func TestUserCLI(t *testing.T) {
	u := newUserCLI(t)
	const email, password = "cli@example.com", "a long cli passphrase"
	u.cp.Signup(t, email, password)

	oneLineError(t, u.run("", "sandbox", "list"), "not logged in")
	oneLineError(t, u.run(password+"\n", "login", "--url", u.cp.URL, "--email", email+"x"), "invalid")
	if r := u.run(password+"\n", "login", "--url", u.cp.URL, "--email", email); r.Code != 0 || !strings.Contains(r.Stderr, "Logged in") {
		t.Fatalf("login: %+v", r)
	}
	cfgPath := filepath.Join(u.env[2][len("XDG_CONFIG_HOME="):], "wrenn", "config.json")
	st, err := os.Stat(cfgPath)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("config file: %v, %v", st, err)
	}

	// An API key in a second profile, made the current one.
	var key struct{ Id, Key string }
	u.json(&key, "keys", "create", "cli")
	if !strings.HasPrefix(key.Key, "wrn_") {
		t.Fatalf("key %+v", key)
	}
	u.must("login", "--url", u.cp.URL, "--api-key", key.Key, "--profile", "ci")
	oneLineError(t, u.run("", "login", "--url", u.cp.URL, "--api-key", "wrn_"+strings.Repeat("z", 40), "--profile", "bad"), "invalid")

	var sb struct {
		ID       string            `json:"id"`
		Status   string            `json:"status"`
		Metadata map[string]string `json:"metadata"`
		Vcpus    int               `json:"vcpus"`
	}
	u.json(&sb, "sandbox", "create", "--vcpus", "1", "--memory", "512", "--timeout", "5m", "--metadata", "owner=cli")
	if sb.Status != "running" || sb.Metadata["owner"] != "cli" || sb.Vcpus != 1 || !u.cp.Agent.Has(sb.ID) {
		t.Fatalf("created %+v", sb)
	}
	var list []struct{ ID string }
	u.json(&list, "sandbox", "list", "--metadata", "owner=cli")
	if len(list) != 1 || list[0].ID != sb.ID {
		t.Fatalf("list %+v", list)
	}
	if table := u.must("sandbox", "list"); !strings.Contains(table, "ID") || !strings.Contains(table, "STATUS") || !strings.Contains(table, sb.ID) {
		t.Fatalf("table:\n%s", table)
	}
	oneLineError(t, u.run("", "sandbox", "get", "sb-doesnotexist"), "not found")

	execs := []struct {
		name           string
		args           []string
		stdin          string
		stdout, stderr string
		code           int
	}{
		{"output", []string{"echo", "hello", "cli"}, "", "hello cli\n", "", 0},
		{"flags belong to the command", []string{"echo", "-n", "x"}, "", "-n x\n", "", 0},
		{"exit code", []string{"false"}, "", "", "", 1},
		{"stderr and its code", []string{"stderr", "oops"}, "", "", "oops", 2},
		{"unknown command", []string{"nope"}, "", "", "", 127},
	}
	if r := u.run("piped in", "sandbox", "exec", "-i", sb.ID, "--", "cat"); r.Code != 0 || r.Stdout != "piped in" {
		t.Fatalf("exec -i: %+v", r)
	}
	if r := u.run("", "sandbox", "exec", sb.ID, "echo", "x"); r.Code != ExitUsage || !strings.Contains(r.Stderr, "after --") {
		t.Fatalf("exec without --: %+v", r)
	}
	for _, e := range execs {
		t.Run("exec/"+e.name, func(t *testing.T) {
			u := u.with(t)
			r := u.run(e.stdin, append([]string{"sandbox", "exec", sb.ID, "--"}, e.args...)...)
			if r.Code != e.code || r.Stdout != e.stdout || (e.stderr != "" && r.Stderr != e.stderr) {
				t.Fatalf("got %+v", r)
			}
		})
	}

	t.Run("cp", func(t *testing.T) {
		u := u.with(t)
		dir := t.TempDir()
		data := make([]byte, 2<<20+3)
		_, _ = rand.Read(data)
		if err := os.WriteFile(filepath.Join(dir, "blob"), data, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Join(dir, "tree", "sub"), 0o755); err != nil {
			t.Fatal(err)
		}
		for name, body := range map[string]string{"tree/a.txt": "a\n", "tree/sub/b.txt": "b\n"} {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		u.must("sandbox", "cp", filepath.Join(dir, "blob"), sb.ID+":/home/user/blob")
		u.must("sandbox", "cp", sb.ID+":/home/user/blob", filepath.Join(dir, "blob.back"))
		if back, err := os.ReadFile(filepath.Join(dir, "blob.back")); err != nil || !bytes.Equal(back, data) {
			t.Fatalf("file copied back differs (%d bytes, %v)", len(back), err)
		}
		u.must("sandbox", "cp", filepath.Join(dir, "tree"), sb.ID+":/home/user/tree")
		u.must("sandbox", "cp", sb.ID+":/home/user/tree", filepath.Join(dir, "tree.back"))
		for name, body := range map[string]string{"a.txt": "a\n", "sub/b.txt": "b\n"} {
			if got, err := os.ReadFile(filepath.Join(dir, "tree.back", name)); err != nil || string(got) != body {
				t.Fatalf("tree.back/%s = %q, %v", name, got, err)
			}
		}
		// A missing local file fails before anything is sent.
		var uploads atomic.Int32
		handler := u.cp.Handler
		u.cp.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasSuffix(r.URL.Path, "/files/write") {
				uploads.Add(1)
			}
			handler.ServeHTTP(w, r)
		})
		defer func() { u.cp.Handler = handler }()
		oneLineError(t, u.run("", "sandbox", "cp", filepath.Join(dir, "missing"), sb.ID+":/x"), "no such file")
		if uploads.Load() != 0 {
			t.Fatal("cp of a missing file sent an upload")
		}
		oneLineError(t, u.run("", "sandbox", "cp", sb.ID+":/home/user/none", filepath.Join(dir, "none")), "does not exist")
	})

	t.Run("snapshots and templates", func(t *testing.T) {
		u := u.with(t)
		var snap struct{ Name string }
		u.json(&snap, "snapshot", "create", sb.ID, "--name", "cli-snap")
		var snaps []struct{ Name string }
		u.json(&snaps, "snapshot", "list")
		if snap.Name != "cli-snap" || len(snaps) != 1 {
			t.Fatalf("snapshot %+v, list %+v", snap, snaps)
		}
		if out := u.must("template", "list"); !strings.Contains(out, "minimal") || !strings.Contains(out, "cli-snap") {
			t.Fatalf("templates:\n%s", out)
		}
		u.must("snapshot", "rm", "cli-snap")
	})

	// Pause, resume, rm; a session-only command with an API key says so.
	u.must("sandbox", "pause", sb.ID)
	u.must("sandbox", "resume", sb.ID)
	oneLineError(t, u.run("", "keys", "list"), "session")
	var keys []struct{ Id, Name string }
	u.json(&keys, "keys", "list", "--profile", "default")
	if len(keys) != 1 || keys[0].Name != "cli" {
		t.Fatalf("keys %+v", keys)
	}
	u.must("sandbox", "rm", sb.ID)
	u.must("keys", "revoke", key.Id, "--profile", "default")
	oneLineError(t, u.run("", "sandbox", "list"), "wrenn login")
	u.must("logout", "--profile", "ci")
	oneLineError(t, u.run("", "sandbox", "list", "--profile", "ci"), "not logged in")
}

// TestShellRestoresTheTerminal drives `wrenn sandbox shell` in a
// pseudo-terminal: the terminal is raw while the shell runs, keystrokes
// reach the sandbox, and the previous mode is back after the CLI is
// stopped.
func TestShellRestoresTheTerminal(t *testing.T) {
	u := newUserCLI(t)
	u.cp.Signup(t, "shell@example.com", "a long shell passphrase")
	if r := u.run("a long shell passphrase\n", "login", "--url", u.cp.URL, "--email", "shell@example.com"); r.Code != 0 {
		t.Fatalf("login %+v", r)
	}
	var sb struct{ ID string }
	u.json(&sb, "sandbox", "create")

	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer ptmx.Close()
	defer tty.Close()
	if err := pty.Setsize(ptmx, &pty.Winsize{Cols: 90, Rows: 20}); err != nil {
		t.Fatal(err)
	}
	echoOn := func() bool {
		st, err := unix.IoctlGetTermios(int(tty.Fd()), unix.TCGETS)
		if err != nil {
			t.Fatal(err)
		}
		return st.Lflag&unix.ECHO != 0
	}
	if !echoOn() {
		t.Fatal("a new pty is not in cooked mode")
	}
	cmd := exec.Command(u.bin, "sandbox", "shell", sb.ID)
	cmd.Env = u.env
	cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var screen testenv.SyncBuffer
	go func() { _, _ = io.Copy(&screen, ptmx) }()
	deadline := time.Now().Add(20 * time.Second)
	for echoOn() {
		if time.Now().After(deadline) {
			t.Fatalf("the shell did not put the terminal in raw mode; screen %q", screen.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The in-memory terminal echoes what it is sent.
	if _, err := ptmx.Write([]byte("echo hi\r")); err != nil {
		t.Fatal(err)
	}
	for !strings.Contains(screen.String(), "echo hi") {
		if time.Now().After(deadline) {
			t.Fatalf("screen %q", screen.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 {
			t.Fatalf("shell after SIGTERM: %v", err)
		}
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("the shell did not end on SIGTERM")
	}
	if !echoOn() {
		t.Fatal("the terminal was left in raw mode")
	}
	for !strings.Contains(screen.String(), "interrupted") {
		if time.Now().After(deadline) {
			t.Fatalf("no message after SIGTERM: %q", screen.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Every user command documents itself with examples.
func TestUserCommandsHaveExamples(t *testing.T) {
	root := newRoot(&bytes.Buffer{}, &bytes.Buffer{})
	var walk func(*cobra.Command)
	seen := 0
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			if sub.RunE != nil && !sub.HasSubCommands() {
				if sub.Example == "" {
					t.Errorf("%s has no examples", sub.CommandPath())
				}
				seen++
			}
			walk(sub)
		}
	}
	for _, name := range []string{"login", "logout", "sandbox", "snapshot", "template", "keys"} {
		c, _, err := root.Find([]string{name})
		if err != nil {
			t.Fatal(err)
		}
		if c.HasSubCommands() {
			walk(c)
		}
		if c.Example == "" {
			t.Errorf("%s has no examples", name)
		}
	}
	if seen < 15 {
		t.Fatalf("only %d user commands found", seen)
	}
}
