package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/vishvananda/netns"

	"github.com/wrenn-dev/wrenn/internal/envd/envdtest"
	"github.com/wrenn-dev/wrenn/internal/testenv"
	pb "github.com/wrenn-dev/wrenn/proto/envd/process"
	"github.com/wrenn-dev/wrenn/proto/envd/process/processconnect"
)

// dialIn returns a dialer that connects from inside the network namespace
// of pid (sockets keep their namespace after the thread switches back).
func dialIn(pid int) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			return nil, fmt.Errorf("get netns: %w", err)
		}
		defer orig.Close()
		target, err := netns.GetFromPid(pid)
		if err != nil {
			runtime.UnlockOSThread()
			return nil, fmt.Errorf("netns of %d: %w", pid, err)
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			return nil, fmt.Errorf("enter netns: %w", err)
		}
		conn, derr := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err := netns.Set(orig); err == nil {
			runtime.UnlockOSThread() // a thread stuck elsewhere is never reused
		}
		return conn, derr
	}
}

// TestPID1InNamespaces runs the real binary as PID 1 of new PID, mount, UTS
// and network namespaces: init mode, process start through the subreaper,
// orphan reaping, hostname, /tmp on tmpfs, and power off.
func TestPID1InNamespaces(t *testing.T) {
	testenv.Require(t, os.Getuid() == 0, "needs root for namespaces")
	bin := envdtest.Build(t)
	cmd := exec.Command(bin, "-addr", "127.0.0.1:49983")
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWPID,
		// With CLONE_NEWNS here Go makes "/" private first, so envd's
		// mounts never reach the host.
		Unshareflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWUTS | syscall.CLONE_NEWNET,
	}
	var logs strings.Builder
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("start envd in namespaces: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("envd log:\n%s", logs.String())
		}
	})
	hc := &http.Client{Transport: &http.Transport{DialContext: dialIn(cmd.Process.Pid)}}
	base := "http://127.0.0.1:49983"
	deadline := time.Now().Add(20 * time.Second)
	for {
		res, err := hc.Get(base + "/health")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusNoContent {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("envd as PID 1 never answered /health: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), "pid1=true") {
		t.Fatalf("envd did not detect PID 1 mode: %s", logs.String())
	}
	pc := processconnect.NewProcessClient(hc, base)
	run := func(script string) (string, int32) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		st, err := pc.Start(ctx, connect.NewRequest(&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "/bin/sh", Args: []string{"-c", script}}}))
		if err != nil {
			t.Fatalf("start %q: %v", script, err)
		}
		defer st.Close()
		var out strings.Builder
		code := int32(-100)
		for st.Receive() {
			ev := st.Msg().GetEvent()
			out.Write(ev.GetData().GetStdout())
			out.Write(ev.GetData().GetStderr())
			if end := ev.GetEnd(); end != nil {
				code = end.ExitCode
			}
		}
		if err := st.Err(); err != nil {
			t.Fatalf("run %q: %v", script, err)
		}
		return out.String(), code
	}
	checks := []struct {
		script, want string
		code         int32
	}{
		{"hostname", "wrenn\n", 0},
		{"stat -f -c %T /tmp", "tmpfs\n", 0},
		{"exit 5", "", 5},
		{"echo $PPID", "1\n", 0},
	}
	for _, c := range checks {
		if out, code := run(c.script); out != c.want || code != c.code {
			t.Errorf("%q: %q exit %d, want %q exit %d", c.script, out, code, c.want, c.code)
		}
	}
	// Orphans are reparented to envd (PID 1) and must be reaped.
	for range 20 {
		run("(sleep 0.05; exit 9) & (sleep 0.05) & exit 0")
	}
	time.Sleep(500 * time.Millisecond)
	if z := zombiesOf(t, cmd.Process.Pid); z != 0 {
		t.Errorf("%d zombie children of envd", z)
	}
	// Power off: in a PID namespace reboot(2) ends the namespace's init.
	res, err := hc.Post(base+"/wrenn/poweroff", "", nil)
	if err != nil {
		t.Fatalf("poweroff: %v", err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusAccepted {
		t.Fatalf("poweroff status %d", res.StatusCode)
	}
	select {
	case err := <-exited:
		exited <- err // for the cleanup
		var ee *exec.ExitError
		if err == nil || !asExit(err, &ee) {
			t.Fatalf("envd ended with %v, want killed by the namespace power off", err)
		}
		ws := ee.Sys().(syscall.WaitStatus)
		if !ws.Signaled() || ws.Signal() != syscall.SIGINT {
			t.Fatalf("envd ended with %v, want SIGINT (reboot(POWER_OFF) in a PID namespace)", ws)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("envd did not power off")
	}
}

func asExit(err error, target **exec.ExitError) bool {
	ee, ok := err.(*exec.ExitError)
	if ok {
		*target = ee
	}
	return ok
}

func zombiesOf(t *testing.T, ppid int) int {
	t.Helper()
	ents, _ := os.ReadDir("/proc")
	n := 0
	for _, d := range ents {
		b, err := os.ReadFile("/proc/" + d.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		f := strings.Fields(s[i+1:])
		if len(f) > 1 && f[0] == "Z" && f[1] == strconv.Itoa(ppid) {
			n++
		}
	}
	return n
}
