package agentapp_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/agent/images"
	"github.com/wrenn-dev/wrenn/internal/agent/network"
	"github.com/wrenn-dev/wrenn/internal/testenv"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
	"github.com/wrenn-dev/wrenn/proto/hostagent/v1/hostagentv1connect"
)

// TestAgentProcessRestart runs the real `wrenn agent` binary, creates a
// sandbox through its RPC API, stops the agent, starts a new agent process
// and checks that the sandbox kept running, was re-adopted and answers
// exec with its background process still there.
func TestAgentProcessRestart(t *testing.T) {
	testenv.Require(t, os.Geteuid() == 0, "needs root (network namespaces, nftables)")
	_, err := exec.LookPath("qemu-system-x86_64")
	testenv.Require(t, err == nil, "qemu-system-x86_64 not installed (apt-get install qemu-system-x86)")
	src := images.NewPaths(images.DirFromEnv())
	_, kerr := src.ResolvedKernel()
	_, rerr := src.ResolvedRootfs(images.MinimalTemplate)
	testenv.Require(t, kerr == nil && rerr == nil, "images missing under %s (run `wrenn images build`)", src.Dir)

	bin := filepath.Join(t.TempDir(), "wrenn")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/wrenn-dev/wrenn/cmd/wrenn").CombinedOutput(); err != nil {
		t.Fatalf("build wrenn: %v\n%s", err, out)
	}
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "templates"), 0o755)
	os.Symlink(filepath.Join(src.Dir, "kernels"), filepath.Join(dir, "kernels"))
	os.Symlink(src.TemplateDir(images.MinimalTemplate), filepath.Join(dir, "templates", images.MinimalTemplate))

	id := os.Getpid() % 200
	prefix := fmt.Sprintf("wse%d-", id)
	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	env := append(os.Environ(), "WRENN_DIR="+dir, "WRENN_AGENT_LISTEN_ADDR="+addr, "WRENN_VMM=qemu", "WRENN_ACCEL=tcg",
		"WRENN_NET_PREFIX="+prefix, fmt.Sprintf("WRENN_NET_RANGE=10.233.%d.0/24", id), "WRENN_CP_URL=")
	logPath := filepath.Join(t.TempDir(), "agent.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	logs := logTail{logPath}
	start := func() *exec.Cmd {
		cmd := exec.Command(bin, "agent")
		cmd.Env = env
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd
	}
	stop := func(cmd *exec.Cmd) {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Errorf("agent did not exit on SIGTERM")
		}
	}
	client := hostagentv1connect.NewHostAgentServiceClient(http.DefaultClient, "http://"+addr)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	waitUp := func() {
		deadline := time.Now().Add(time.Minute)
		for {
			hctx, hcancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := client.GetHostInfo(hctx, connect.NewRequest(&pb.GetHostInfoRequest{}))
			hcancel()
			if err == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("agent not up; logs:\n%s", logs.String())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	exec1 := func(script string) string {
		t.Helper()
		r, err := client.Exec(ctx, connect.NewRequest(&pb.ExecRequest{SandboxId: "rs", Cmd: "/bin/sh", Args: []string{"-c", script}}))
		if err != nil {
			t.Fatalf("exec %q: %v\nlogs:\n%s", script, err, logs.String())
		}
		return string(r.Msg.Stdout)
	}

	a1 := start()
	t.Cleanup(func() {
		// Whatever happened, leave nothing behind: a last agent destroys the
		// sandbox, then the host table goes.
		a := start()
		waitUp()
		client.DestroySandbox(context.Background(), connect.NewRequest(&pb.DestroySandboxRequest{SandboxId: "rs"}))
		stop(a)
		if nm, err := network.New(network.Config{Prefix: prefix, HostRange: fmt.Sprintf("10.233.%d.0/24", id)}); err == nil {
			nm.Shutdown(context.Background())
		}
	})
	waitUp()
	if _, err := client.CreateSandbox(ctx, connect.NewRequest(&pb.CreateSandboxRequest{SandboxId: "rs"})); err != nil {
		t.Fatalf("create: %v\nlogs:\n%s", err, logs.String())
	}
	if _, err := client.StartProcess(ctx, connect.NewRequest(&pb.StartProcessRequest{SandboxId: "rs", Cmd: "/bin/sleep", Args: []string{"600"}, Tag: "sleeper"})); err != nil {
		t.Fatal(err)
	}
	exec1("echo before > /tmp/f")
	pidBytes, err := os.ReadFile(filepath.Join(dir, "sandboxes", "rs", "run", "qemu.pid"))
	if err != nil {
		t.Fatal(err)
	}
	qpid, _ := strconv.Atoi(strings.TrimSpace(string(pidBytes)))

	stop(a1)
	if !alive(qpid) {
		t.Fatalf("qemu %d died with the agent", qpid)
	}

	a2 := start()
	waitUp()
	g, err := client.GetSandbox(ctx, connect.NewRequest(&pb.GetSandboxRequest{SandboxId: "rs"}))
	if err != nil || g.Msg.Sandbox.State != pb.SandboxState_SANDBOX_STATE_RUNNING {
		t.Fatalf("after restart: %v %v\nlogs:\n%s", g, err, logs.String())
	}
	if out := exec1("cat /tmp/f"); out != "before\n" {
		t.Fatalf("file after restart %q", out)
	}
	ps, err := client.ListProcesses(ctx, connect.NewRequest(&pb.ListProcessesRequest{SandboxId: "rs"}))
	if err != nil || len(ps.Msg.Processes) != 1 || ps.Msg.Processes[0].Tag != "sleeper" {
		t.Fatalf("processes after restart: %v %v", ps, err)
	}
	if _, err := client.DestroySandbox(ctx, connect.NewRequest(&pb.DestroySandboxRequest{SandboxId: "rs"})); err != nil {
		t.Fatal(err)
	}
	if alive(qpid) {
		t.Fatalf("qemu %d still running after destroy", qpid)
	}
	stop(a2)
}

type logTail struct{ path string }

func (l logTail) String() string {
	b, _ := os.ReadFile(l.path)
	if len(b) > 8000 {
		b = b[len(b)-8000:]
	}
	return string(b)
}

// alive: the process exists and is not a zombie (an orphaned QEMU is
// reaped by whatever PID 1 is, maybe late).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && i+2 < len(s) && s[i+2] != 'Z'
}
