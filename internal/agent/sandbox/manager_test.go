package sandbox_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/agent/agenterr"
	"github.com/wrenn-dev/wrenn/internal/agent/sandbox"
	"github.com/wrenn-dev/wrenn/internal/agent/sandbox/sandboxtest"
	"github.com/wrenn-dev/wrenn/internal/envd/envdtest"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func fakeImages(t *testing.T) string {
	dir := t.TempDir()
	if err := sandboxtest.FakeImages(dir); err != nil {
		t.Fatal(err)
	}
	return dir
}

type env struct {
	m     *sandbox.Manager
	net   *sandboxtest.LoopNet
	drv   *sandboxtest.HostDriver
	clock *clock
	dir   string
}

var testLog = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

func newEnv(t *testing.T, bin string) *env {
	t.Helper()
	e := &env{net: sandboxtest.NewLoopNet(), drv: &sandboxtest.HostDriver{Bin: bin}, clock: &clock{t: time.Now()}, dir: fakeImages(t)}
	e.m = e.manager(t)
	return e
}

func (e *env) manager(t *testing.T) *sandbox.Manager {
	m, err := sandbox.New(sandbox.Config{
		Dir: e.dir, Driver: e.drv, Net: e.net, Disks: sandboxtest.FileDisks{}, Logger: testLog, Now: e.clock.Now,
		BootTimeout: 20 * time.Second, ExecOutputCap: 1 << 20, MaxUnaryFile: 4 << 20,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, s := range m.List(context.Background()).Sandboxes {
			m.Destroy(context.Background(), s.SandboxId)
		}
	})
	return m
}

func wantErr(t *testing.T, err error, kind error) {
	t.Helper()
	if !errors.Is(err, kind) {
		t.Fatalf("err = %v, want one that is %q", err, kind)
	}
}

func TestCreateRejectsBadInput(t *testing.T) {
	e := &env{net: sandboxtest.NewLoopNet(), drv: &sandboxtest.HostDriver{Bin: "/nonexistent"}, clock: &clock{t: time.Now()}, dir: fakeImages(t)}
	m := e.manager(t)
	ctx := context.Background()
	tests := []struct {
		name string
		req  *pb.CreateSandboxRequest
		code error
	}{
		{"too many vcpus", &pb.CreateSandboxRequest{Vcpus: 65}, agenterr.ErrInvalidArgument},
		{"too much memory", &pb.CreateSandboxRequest{MemoryMb: 1 << 20}, agenterr.ErrInvalidArgument},
		{"too little memory", &pb.CreateSandboxRequest{MemoryMb: 8}, agenterr.ErrInvalidArgument},
		{"too much disk", &pb.CreateSandboxRequest{DiskMb: 1 << 30}, agenterr.ErrInvalidArgument},
		{"negative timeout", &pb.CreateSandboxRequest{TimeoutSec: -1}, agenterr.ErrInvalidArgument},
		{"bad id", &pb.CreateSandboxRequest{SandboxId: "../etc"}, agenterr.ErrInvalidArgument},
		{"bad template name", &pb.CreateSandboxRequest{Template: "A/B"}, agenterr.ErrInvalidArgument},
		{"bad env name", &pb.CreateSandboxRequest{EnvVars: map[string]string{"A=B": "x"}}, agenterr.ErrInvalidArgument},
		{"short envd token", &pb.CreateSandboxRequest{EnvdAccessToken: "short"}, agenterr.ErrInvalidArgument},
		{"envd token with a newline", &pb.CreateSandboxRequest{EnvdAccessToken: "0123456789abcdef\nX-Evil: 1"}, agenterr.ErrInvalidArgument},
		{"unknown template", &pb.CreateSandboxRequest{Template: "nope"}, agenterr.ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := m.Create(ctx, tt.req)
			wantErr(t, err, tt.code)
			if n := len(m.List(ctx).Sandboxes); n != 0 || e.net.Count() != 0 {
				t.Fatalf("left %d sandboxes, %d slots", n, e.net.Count())
			}
		})
	}
}

