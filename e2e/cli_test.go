package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"github.com/wrenn-dev/wrenn/internal/testenv"
	"github.com/wrenn-dev/wrenn/sdk/go/wrenn"
)

// cliUser runs the `wrenn` user commands with a config directory of its own.
type cliUser struct {
	t   testing.TB
	bin string
	env []string
}

func (u cliUser) run(stdin string, args ...string) testenv.Result {
	u.t.Helper()
	return testenv.RunProgram(u.t, u.env, stdin, u.bin, args...)
}

func (u cliUser) must(args ...string) testenv.Result {
	u.t.Helper()
	r := u.run("", args...)
	if r.Code != 0 {
		u.t.Fatalf("wrenn %s: exit %d\n%s", strings.Join(args, " "), r.Code, r.Stderr)
	}
	return r
}

// TestCLIAndSDKOnVMs drives the `wrenn` CLI and the Go SDK against a real
// control plane and agent booting QEMU VMs: login, create, exec with its
// exit code, a 100 MiB file copied both ways byte for byte, an interactive
// shell in a pseudo-terminal, a streamed exec and a resized terminal from
// the SDK, and a template build followed live.
func TestCLIAndSDKOnVMs(t *testing.T) {
	p := startBuildPlatform(t)
	home := t.TempDir()
	u := cliUser{t: t, bin: wrennBin(t), env: childEnv("HOME="+home, "XDG_CONFIG_HOME="+filepath.Join(home, ".config"), "TERM=xterm")}
	if r := u.run(e2ePassword(p.adminEmail)+"\n", "login", "--url", p.base, "--email", p.adminEmail); r.Code != 0 {
		t.Fatalf("login: %+v", r)
	}
	var sb struct{ ID, Status string }
	if err := json.Unmarshal([]byte(u.must("sandbox", "create", "--timeout", "0", "-o", "json").Stdout), &sb); err != nil || sb.Status != "running" {
		t.Fatalf("create: %+v %v", sb, err)
	}

	t.Run("exec", func(t *testing.T) {
		u := u
		u.t = t
		r := u.run("", "sandbox", "exec", sb.ID, "--", "sh", "-c", "echo out; echo err >&2; exit 7")
		if r.Code != 7 || r.Stdout != "out\n" || r.Stderr != "err\n" {
			t.Fatalf("exec: %+v", r)
		}
		if r := u.run("in from stdin", "sandbox", "exec", "-i", sb.ID, "--", "cat"); r.Code != 0 || r.Stdout != "in from stdin" {
			t.Fatalf("exec with stdin: %+v", r)
		}
	})

	t.Run("cp 100 MiB both ways", func(t *testing.T) {
		u := u
		u.t = t
		dir := t.TempDir()
		src := filepath.Join(dir, "big")
		f, err := os.Create(src)
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		if _, err := io.CopyN(io.MultiWriter(f, h), rand.Reader, 100<<20); err != nil {
			t.Fatal(err)
		}
		f.Close()
		sum := hex.EncodeToString(h.Sum(nil))
		start := time.Now()
		u.must("sandbox", "cp", src, sb.ID+":/home/user/big")
		up := time.Since(start)
		if r := u.must("sandbox", "exec", sb.ID, "--", "sha256sum", "/home/user/big"); !strings.HasPrefix(r.Stdout, sum) {
			t.Fatalf("in the sandbox: %q, want %s", r.Stdout, sum)
		}
		start = time.Now()
		u.must("sandbox", "cp", sb.ID+":/home/user/big", filepath.Join(dir, "back"))
		down := time.Since(start)
		back, err := os.Open(filepath.Join(dir, "back"))
		if err != nil {
			t.Fatal(err)
		}
		defer back.Close()
		h2 := sha256.New()
		if _, err := io.Copy(h2, back); err != nil {
			t.Fatal(err)
		}
		if got := hex.EncodeToString(h2.Sum(nil)); got != sum {
			t.Fatalf("copied back: sha256 %s, want %s", got, sum)
		}
		t.Logf("100 MiB: up %s (%.0f MiB/s), down %s (%.0f MiB/s)", up.Round(time.Millisecond), 100/up.Seconds(), down.Round(time.Millisecond), 100/down.Seconds())
		u.must("sandbox", "exec", sb.ID, "--", "rm", "/home/user/big")
	})

	t.Run("shell in a pseudo-terminal", func(t *testing.T) {
		ptmx, tty, err := pty.Open()
		if err != nil {
			t.Fatal(err)
		}
		defer ptmx.Close()
		defer tty.Close()
		_ = pty.Setsize(ptmx, &pty.Winsize{Cols: 100, Rows: 30})
		cmd := exec.Command(u.bin, "sandbox", "shell", sb.ID)
		cmd.Env = u.env
		cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		screen := &testenv.SyncBuffer{}
		go func() { _, _ = io.Copy(screen, ptmx) }()
		// The prompt may be followed by the shell's cursor-position query.
		waitScreen(t, screen, regexp.MustCompile(`[$#] `), "the shell's prompt")
		if _, err := ptmx.Write([]byte("echo h''i\r")); err != nil {
			t.Fatal(err)
		}
		// The output line, not the echoed command line.
		waitScreen(t, screen, regexp.MustCompile(`\r\nhi\r\n`), "hi from echo")
		if _, err := ptmx.Write([]byte("exit 3\r")); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 3 {
				t.Fatalf("shell exit: %v; screen %q", err, screen.String())
			}
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			t.Fatalf("the shell did not exit; screen %q", screen.String())
		}
		st, err := unix.IoctlGetTermios(int(tty.Fd()), unix.TCGETS)
		if err != nil || st.Lflag&unix.ECHO == 0 || st.Lflag&unix.ICANON == 0 {
			t.Fatalf("the terminal was not restored: %+v %v", st, err)
		}
	})

	t.Run("sdk exec stream and terminal", func(t *testing.T) {
		c, err := wrenn.New(wrenn.Config{URL: p.base, Token: p.admin.hdr.Get("Authorization")[len("Bearer "):]})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
		defer cancel()
		s := c.Sandbox(sb.ID)
		w := &timedWriter{}
		st, err := s.ExecStream(ctx, "sh", wrenn.ExecOptions{Args: []string{"-c", "for i in 1 2 3; do echo $i; sleep 0.4; done; echo e >&2; exit 4"}, Stdout: w})
		if err != nil || st.ExitCode != 4 || !st.Exited || w.String() != "1\n2\n3\n" {
			t.Fatalf("stream = %+v, %v, stdout %q", st, err, w.String())
		}
		// Output came as it was written, not all at the end.
		if spread := w.last.Sub(w.first); spread < 600*time.Millisecond {
			t.Fatalf("output arrived within %s: buffered, not streamed", spread)
		}
		term, err := s.Shell(ctx, wrenn.PtyOptions{Cols: 80, Rows: 24})
		if err != nil {
			t.Fatal(err)
		}
		defer term.Close()
		screen := &testenv.SyncBuffer{}
		go func() { _, _ = io.Copy(screen, term) }()
		if err := term.Resize(ctx, 132, 43); err != nil {
			t.Fatal(err)
		}
		if _, err := term.Write([]byte("stty size; exit 5\r")); err != nil {
			t.Fatal(err)
		}
		ex, err := term.Wait(ctx)
		if err != nil || ex.ExitCode != 5 {
			t.Fatalf("terminal exit %+v, %v; screen %q", ex, err, screen.String())
		}
		waitScreen(t, screen, regexp.MustCompile(`\r\n43 132\r\n`), "the resized size")
	})

	t.Run("template build", func(t *testing.T) {
		u := u
		u.t = t
		dir := t.TempDir()
		if err := os.MkdirAll(filepath.Join(dir, "site"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "site", "index.html"), []byte("from the archive\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		recipe := "# a recipe\nmkdir -p /srv\nCOPY . /srv\necho built-by-cli\n"
		if err := os.WriteFile(filepath.Join(dir, "recipe.txt"), []byte(recipe), 0o644); err != nil {
			t.Fatal(err)
		}
		r := u.run("", "template", "build", "--name", "cli-tpl", "-f", filepath.Join(dir, "recipe.txt"), "--archive", filepath.Join(dir, "site"))
		if r.Code != 0 || !strings.Contains(r.Stderr, "[1/3] mkdir -p /srv") || !strings.Contains(r.Stderr, "[3/3] echo built-by-cli") ||
			!strings.Contains(r.Stderr, "succeeded") || !strings.Contains(r.Stdout, "built-by-cli") {
			t.Fatalf("template build: %+v", r)
		}
		var tpls []struct{ Name string }
		if err := json.Unmarshal([]byte(u.must("template", "list", "-o", "json").Stdout), &tpls); err != nil {
			t.Fatal(err)
		}
		found := false
		for _, tp := range tpls {
			found = found || tp.Name == "cli-tpl"
		}
		if !found {
			t.Fatalf("templates %+v lack cli-tpl", tpls)
		}
		var fromTpl struct{ ID string }
		if err := json.Unmarshal([]byte(u.must("sandbox", "create", "--template", "cli-tpl", "-o", "json").Stdout), &fromTpl); err != nil {
			t.Fatal(err)
		}
		if r := u.must("sandbox", "exec", fromTpl.ID, "--", "cat", "/srv/index.html"); r.Stdout != "from the archive\n" {
			t.Fatalf("file from the archive: %q", r.Stdout)
		}
		u.must("sandbox", "rm", fromTpl.ID)
		// A failing build exits non-zero with the step's error.
		if err := os.WriteFile(filepath.Join(dir, "bad.txt"), []byte("exit 9\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if r := u.run("", "template", "build", "--name", "cli-bad", "-f", filepath.Join(dir, "bad.txt")); r.Code != 1 || !strings.Contains(r.Stderr, "failed") {
			t.Fatalf("failing build: %+v", r)
		}
	})
	u.must("sandbox", "rm", sb.ID)
}

func waitScreen(t *testing.T, s *testenv.SyncBuffer, re *regexp.Regexp, what string) {
	t.Helper()
	eventually(t, 30*time.Second, what, func() (bool, string) { return re.MatchString(s.String()), s.String() })
}

// timedWriter records when its first and last writes came (ExecStream
// writes from one goroutine, and the test reads after it returned).
type timedWriter struct {
	bytes.Buffer
	first, last time.Time
}

func (w *timedWriter) Write(p []byte) (int, error) {
	now := time.Now()
	if w.first.IsZero() {
		w.first = now
	}
	w.last = now
	return w.Buffer.Write(p)
}

// BenchmarkCLIExec compares `wrenn sandbox exec ID -- true` (process start,
// config, WebSocket exec stream) with the same command by curl through
// POST /exec, one after the other in each iteration on the same VM, and
// measures the CLI's process start alone (`wrenn version`).
func BenchmarkCLIExec(b *testing.B) {
	cb := newCLIBench(b)
	u, sb, curl := cb.u, cb.sb, cb.curl
	curlArgs := []string{"-sS", "-f", "-o", "/dev/null", "-X", "POST", "-H", cb.auth,
		"-H", "Content-Type: application/json", "-d", `{"cmd":"true"}`, cb.p.base + "/v1/sandboxes/" + sb.ID + "/exec"}
	timed := func(name string, args ...string) time.Duration { return cb.timed(b, name, args...) }
	// Warm both paths (connections, page cache) before measuring.
	timed(u.bin, "sandbox", "exec", sb.ID, "--", "true")
	timed(curl, curlArgs...)
	var cli, viaCurl, start time.Duration
	b.ResetTimer()
	for b.Loop() {
		cli += timed(u.bin, "sandbox", "exec", sb.ID, "--", "true")
		viaCurl += timed(curl, curlArgs...)
		start += timed(u.bin, "version")
	}
	b.StopTimer()
	n := float64(b.N)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / n }
	b.ReportMetric(ms(cli), "cli-ms/op")
	b.ReportMetric(ms(viaCurl), "curl-ms/op")
	b.ReportMetric(ms(start), "cli-start-ms/op")
	b.ReportMetric(ms(cli)/ms(viaCurl), "cli/curl")
	b.ReportMetric((ms(cli)-ms(start))/ms(viaCurl), "cli-less-start/curl")
}

// BenchmarkCLICopy compares `wrenn sandbox cp` of a 32 MiB file into a
// sandbox and back with the same transfers by curl (multipart upload,
// files/read), one after the other in each iteration on the same VM.
func BenchmarkCLICopy(b *testing.B) {
	cb := newCLIBench(b)
	u, sb, curl, home := cb.u, cb.sb, cb.curl, cb.home
	src := filepath.Join(home, "blob")
	f, err := os.Create(src)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := io.CopyN(f, rand.Reader, 32<<20); err != nil {
		b.Fatal(err)
	}
	f.Close()
	auth := cb.auth
	files := cb.p.base + "/v1/sandboxes/" + sb.ID + "/files/"
	timed := func(name string, args ...string) time.Duration { return cb.timed(b, name, args...) }
	var cliUp, cliDown, curlUp, curlDown time.Duration
	b.ResetTimer()
	for b.Loop() {
		cliUp += timed(u.bin, "sandbox", "cp", src, sb.ID+":/home/user/blob")
		cliDown += timed(u.bin, "sandbox", "cp", sb.ID+":/home/user/blob", filepath.Join(home, "blob.cli"))
		curlUp += timed(curl, "-sS", "-f", "-o", "/dev/null", "-H", auth, "-F", "path=/home/user/blob", "-F", "file=@"+src, files+"write")
		curlDown += timed(curl, "-sS", "-f", "-o", filepath.Join(home, "blob.curl"), "-H", auth, "-H", "Content-Type: application/json",
			"-d", `{"path":"/home/user/blob"}`, files+"read")
	}
	b.StopTimer()
	mibps := func(d time.Duration) float64 { return 32 * float64(b.N) / d.Seconds() }
	b.ReportMetric(mibps(cliUp), "cli-up-MiB/s")
	b.ReportMetric(mibps(curlUp), "curl-up-MiB/s")
	b.ReportMetric(mibps(cliDown), "cli-down-MiB/s")
	b.ReportMetric(mibps(curlDown), "curl-down-MiB/s")
	b.ReportMetric(cliUp.Seconds()/curlUp.Seconds(), "up-cli/curl")
	b.ReportMetric(cliDown.Seconds()/curlDown.Seconds(), "down-cli/curl")
}

// cliBench is a platform with a logged-in CLI and a running sandbox, for
// the benchmarks that time the CLI against curl.
type cliBench struct {
	p    *buildPlatform
	u    cliUser
	home string
	sb   sandbox
	curl string
	auth string // the admin's Authorization header, for curl
}

func newCLIBench(b *testing.B) *cliBench {
	curl, err := exec.LookPath("curl")
	testenv.Require(b, err == nil, "curl not installed")
	p := startBuildPlatform(b)
	home := b.TempDir()
	u := cliUser{t: b, bin: wrennBin(b), env: childEnv("HOME="+home, "XDG_CONFIG_HOME="+filepath.Join(home, ".config"))}
	if r := u.run(e2ePassword(p.adminEmail)+"\n", "login", "--url", p.base, "--email", p.adminEmail); r.Code != 0 {
		b.Fatalf("login: %+v", r)
	}
	cb := &cliBench{p: p, u: u, home: home, sb: p.admin.createSandbox(b), curl: curl, auth: "Authorization: " + p.admin.hdr.Get("Authorization")}
	b.Cleanup(func() {
		p.admin.must(b, http.MethodDelete, "/v1/sandboxes/"+cb.sb.ID, nil, nil, http.StatusAccepted, http.StatusNoContent)
	})
	return cb
}

// timed runs a program to its end and returns its wall time.
func (cb *cliBench) timed(b *testing.B, name string, args ...string) time.Duration {
	start := time.Now()
	cmd := exec.Command(name, args...)
	cmd.Env = cb.u.env
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return time.Since(start)
}