func TestUnknownSandboxIsNotFound(t *testing.T) {
	e := &env{net: sandboxtest.NewLoopNet(), drv: &sandboxtest.HostDriver{Bin: "/nonexistent"}, clock: &clock{t: time.Now()}, dir: fakeImages(t)}
	m := e.manager(t)
	ctx := context.Background()
	calls := map[string]func() error{
		"destroy": func() error { return m.Destroy(ctx, "nope") },
		"get":     func() error { _, err := m.Get(ctx, "nope"); return err },
		"ping":    func() error { _, err := m.Ping(ctx, "nope"); return err },
		"pause":   func() error { _, err := m.Pause(ctx, "nope"); return err },
		"resume":  func() error { _, err := m.Resume(ctx, "nope", nil); return err },
		"exec":    func() error { _, err := m.Exec(ctx, &pb.ExecRequest{SandboxId: "nope", Cmd: "true"}); return err },
		"read": func() error {
			_, err := m.ReadFile(ctx, &pb.ReadFileRequest{SandboxId: "nope", Path: "/x"})
			return err
		},
		"metrics": func() error { _, err := m.Metrics(ctx, "nope"); return err },
		"snap":    func() error { _, err := m.CreateSnapshot(ctx, "nope", "t1"); return err },
		"delsnap": func() error { return m.DeleteSnapshot(ctx, "nope") },
	}
	for name, call := range calls {
		t.Run(name, func(t *testing.T) { wantErr(t, call(), agenterr.ErrNotFound) })
	}
}

func TestFailedBootCleansUp(t *testing.T) {
	bin := envdtest.Build(t)
	e := newEnv(t, bin)
	e.drv.FailStart = true
	ctx := context.Background()
	_, err := e.m.Create(ctx, &pb.CreateSandboxRequest{SandboxId: "bad-boot"})
	if err == nil {
		t.Fatal("create succeeded with an envd that cannot listen")
	}
	if n := len(e.m.List(ctx).Sandboxes); n != 0 {
		t.Fatalf("%d sandboxes listed after failed create", n)
	}
	if e.net.Count() != 0 {
		t.Fatalf("network slot leaked")
	}
	if _, err := os.Stat(filepath.Join(e.dir, "sandboxes", "bad-boot")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("sandbox dir left: %v", err)
	}
}

// TestLifecycleWithHostEnvd drives every command and file call through the
// manager against a real envd running as a host process.
func TestLifecycleWithHostEnvd(t *testing.T) {
	bin := envdtest.Build(t)
	e := newEnv(t, bin)
	m := e.m
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	info, err := m.Create(ctx, &pb.CreateSandboxRequest{SandboxId: "sb1", EnvVars: map[string]string{"GREETING": "hi"}, Metadata: map[string]string{"k": "v"}})
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if info.State != pb.SandboxState_SANDBOX_STATE_RUNNING || info.Vcpus != 1 || info.MemoryMb != 256 || info.Metadata["k"] != "v" {
		t.Fatalf("info %+v", info)
	}
	_, err = m.Create(ctx, &pb.CreateSandboxRequest{SandboxId: "sb1"})
	wantErr(t, err, agenterr.ErrExists)

	t.Run("exec", func(t *testing.T) {
		tests := []struct {
			name                string
			req                 *pb.ExecRequest
			stdout, stderr      string
			code                int32
			timedOut, truncated bool
		}{
			{"pipeline", &pb.ExecRequest{Cmd: "/bin/sh", Args: []string{"-c", "echo hello | tr a-z A-Z"}}, "HELLO\n", "", 0, false, false},
			{"init env", &pb.ExecRequest{Cmd: "/bin/sh", Args: []string{"-c", "echo $GREETING $X"}, Env: map[string]string{"X": "there"}}, "hi there\n", "", 0, false, false},
			{"exit code and stderr", &pb.ExecRequest{Cmd: "/bin/sh", Args: []string{"-c", "echo oops >&2; exit 3"}}, "", "oops\n", 3, false, false},
			{"stdin", &pb.ExecRequest{Cmd: "/bin/cat", Stdin: []byte("from stdin")}, "from stdin", "", 0, false, false},
			{"timeout", &pb.ExecRequest{Cmd: "/bin/sh", Args: []string{"-c", "echo before; sleep 30"}, TimeoutSec: 1}, "before\n", "", -1, true, false},
			{"output cap", &pb.ExecRequest{Cmd: "/bin/sh", Args: []string{"-c", "head -c 3000000 /dev/zero"}}, strings.Repeat("\x00", 1<<20), "", 0, false, true},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				tt.req.SandboxId = "sb1"
				start := time.Now()
				res, err := m.Exec(ctx, tt.req)
				if err != nil {
					t.Fatalf("exec: %v", err)
				}
				if string(res.Stdout) != tt.stdout || string(res.Stderr) != tt.stderr || res.ExitCode != tt.code || res.TimedOut != tt.timedOut || res.Truncated != tt.truncated {
					t.Fatalf("got stdout %.40q stderr %q code %d timedOut %v truncated %v", res.Stdout, res.Stderr, res.ExitCode, res.TimedOut, res.Truncated)
				}
				if tt.timedOut && time.Since(start) > 10*time.Second {
					t.Fatalf("timeout took %v", time.Since(start))
				}
			})
		}
		_, err := m.Exec(ctx, &pb.ExecRequest{SandboxId: "sb1"})
		wantErr(t, err, agenterr.ErrInvalidArgument)
		_, err = m.Exec(ctx, &pb.ExecRequest{SandboxId: "sb1", Cmd: "/no/such/binary"})
		if err == nil {
			t.Fatal("exec of a missing binary succeeded")
		}
	})

	t.Run("exec stream", func(t *testing.T) {
		var out bytes.Buffer
		var start, end bool
		err := m.ExecStream(ctx, &pb.ExecStreamRequest{SandboxId: "sb1", Cmd: "/bin/sh", Args: []string{"-c", "for i in 1 2 3; do echo $i; done"}}, func(r *pb.ExecStreamResponse) error {
			start = start || r.GetStart() != nil
			out.Write(r.GetStdout())
			if r.GetEnd() != nil {
				end = r.GetEnd().ExitCode == 0
			}
			return nil
		})
		if err != nil || !start || !end || out.String() != "1\n2\n3\n" {
			t.Fatalf("err %v start %v end %v out %q", err, start, end, out.String())
		}
	})

	t.Run("background process reattached", func(t *testing.T) {
		res, err := m.StartProcess(ctx, &pb.StartProcessRequest{SandboxId: "sb1", Cmd: "/bin/sh", Args: []string{"-c", "sleep 0.2; echo started; sleep 30"}, Tag: "bg"})
		if err != nil || res.Pid == 0 {
			t.Fatalf("start: %v %v", res, err)
		}
		procs, err := m.ListProcesses(ctx, "sb1")
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, p := range procs.Processes {
			found = found || (p.Tag == "bg" && p.Pid == res.Pid)
		}
		if !found {
			t.Fatalf("bg not listed: %v", procs)
		}
		// The line is printed while nobody is attached: envd keeps it and
		// replays it on reattach.
		time.Sleep(600 * time.Millisecond)
		cctx, ccancel := context.WithCancel(ctx)
		var out bytes.Buffer
		done := make(chan error, 1)
		go func() {
			done <- m.ConnectProcess(cctx, &pb.ConnectProcessRequest{SandboxId: "sb1", Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Tag{Tag: "bg"}}}, func(r *pb.ExecStreamResponse) error {
				out.Write(r.GetStdout())
				if r.GetEnd() != nil {
					ccancel()
				}
				return nil
			})
		}()
		time.Sleep(300 * time.Millisecond)
		if err := m.KillProcess(ctx, &pb.KillProcessRequest{SandboxId: "sb1", Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: res.Pid}}, Signal: "SIGKILL"}); err != nil {
			t.Fatalf("kill: %v", err)
		}
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("connect: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("connect stream did not end after kill")
		}
		ccancel()
		if out.String() != "started\n" {
			t.Fatalf("replayed output %q", out.String())
		}
		err = m.KillProcess(ctx, &pb.KillProcessRequest{SandboxId: "sb1", Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Tag{Tag: "gone"}}})
		wantErr(t, err, agenterr.ErrNotFound)
		err = m.KillProcess(ctx, &pb.KillProcessRequest{SandboxId: "sb1", Process: &pb.ProcessSelector{}, Signal: "SIGHUP"})
		wantErr(t, err, agenterr.ErrInvalidArgument)
	})

	t.Run("pty", func(t *testing.T) {
		pctx, pcancel := context.WithCancel(ctx)
		defer pcancel()
		tagc := make(chan string, 1)
		var mu sync.Mutex
		var out bytes.Buffer
		done := make(chan error, 1)
		go func() {
			done <- m.PtyAttach(pctx, &pb.PtyAttachRequest{SandboxId: "sb1", Cmd: "/bin/sh", Cols: 100, Rows: 30}, func(r *pb.PtyAttachResponse) error {
				if s := r.GetStarted(); s != nil {
					tagc <- s.Tag
				}
				mu.Lock()
				out.Write(r.GetOutput())
				mu.Unlock()
				return nil
			})
		}()
		var tag string
		select {
		case tag = <-tagc:
		case err := <-done:
			t.Fatalf("pty ended early: %v", err)
		case <-time.After(10 * time.Second):
			t.Fatal("no pty start")
		}
		if err := m.PtyResize(ctx, "sb1", tag, 120, 40); err != nil {
			t.Fatalf("resize: %v", err)
		}
		if err := m.PtyInput(ctx, "sb1", tag, []byte("stty size; echo mark$((6*7))\n")); err != nil {
			t.Fatalf("input: %v", err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			mu.Lock()
			s := out.String()
			mu.Unlock()
			if strings.Contains(s, "mark42") && strings.Contains(s, "40 120") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("pty output %q", s)
			}
			time.Sleep(50 * time.Millisecond)
		}
		if err := m.PtyKill(ctx, "sb1", tag); err != nil {
			t.Fatalf("kill: %v", err)
		}
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("pty stream: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("pty stream did not end after kill")
		}
		wantErr(t, m.PtyResize(ctx, "sb1", tag, 0, 10), agenterr.ErrInvalidArgument)
	})

	t.Run("files", func(t *testing.T) {
		small := []byte("hello file")
		// Mode is tested in vm_test.go: host-mode envd runs chmod on host
		// paths, not inside its root.
		if _, err := m.WriteFile(ctx, &pb.WriteFileRequest{SandboxId: "sb1", Path: "/work/a.txt", Content: small}); err != nil {
			t.Fatalf("write: %v", err)
		}
		got, err := m.ReadFile(ctx, &pb.ReadFileRequest{SandboxId: "sb1", Path: "/work/a.txt"})
		if err != nil || !bytes.Equal(got.Content, small) {
			t.Fatalf("read: %q %v", got.GetContent(), err)
		}
		big := make([]byte, 9<<20+3)
		rand.Read(big)
		wr, err := m.WriteFileStream(ctx, &pb.WriteFileStreamRequest_Header{SandboxId: "sb1", Path: "/work/big.bin"}, bytes.NewReader(big))
		if err != nil || wr.Size != int64(len(big)) {
			t.Fatalf("stream write: %v %v", wr, err)
		}
		_, err = m.ReadFile(ctx, &pb.ReadFileRequest{SandboxId: "sb1", Path: "/work/big.bin"})
		wantErr(t, err, agenterr.ErrTooLarge)
		rc, size, err := m.ReadFileStream(ctx, "sb1", "/work/big.bin", "")
		if err != nil || size != int64(len(big)) {
			t.Fatalf("stream read: %d %v", size, err)
		}
		back, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || !bytes.Equal(back, big) {
			t.Fatalf("stream read differs (%d bytes, err %v)", len(back), err)
		}
		_, err = m.ReadFile(ctx, &pb.ReadFileRequest{SandboxId: "sb1", Path: "/work/missing"})
		wantErr(t, err, agenterr.ErrNotFound)
		if _, err := m.MakeDir(ctx, &pb.MakeDirRequest{SandboxId: "sb1", Path: "/work/sub/deeper"}); err != nil {
			t.Fatalf("mkdir: %v", err)
		}
		ls, err := m.ListDir(ctx, &pb.ListDirRequest{SandboxId: "sb1", Path: "/work"})
		if err != nil {
			t.Fatal(err)
		}
		types := map[string]string{}
		for _, en := range ls.Entries {
			types[en.Name] = en.Type
		}
		if types["a.txt"] != "file" || types["sub"] != "dir" || types["big.bin"] != "file" {
			t.Fatalf("list: %v", types)
		}
		if err := m.RemovePath(ctx, &pb.RemovePathRequest{SandboxId: "sb1", Path: "/work/sub"}); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(e.dir, "sandboxes/sb1/guestroot/work/sub")); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("not removed: %v", err)
		}
		_, err = m.WriteFile(ctx, &pb.WriteFileRequest{SandboxId: "sb1", Path: ""})
		wantErr(t, err, agenterr.ErrInvalidArgument)
	})

	t.Run("metrics", func(t *testing.T) {
		r, err := m.Metrics(ctx, "sb1")
		if err != nil || r.Current.MemoryTotalBytes == 0 || r.Current.DiskTotalBytes == 0 || len(r.History) == 0 {
			t.Fatalf("metrics %v %v", r, err)
		}
	})

	t.Run("ping and activity", func(t *testing.T) {
		e.clock.Add(time.Hour)
		at, err := m.Ping(ctx, "sb1")
		if err != nil || !at.Equal(e.clock.Now()) {
			t.Fatalf("ping %v %v", at, err)
		}
		e.clock.Add(time.Minute)
		m.Exec(ctx, &pb.ExecRequest{SandboxId: "sb1", Cmd: "true"})
		i, _ := m.Get(ctx, "sb1")
		if !i.LastActiveAt.AsTime().Equal(e.clock.Now()) {
			t.Fatalf("exec did not count as activity: %v vs %v", i.LastActiveAt.AsTime(), e.clock.Now())
		}
	})

	t.Run("failed pause keeps it running", func(t *testing.T) {
		_, err := m.Pause(ctx, "sb1")
		if err == nil {
			t.Fatal("pause succeeded on a driver without snapshots")
		}
		res, err := m.Exec(ctx, &pb.ExecRequest{SandboxId: "sb1", Cmd: "echo", Args: []string{"alive"}})
		if err != nil || string(res.Stdout) != "alive\n" {
			t.Fatalf("after failed pause: %v %v", res, err)
		}
		_, err = m.Resume(ctx, "sb1", nil)
		wantErr(t, err, agenterr.ErrInvalidState)
	})

	t.Run("the control plane's envd token", func(t *testing.T) {
		const tok = "cp-minted-token-0123456789abcdef"
		if _, err := m.Create(ctx, &pb.CreateSandboxRequest{SandboxId: "sbtok", EnvdAccessToken: tok}); err != nil {
			t.Fatalf("create: %v", err)
		}
		defer m.Destroy(ctx, "sbtok")
		// envd took it: the agent's own calls, made with the token, work.
		res, err := m.Exec(ctx, &pb.ExecRequest{SandboxId: "sbtok", Cmd: "echo", Args: []string{"ok"}})
		if err != nil || string(res.Stdout) != "ok\n" {
			t.Fatalf("exec with the given token: %v %v", res, err)
		}
		var rec struct {
			AccessToken string `json:"access_token"`
			GivenToken  string `json:"given_token"`
		}
		b, err := os.ReadFile(filepath.Join(e.dir, "sandboxes/sbtok/state.json"))
		if err != nil || json.Unmarshal(b, &rec) != nil || rec.AccessToken != tok || rec.GivenToken != tok {
			t.Fatalf("recorded tokens %+v (%v), want both %q", rec, err, tok)
		}
	})

	pid := 0
	if b, err := os.ReadFile(filepath.Join(e.dir, "sandboxes/sb1/run/pid")); err == nil {
		pid = atoi(string(b))
	}
	if err := m.Destroy(ctx, "sb1"); err != nil {
		t.Fatalf("destroy: %v", err)
	}
	if sandboxtest.IsEnvd(pid, bin) {
		t.Fatalf("envd %d still running after destroy", pid)
	}
	if e.net.Count() != 0 {
		t.Fatal("slot not released")
	}
	if _, err := os.Stat(filepath.Join(e.dir, "sandboxes/sb1")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("sandbox dir left: %v", err)
	}
	wantErr(t, m.Destroy(ctx, "sb1"), agenterr.ErrNotFound)
}

func atoi(s string) int {
	n := 0
	for _, c := range strings.TrimSpace(s) {
		n = n*10 + int(c-'0')
	}
	return n
}

// TestReaperDestroysWhenPauseFails: the host driver cannot snapshot, so
// the reaper's pause fails and it must destroy the idle sandbox; an active
// one is left alone.
func TestReaperDestroysWhenPauseFails(t *testing.T) {
	bin := envdtest.Build(t)
	e := newEnv(t, bin)
	ctx := context.Background()
	for _, id := range []string{"idle", "busy", "forever"} {
		timeout := int64(3)
		if id == "forever" {
			timeout = 0
		}
		if _, err := e.m.Create(ctx, &pb.CreateSandboxRequest{SandboxId: id, TimeoutSec: timeout}); err != nil {
			t.Fatal(err)
		}
	}
	e.clock.Add(2 * time.Second)
	e.m.Reap(ctx)
	if n := len(e.m.List(ctx).Sandboxes); n != 3 {
		t.Fatalf("reaped too early: %d left", n)
	}
	e.clock.Add(2 * time.Second)
	if _, err := e.m.Ping(ctx, "busy"); err != nil {
		t.Fatal(err)
	}
	e.m.Reap(ctx)
	var ids []string
	for _, s := range e.m.List(ctx).Sandboxes {
		ids = append(ids, s.SandboxId)
	}
	if strings.Join(ids, ",") != "busy,forever" {
		t.Fatalf("left %v, want busy,forever", ids)
	}
	if e.net.Count() != 2 {
		t.Fatalf("%d slots held, want 2", e.net.Count())
	}
}

// TestTeardownRetriesWhatFailed: a network slot a pause could not release
// stays recorded and is released by the next teardown (resume, destroy);
// a destroy that cannot release it still removes the sandbox.
func TestTeardownRetriesWhatFailed(t *testing.T) {
	bin := envdtest.Build(t)
	e := newEnv(t, bin)
	e.drv.Snapshots = true
	ctx := context.Background()
	if _, err := e.m.Create(ctx, &pb.CreateSandboxRequest{SandboxId: "p"}); err != nil {
		t.Fatal(err)
	}
	errBusy := errors.New("netns busy")
	e.net.FailRelease(errBusy)

	// The snapshot is safe, so the pause succeeds; the slot stays held.
	info, err := e.m.Pause(ctx, "p")
	if err != nil || info.State != pb.SandboxState_SANDBOX_STATE_PAUSED {
		t.Fatalf("pause: %v, %v", info, err)
	}
	if e.net.Count() != 1 {
		t.Fatalf("%d slots held after the failed release, want 1", e.net.Count())
	}
	rec, err := os.ReadFile(filepath.Join(e.dir, "sandboxes/p/state.json"))
	if err != nil || !strings.Contains(string(rec), `"name": "lo-`) {
		t.Fatalf("state.json does not name the held slot: %s, %v", rec, err)
	}

	// Resume tears the old VM down first: while that fails it refuses.
	_, err = e.m.Resume(ctx, "p", nil)
	wantErr(t, err, agenterr.ErrUnavailable)
	if !errors.Is(err, errBusy) {
		t.Fatalf("resume error %v does not carry the release failure", err)
	}
	if i, _ := e.m.Get(ctx, "p"); i.GetState() != pb.SandboxState_SANDBOX_STATE_PAUSED {
		t.Fatalf("after the refused resume: %v", i.GetState())
	}

	e.net.FailRelease(nil)
	if _, err := e.m.Resume(ctx, "p", nil); err != nil {
		t.Fatalf("resume: %v", err)
	}
	if e.net.Count() != 1 {
		t.Fatalf("%d slots held after resume, want the new one only", e.net.Count())
	}
	mustRun(t, e.m, "p")

	// Destroy while the release fails: the error says so, the sandbox and
	// its files are gone all the same.
	e.net.FailRelease(errBusy)
	err = e.m.Destroy(ctx, "p")
	if err == nil || !errors.Is(err, errBusy) || !strings.Contains(err.Error(), "release network slot") {
		t.Fatalf("destroy: %v, want the release failure", err)
	}
	if n := len(e.m.List(ctx).Sandboxes); n != 0 {
		t.Fatalf("%d sandboxes listed after destroy", n)
	}
	if _, err := os.Stat(filepath.Join(e.dir, "sandboxes/p")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("sandbox dir left: %v", err)
	}
	e.net.FailRelease(nil)
}

func mustRun(t *testing.T, m *sandbox.Manager, id string) {
	t.Helper()
	res, err := m.Exec(context.Background(), &pb.ExecRequest{SandboxId: id, Cmd: "echo", Args: []string{"up"}})
	if err != nil || string(res.Stdout) != "up\n" {
		t.Fatalf("exec in %s: %v, %v", id, res, err)
	}
}

// TestRecoverAdoptsRunningSandbox: a new manager over the same WRENN_DIR
// adopts the running envd; when that process dies the sandbox turns DEAD.
func TestRecoverAdoptsRunningSandbox(t *testing.T) {
	bin := envdtest.Build(t)
	e := newEnv(t, bin)
	ctx := context.Background()
	first, err := e.m.Create(ctx, &pb.CreateSandboxRequest{SandboxId: "keep", TimeoutSec: 60})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.WriteFile(ctx, &pb.WriteFileRequest{SandboxId: "keep", Path: "/f", Content: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	e.m.Close() // the "agent" goes away, the VM stays

	m2 := e.manager(t)
	n, err := m2.Recover(ctx)
	if err != nil || n != 1 {
		t.Fatalf("recover: %d %v", n, err)
	}
	info, err := m2.Get(ctx, "keep")
	if err != nil || info.State != pb.SandboxState_SANDBOX_STATE_RUNNING || info.StateSeq < first.StateSeq || info.TimeoutSec != 60 {
		t.Fatalf("adopted info %v %v", info, err)
	}
	res, err := m2.Exec(ctx, &pb.ExecRequest{SandboxId: "keep", Cmd: "echo", Args: []string{"still here"}})
	if err != nil || string(res.Stdout) != "still here\n" {
		t.Fatalf("exec after adopt: %v %v", res, err)
	}
	// Kill the "VMM" behind the agent's back: the sandbox must turn DEAD.
	b, _ := os.ReadFile(filepath.Join(e.dir, "sandboxes/keep/run/pid"))
	p, _ := os.FindProcess(atoi(string(b)))
	p.Kill()
	deadline := time.Now().Add(5 * time.Second)
	for {
		info, _ = m2.Get(ctx, "keep")
		if info.State == pb.SandboxState_SANDBOX_STATE_DEAD {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("state %v after the vmm died", info.State)
		}
		time.Sleep(50 * time.Millisecond)
	}
	_, err = m2.Exec(ctx, &pb.ExecRequest{SandboxId: "keep", Cmd: "true"})
	wantErr(t, err, agenterr.ErrInvalidState)
	// The dead VM's network slot is given back now, not at destroy, and
	// the record says so, by name.
	deadline = time.Now().Add(5 * time.Second)
	for e.net.Count() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the dead vm's network slot was not released")
		}
		time.Sleep(50 * time.Millisecond)
	}
	rec, err := os.ReadFile(filepath.Join(e.dir, "sandboxes/keep/state.json"))
	if err != nil || !strings.Contains(string(rec), `"state": "dead"`) || strings.Contains(string(rec), `"name": "lo-`) {
		t.Fatalf("state.json of the dead sandbox: %s, %v", rec, err)
	}
	// A third agent sees it DEAD too, and destroy cleans it; leftovers of a
	// crash (orphaned snapshot, unfinished template) go at recovery.
	for _, d := range []string{"snapshots/ghost", "templates/.tmp-x-1234"} {
		if err := os.MkdirAll(filepath.Join(e.dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	m3 := e.manager(t)
	if _, err := m3.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	if i, _ := m3.Get(ctx, "keep"); i.GetState() != pb.SandboxState_SANDBOX_STATE_DEAD {
		t.Fatalf("third agent sees %v", i.GetState())
	}
	for _, d := range []string{"snapshots/ghost", "templates/.tmp-x-1234"} {
		if _, err := os.Stat(filepath.Join(e.dir, d)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s survived recovery: %v", d, err)
		}
	}
	if err := m3.Destroy(ctx, "keep"); err != nil {
		t.Fatal(err)
	}
}

func TestListIsStable(t *testing.T) {
	bin := envdtest.Build(t)
	e := newEnv(t, bin)
	ctx := context.Background()
	a, err := e.m.Create(ctx, &pb.CreateSandboxRequest{SandboxId: "a"})
	if err != nil {
		t.Fatal(err)
	}
	l1, l2 := e.m.List(ctx), e.m.List(ctx)
	if len(l1.Sandboxes) != 1 || len(l2.Sandboxes) != 1 || l1.Sandboxes[0].StateSeq != l2.Sandboxes[0].StateSeq || l1.Sandboxes[0].StateSeq != a.StateSeq {
		t.Fatalf("list not stable: %v / %v", l1, l2)
	}
}

// FuzzRecoverStateFile: whatever a state.json holds (it is on disk, so it
// may be truncated, corrupt or edited), Recover must not panic, and a
// sandbox it lists must be in a known state.
func FuzzRecoverStateFile(f *testing.F) {
	f.Add([]byte(`{"id":"fz","state":2,"state_seq":5,"slot":{"name":"lo-1","envd_addr":"127.0.0.1:1"}}`))
	f.Add([]byte(`{"id":"fz","state":3,"snapshot":{"dir":"/nonexistent","state_path":"/nonexistent/state"}}`))
	f.Add([]byte(`{"id":"fz","state":1}`))
	f.Add([]byte(`{"id":"other","state":2}`))
	f.Add([]byte(`{"id":"fz","state":99,"vcpus":-4,"memory_mb":-1}`))
	f.Add([]byte(`{"id":"fz","state":5}`))
	f.Add([]byte(`{"id":"fz","state":"running","state_seq":5,"slot":{"name":"lo-1","envd_addr":"127.0.0.1:1"}}`))
	f.Add([]byte(`{"id":"fz","state":"paused","slot":{"name":"lo-2"},"snapshot":{"dir":"/nonexistent","state_path":"/nonexistent/state"}}`))
	f.Add([]byte(`{"id":"fz","state":"sleeping"}`))
	f.Add([]byte(`{`))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		sdir := filepath.Join(dir, "sandboxes", "fz")
		if err := os.MkdirAll(sdir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(sdir, "state.json"), data, 0o600); err != nil {
			t.Fatal(err)
		}
		m, err := sandbox.New(sandbox.Config{Dir: dir, Driver: &sandboxtest.HostDriver{Bin: "/nonexistent"}, Net: sandboxtest.NewLoopNet(), Disks: sandboxtest.FileDisks{}, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		if n, _ := m.Recover(ctx); n != 0 {
			t.Fatalf("adopted %d sandboxes without any VMM", n)
		}
		for _, s := range m.List(ctx).Sandboxes {
			switch s.State {
			case pb.SandboxState_SANDBOX_STATE_PAUSED, pb.SandboxState_SANDBOX_STATE_AUTO_PAUSED, pb.SandboxState_SANDBOX_STATE_DEAD:
			default:
				t.Fatalf("recovered sandbox in state %v", s.State)
			}
			m.Resume(ctx, s.SandboxId, nil)
			m.Destroy(ctx, s.SandboxId)
		}
	})
}
