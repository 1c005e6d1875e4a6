package sandbox_test

// Real-VM tests: QEMU microvm (TCG here), the real network (namespaces,
// TAP, nftables), qcow2 overlays and the minimal image with envd as init,
// assembled by agentapp exactly as `wrenn agent` does it.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/google/nftables"
	"github.com/vishvananda/netlink"

	"github.com/wrenn-dev/wrenn/internal/agent/agentapp"
	"github.com/wrenn-dev/wrenn/internal/agent/agenterr"
	"github.com/wrenn-dev/wrenn/internal/agent/images"
	"github.com/wrenn-dev/wrenn/internal/agent/network"
	"github.com/wrenn-dev/wrenn/internal/agent/sandbox"
	"github.com/wrenn-dev/wrenn/internal/config"
	"github.com/wrenn-dev/wrenn/internal/envdclient"
	"github.com/wrenn-dev/wrenn/internal/testenv"
	procpb "github.com/wrenn-dev/wrenn/proto/envd/process"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// Names and addresses private to this test process, so a real agent or
// another engineer's tests never collide with ours.
var (
	vmTestID    = os.Getpid() % 200
	vmPrefix    = fmt.Sprintf("wst%d-", vmTestID)
	vmHostRange = fmt.Sprintf("10.232.%d.0/24", vmTestID)
)

// vmPrereqs checks root, TUN, QEMU and the images; it returns the real
// WRENN_DIR holding the images.
func vmPrereqs(t testing.TB) string {
	t.Helper()
	testenv.Require(t, os.Geteuid() == 0, "real-VM tests need root (network namespaces, nftables)")
	_, err := os.Stat("/dev/net/tun")
	testenv.Require(t, err == nil, "real-VM tests need /dev/net/tun")
	_, err = exec.LookPath("qemu-system-x86_64")
	testenv.Require(t, err == nil, "qemu-system-x86_64 not installed (apt-get install qemu-system-x86)")
	_, err = exec.LookPath("qemu-img")
	testenv.Require(t, err == nil, "qemu-img not installed (apt-get install qemu-utils)")
	src := images.NewPaths(images.DirFromEnv())
	_, kerr := src.ResolvedKernel()
	_, rerr := src.ResolvedRootfs(images.MinimalTemplate)
	testenv.Require(t, kerr == nil && rerr == nil, "images missing under %s (run `wrenn images build`): %v %v", src.Dir, kerr, rerr)
	return src.Dir
}

type vmEnv struct {
	dir   string
	parts *agentapp.Parts
	log   *slog.Logger
	tune  func(*sandbox.Config)
}

// newVMEnv makes a private WRENN_DIR whose kernel and minimal template are
// links to the real images, and builds an agent on it.
func newVMEnv(t testing.TB, tune func(*sandbox.Config)) *vmEnv {
	t.Helper()
	src := vmPrereqs(t)
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "templates"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, l := range []struct{ from, to string }{
		{filepath.Join(src, "kernels"), filepath.Join(dir, "kernels")},
		{filepath.Join(src, "templates", images.MinimalTemplate), filepath.Join(dir, "templates", images.MinimalTemplate)},
	} {
		if err := os.Symlink(l.from, l.to); err != nil {
			t.Fatal(err)
		}
	}
	e := &vmEnv{dir: dir, log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})), tune: tune}
	e.parts = e.build(t)
	t.Cleanup(func() {
		ctx := context.Background()
		m := e.parts.Manager
		for _, s := range m.List(ctx).Sandboxes {
			if err := m.Destroy(ctx, s.SandboxId); err != nil {
				t.Errorf("cleanup destroy %s: %v", s.SandboxId, err)
			}
		}
		m.Close()
		if err := e.parts.Network.Shutdown(ctx); err != nil {
			t.Errorf("network shutdown: %v", err)
		}
		checkNoLeftovers(t, dir, false)
	})
	return e
}

func (e *vmEnv) build(t testing.TB) *agentapp.Parts {
	t.Helper()
	cfg := config.Agent{Dir: e.dir, VMM: "qemu", Accel: "tcg", MaxVCPUs: 2, MaxMemoryMB: 1024, MaxDiskMB: 4096}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := agentapp.Build(ctx, cfg, e.log, agentapp.Options{
		Network: network.Config{Prefix: vmPrefix, HostRange: vmHostRange},
		Manager: e.tune,
	})
	if err != nil {
		t.Fatalf("build agent: %v", err)
	}
	return p
}

// checkNoLeftovers fails when any process, namespace, link or nft table
// of ours, or any sandbox file, is still there.
// agentUp: the agent's own host table is expected to stay.
func checkNoLeftovers(t testing.TB, dir string, agentUp bool) {
	t.Helper()
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, _ := os.ReadFile(p)
		if bytes.Contains(b, []byte(dir)) {
			t.Errorf("process left: %s: %q", p, bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
		}
	}
	if ents, err := os.ReadDir(network.NetNSDir); err == nil {
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), vmPrefix) {
				t.Errorf("netns left: %s", e.Name())
			}
		}
	}
	links, _ := netlink.LinkList()
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, vmPrefix) {
			t.Errorf("link left: %s", l.Attrs().Name)
		}
	}
	if c, err := nftables.New(); err == nil {
		tables, _ := c.ListTables()
		for _, tb := range tables {
			if strings.HasPrefix(tb.Name, vmPrefix) && !(agentUp && tb.Name == vmPrefix+"host") {
				t.Errorf("nft table left: %s", tb.Name)
			}
		}
	}
	for _, sub := range []string{"sandboxes", "snapshots"} {
		ents, _ := os.ReadDir(filepath.Join(dir, sub))
		for _, e := range ents {
			t.Errorf("%s left: %s", sub, e.Name())
		}
	}
}

func mustExec(t testing.TB, m *sandbox.Manager, id, script string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := m.Exec(ctx, &pb.ExecRequest{SandboxId: id, Cmd: "/bin/sh", Args: []string{"-c", script}})
	if err != nil {
		t.Fatalf("exec %q: %v", script, err)
	}
	if res.ExitCode != 0 {
		t.Fatalf("exec %q: exit %d, stderr %q", script, res.ExitCode, res.Stderr)
	}
	return string(res.Stdout)
}

// TestVMLifecycle: create, exec, a 50 MB file both ways, a background
// process reattached, pause/resume with a counter and a /tmp file intact,
// auto-pause after a 3 s timeout, destroy without leftovers.
func TestVMLifecycle(t *testing.T) {
	e := newVMEnv(t, func(c *sandbox.Config) { c.ReapInterval = 500 * time.Millisecond })
	m := e.parts.Manager
	rctx, stopRun := context.WithCancel(context.Background())
	defer stopRun()
	go m.Run(rctx)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()

	start := time.Now()
	info, err := m.Create(ctx, &pb.CreateSandboxRequest{SandboxId: "vm1", MemoryMb: 256, EnvVars: map[string]string{"WHO": "wrenn"}})
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	t.Logf("create-to-ready: %v (TCG)", time.Since(start).Round(time.Millisecond))
	if info.State != pb.SandboxState_SANDBOX_STATE_RUNNING || info.Vmm != "qemu" {
		t.Fatalf("info %v", info)
	}

	if out := mustExec(t, m, "vm1", "uname -a"); !strings.HasPrefix(out, "Linux ") {
		t.Fatalf("uname: %q", out)
	}
	if out := mustExec(t, m, "vm1", "echo hello | tr a-z A-Z; echo $WHO"); out != "HELLO\nwrenn\n" {
		t.Fatalf("pipeline: %q", out)
	}

	t.Run("50 MB file round trip", func(t *testing.T) {
		const size = 50 << 20
		src := io.LimitReader(rand.NewChaCha8([32]byte{1, 2, 3}), size)
		h := sha256.New()
		start := time.Now()
		wr, err := m.WriteFileStream(ctx, &pb.WriteFileStreamRequest_Header{SandboxId: "vm1", Path: "/root/big.bin"}, io.TeeReader(src, h))
		if err != nil || wr.Size != size {
			t.Fatalf("write: %v %v", wr, err)
		}
		up := time.Since(start)
		start = time.Now()
		rc, n, err := m.ReadFileStream(ctx, "vm1", "/root/big.bin", "")
		if err != nil || n != size {
			t.Fatalf("read: %d %v", n, err)
		}
		h2 := sha256.New()
		got, err := io.Copy(h2, rc)
		rc.Close()
		if err != nil || got != size || !bytes.Equal(h.Sum(nil), h2.Sum(nil)) {
			t.Fatalf("read back %d bytes, err %v, identical %v", got, err, bytes.Equal(h.Sum(nil), h2.Sum(nil)))
		}
		t.Logf("50 MB: upload %v, download %v", up.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
		if out := mustExec(t, m, "vm1", "sha256sum /root/big.bin | cut -d' ' -f1; rm /root/big.bin"); strings.TrimSpace(out) != fmt.Sprintf("%x", h.Sum(nil)) {
			t.Fatalf("guest checksum %q", out)
		}
		if _, err := m.WriteFile(ctx, &pb.WriteFileRequest{SandboxId: "vm1", Path: "/root/secret", Content: []byte("s"), Mode: 0o600}); err != nil {
			t.Fatal(err)
		}
		if out := mustExec(t, m, "vm1", "stat -c %a /root/secret"); out != "600\n" {
			t.Fatalf("mode %q", out)
		}
	})

	t.Run("background process reattached", func(t *testing.T) {
		// envd replays only output no stream has carried yet; the first line
		// waits so it cannot ride on StartProcess's own (closed) stream.
		sp, err := m.StartProcess(ctx, &pb.StartProcessRequest{SandboxId: "vm1", Cmd: "/bin/sh", Args: []string{"-c", "sleep 0.5; echo first; sleep 1; echo second"}, Tag: "bg"})
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		err = m.ConnectProcess(ctx, &pb.ConnectProcessRequest{SandboxId: "vm1", Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: sp.Pid}}}, func(r *pb.ExecStreamResponse) error {
			out.Write(r.GetStdout())
			return nil
		})
		if err != nil || out.String() != "first\nsecond\n" {
			t.Fatalf("connect: %v %q", err, out.String())
		}
	})

	t.Run("pause and resume keep memory and files", func(t *testing.T) {
		if _, err := m.StartProcess(ctx, &pb.StartProcessRequest{SandboxId: "vm1", Cmd: "/bin/sh", Args: []string{"-c", "i=0; while :; do i=$((i+1)); echo $i > /tmp/count; sleep 0.2; done"}, Tag: "counter"}); err != nil {
			t.Fatal(err)
		}
		mustExec(t, m, "vm1", "echo kept > /tmp/marker")
		time.Sleep(1500 * time.Millisecond)
		before, _ := strconv.Atoi(strings.TrimSpace(mustExec(t, m, "vm1", "cat /tmp/count")))
		if before < 3 {
			t.Fatalf("counter at %d", before)
		}
		start := time.Now()
		p, err := m.Pause(ctx, "vm1")
		if err != nil {
			t.Fatalf("pause: %v", err)
		}
		t.Logf("pause: %v", time.Since(start).Round(time.Millisecond))
		if p.State != pb.SandboxState_SANDBOX_STATE_PAUSED || p.StateSeq <= info.StateSeq {
			t.Fatalf("paused info %v", p)
		}
		_, err = m.Pause(ctx, "vm1")
		wantErr(t, err, agenterr.ErrInvalidState)
		_, err = m.Exec(ctx, &pb.ExecRequest{SandboxId: "vm1", Cmd: "true"})
		wantErr(t, err, agenterr.ErrInvalidState)
		time.Sleep(time.Second) // a paused counter must not advance
		start = time.Now()
		r, err := m.Resume(ctx, "vm1", nil)
		if err != nil {
			t.Fatalf("resume: %v", err)
		}
		t.Logf("resume: %v", time.Since(start).Round(time.Millisecond))
		if r.State != pb.SandboxState_SANDBOX_STATE_RUNNING || r.StateSeq <= p.StateSeq {
			t.Fatalf("resumed info %v", r)
		}
		after, _ := strconv.Atoi(strings.TrimSpace(mustExec(t, m, "vm1", "cat /tmp/count")))
		if after < before || after > before+25 {
			t.Fatalf("counter went from %d to %d across pause/resume", before, after)
		}
		time.Sleep(time.Second)
		later, _ := strconv.Atoi(strings.TrimSpace(mustExec(t, m, "vm1", "cat /tmp/count")))
		if later <= after {
			t.Fatalf("counter stopped after resume: %d then %d", after, later)
		}
		if out := mustExec(t, m, "vm1", "cat /tmp/marker"); out != "kept\n" {
			t.Fatalf("marker %q", out)
		}
		// The guest clock was set again at resume.
		guest, _ := strconv.ParseInt(strings.TrimSpace(mustExec(t, m, "vm1", "date +%s")), 10, 64)
		if d := time.Now().Unix() - guest; d > 3 || d < -3 {
			t.Fatalf("guest clock off by %d s after resume", d)
		}
	})

	t.Run("auto-pause after timeout", func(t *testing.T) {
		to := int64(3)
		// Through a pause/resume cycle so the timeout is set by Resume.
		if _, err := m.Pause(ctx, "vm1"); err != nil {
			t.Fatal(err)
		}
		if _, err := m.Resume(ctx, "vm1", &to); err != nil {
			t.Fatal(err)
		}
		var seq uint64
		deadline := time.Now().Add(30 * time.Second)
		for {
			l := m.List(ctx)
			if len(l.AutoPausedSandboxIds) == 1 && l.AutoPausedSandboxIds[0] == "vm1" {
				seq = l.Sandboxes[0].StateSeq
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("not auto-paused: %v", l)
			}
			time.Sleep(200 * time.Millisecond)
		}
		// Not drained on read.
		if l := m.List(ctx); len(l.AutoPausedSandboxIds) != 1 || l.Sandboxes[0].StateSeq != seq {
			t.Fatalf("second list differs: %v", l)
		}
		r, err := m.Resume(ctx, "vm1", nil)
		if err != nil {
			t.Fatal(err)
		}
		if r.TimeoutSec != 3 || r.StateSeq <= seq {
			t.Fatalf("after resume: %v", r)
		}
		if out := mustExec(t, m, "vm1", "cat /tmp/marker"); out != "kept\n" {
			t.Fatalf("marker %q", out)
		}
	})

	if err := m.Destroy(ctx, "vm1"); err != nil {
		t.Fatalf("destroy: %v", err)
	}
	checkNoLeftovers(t, e.dir, true)
}

// TestVMAgentRestart: a second agent over the same WRENN_DIR re-adopts the
// running VM, which keeps its processes and answers exec; a VM whose QEMU
// died meanwhile is reported DEAD.
func TestVMAgentRestart(t *testing.T) {
	e := newVMEnv(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	m := e.parts.Manager
	for _, id := range []string{"keep", "dies"} {
		if _, err := m.Create(ctx, &pb.CreateSandboxRequest{SandboxId: id}); err != nil {
			t.Fatalf("create %s: %v", id, err)
		}
	}
	if _, err := m.StartProcess(ctx, &pb.StartProcessRequest{SandboxId: "keep", Cmd: "/bin/sleep", Args: []string{"600"}, Tag: "sleeper"}); err != nil {
		t.Fatal(err)
	}
	diesPID := pidOf(t, m, "dies")
	// The agent goes away (no Destroy, no network shutdown)...
	m.Close()
	// ...and one VMM dies while no agent watches.
	if err := syscallKill(diesPID); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)

	e.parts = e.build(t)
	m2 := e.parts.Manager
	i, err := m2.Get(ctx, "keep")
	if err != nil || i.State != pb.SandboxState_SANDBOX_STATE_RUNNING {
		t.Fatalf("keep after restart: %v %v", i, err)
	}
	if out := mustExec(t, m2, "keep", "echo adopted"); out != "adopted\n" {
		t.Fatalf("exec %q", out)
	}
	procs, err := m2.ListProcesses(ctx, "keep")
	if err != nil || len(procs.Processes) != 1 || procs.Processes[0].Tag != "sleeper" {
		t.Fatalf("processes after restart: %v %v", procs, err)
	}
	d, err := m2.Get(ctx, "dies")
	if err != nil || d.State != pb.SandboxState_SANDBOX_STATE_DEAD {
		t.Fatalf("dies after restart: %v %v", d, err)
	}
}

func pidOf(t *testing.T, m *sandbox.Manager, id string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(m.Dir(), "sandboxes", id, "run", "qemu.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

func syscallKill(pid int) error {
	p, err := os.FindProcess(pid)
	if err != nil {
		return err
	}
	if err := p.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	return nil
}

// TestVMSnapshotTemplateAndFlatten: a snapshot template starts sandboxes
// (by restore) that already run the template's process; the source keeps
// running; a flattened rootfs boots as a new image template.
func TestVMSnapshotTemplateAndFlatten(t *testing.T) {
	e := newVMEnv(t, nil)
	m := e.parts.Manager
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	if _, err := m.Create(ctx, &pb.CreateSandboxRequest{SandboxId: "src"}); err != nil {
		t.Fatalf("create: %v", err)
	}
	if _, err := m.StartProcess(ctx, &pb.StartProcessRequest{SandboxId: "src", Cmd: "/bin/sh", Args: []string{"-c", "i=0; while :; do i=$((i+1)); echo $i > /tmp/count; sleep 0.2; done"}, Tag: "counter"}); err != nil {
		t.Fatal(err)
	}
	mustExec(t, m, "src", "echo from-src > /root/marker; sync")
	time.Sleep(time.Second)

	start := time.Now()
	snap, err := m.CreateSnapshot(ctx, "src", "tpl")
	if err != nil {
		t.Fatalf("create snapshot: %v", err)
	}
	t.Logf("snapshot template: %v, %d bytes on disk for a %d MB guest", time.Since(start).Round(time.Millisecond), snap.SizeBytes, snap.MemoryMb)
	_, err = m.CreateSnapshot(ctx, "src", "tpl")
	wantErr(t, err, agenterr.ErrExists)
	// The source keeps running.
	mustExec(t, m, "src", "cat /tmp/count")

	start = time.Now()
	c, err := m.Create(ctx, &pb.CreateSandboxRequest{SandboxId: "clone", Template: "tpl"})
	if err != nil {
		t.Fatalf("create from snapshot: %v", err)
	}
	t.Logf("create from snapshot template: %v (TCG)", time.Since(start).Round(time.Millisecond))
	if c.Template != "tpl" || c.MemoryMb != snap.MemoryMb {
		t.Fatalf("clone info %v", c)
	}
	procs, err := m.ListProcesses(ctx, "clone")
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, p := range procs.Processes {
		found = found || p.Tag == "counter"
	}
	if !found {
		t.Fatalf("clone lacks the template's process: %v", procs)
	}
	a, _ := strconv.Atoi(strings.TrimSpace(mustExec(t, m, "clone", "cat /tmp/count")))
	time.Sleep(time.Second)
	b, _ := strconv.Atoi(strings.TrimSpace(mustExec(t, m, "clone", "cat /tmp/count")))
	if b <= a {
		t.Fatalf("clone's counter not running: %d then %d", a, b)
	}
	if out := mustExec(t, m, "clone", "cat /root/marker"); out != "from-src\n" {
		t.Fatalf("clone marker %q", out)
	}
	// Writes in the clone do not reach the source.
	mustExec(t, m, "clone", "echo clone > /root/marker; sync")
	if out := mustExec(t, m, "src", "cat /root/marker"); out != "from-src\n" {
		t.Fatalf("source marker %q", out)
	}
	wantErr(t, m.DeleteSnapshot(ctx, "tpl"), agenterr.ErrInvalidState) // in use
	if err := m.Destroy(ctx, "clone"); err != nil {
		t.Fatal(err)
	}
	wantErr(t, m.DeleteSnapshot(ctx, "minimal"), agenterr.ErrInvalidState)
	if err := m.DeleteSnapshot(ctx, "tpl"); err != nil {
		t.Fatalf("delete snapshot: %v", err)
	}
	wantErr(t, m.DeleteSnapshot(ctx, "tpl"), agenterr.ErrNotFound)

	start = time.Now()
	fl, err := m.FlattenRootfs(ctx, "src", "flat")
	if err != nil {
		t.Fatalf("flatten: %v", err)
	}
	t.Logf("flatten: %v, %d bytes", time.Since(start).Round(time.Millisecond), fl.SizeBytes)
	mustExec(t, m, "src", "cat /tmp/count") // still running
	if _, err := m.Create(ctx, &pb.CreateSandboxRequest{SandboxId: "fromflat", Template: "flat"}); err != nil {
		t.Fatalf("boot flattened template: %v", err)
	}
	if out := mustExec(t, m, "fromflat", "cat /root/marker"); out != "from-src\n" {
		t.Fatalf("flattened marker %q", out)
	}
	for _, id := range []string{"fromflat", "src"} {
		if err := m.Destroy(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
}

// TestVMTenInParallel boots ten sandboxes at once (on this 2-core TCG host)
// and checks each answers exec.
func TestVMTenInParallel(t *testing.T) {
	e := newVMEnv(t, nil)
	m := e.parts.Manager
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	const n = 10
	errs := make(chan error, n)
	durs := make(chan time.Duration, n)
	start := time.Now()
	for i := range n {
		go func() {
			s := time.Now()
			_, err := m.Create(ctx, &pb.CreateSandboxRequest{SandboxId: fmt.Sprintf("p%d", i), MemoryMb: 128})
			durs <- time.Since(s)
			errs <- err
		}()
	}
	var all []time.Duration
	for range n {
		if err := <-errs; err != nil {
			t.Errorf("create: %v", err)
		}
		all = append(all, <-durs)
	}
	if t.Failed() {
		return
	}
	t.Logf("10 parallel creates: all ready after %v; each %v", time.Since(start).Round(time.Millisecond), all)
	for i := range n {
		id := fmt.Sprintf("p%d", i)
		if out := mustExec(t, m, id, "echo "+id); out != id+"\n" {
			t.Fatalf("%s: %q", id, out)
		}
	}
}

// TestVMIsolation: a guest reaches neither another sandbox nor a server on
// the host's side of its own link; its own envd works (the tool works).
func TestVMIsolation(t *testing.T) {
	e := newVMEnv(t, nil)
	m := e.parts.Manager
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	a, err := m.Create(ctx, &pb.CreateSandboxRequest{SandboxId: "iso-a"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := m.Create(ctx, &pb.CreateSandboxRequest{SandboxId: "iso-b"})
	if err != nil {
		t.Fatal(err)
	}
	// A server on the host end of A's veth (an address this test's agent
	// created): the guest must not reach the host's own services.
	peer, err := netip.ParseAddrPort(a.EnvdAddress)
	if err != nil {
		t.Fatal(err)
	}
	hostEnd := peer.Addr().Prev()
	ln, err := net.Listen("tcp", netip.AddrPortFrom(hostEnd, 0).String())
	if err != nil {
		t.Fatalf("listen on host end %v: %v", hostEnd, err)
	}
	defer ln.Close()
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "host") }))
	// Reachable from the host, so only the guest's path is blocked.
	if resp, err := http.Get("http://" + ln.Addr().String()); err != nil {
		t.Fatalf("host server not reachable from the host: %v", err)
	} else {
		resp.Body.Close()
	}
	// busybox's static wget crashes in this image; plain HTTP over nc.
	tests := []struct {
		name  string
		addr  string
		reach bool
	}{
		{"own envd (control)", "127.0.0.1:49983", true},
		{"other sandbox", b.EnvdAddress, false},
		{"host service", ln.Addr().String(), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			host, port, _ := net.SplitHostPort(tt.addr)
			res, err := m.Exec(ctx, &pb.ExecRequest{SandboxId: "iso-a", Cmd: "/bin/sh", Args: []string{"-c", fmt.Sprintf("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 %s %s", host, port)}, TimeoutSec: 20})
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.HasPrefix(string(res.Stdout), "HTTP/1."); got != tt.reach {
				t.Fatalf("reach %s = %v, want %v (exit %d, stdout %.60q, stderr %q)", tt.addr, got, tt.reach, res.ExitCode, res.Stdout, res.Stderr)
			}
		})
	}
}

// TestVMPauseAllAndBadSnapshot: PauseAll pauses everything; a resume with
// a missing or corrupt snapshot fails clearly and leaves the sandbox paused
// with its files, and works once the snapshot is whole again.
func TestVMPauseAllAndBadSnapshot(t *testing.T) {
	e := newVMEnv(t, nil)
	m := e.parts.Manager
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for _, id := range []string{"pa", "pb"} {
		if _, err := m.Create(ctx, &pb.CreateSandboxRequest{SandboxId: id}); err != nil {
			t.Fatal(err)
		}
	}
	mt, err := m.Metrics(ctx, "pa")
	if err != nil || mt.Current.MemoryTotalBytes == 0 || mt.Current.DiskTotalBytes == 0 || mt.Current.CpuPercent < 0 {
		t.Fatalf("metrics %v %v", mt, err)
	}
	mustExec(t, m, "pa", "echo pa > /tmp/who")
	res := m.PauseAll(ctx, 2)
	if len(res.PausedSandboxIds) != 2 || len(res.Failed) != 0 {
		t.Fatalf("pause all: %v", res)
	}
	_, err = m.Metrics(ctx, "pa")
	wantErr(t, err, agenterr.ErrInvalidState)

	snapDir := filepath.Join(m.Dir(), "snapshots", "pa")
	files, _ := os.ReadDir(snapDir)
	if len(files) == 0 {
		t.Fatalf("no snapshot files in %s", snapDir)
	}
	state := filepath.Join(snapDir, "state")
	if _, err := os.Stat(state); err != nil {
		t.Fatalf("snapshot layout changed? %v (files %v)", err, files)
	}
	orig, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		break_ func() error
	}{
		{"missing state file", func() error { return os.Rename(state, state+".away") }},
		{"corrupt state file", func() error { return os.WriteFile(state, []byte("not a migration stream"), 0o600) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.break_(); err != nil {
				t.Fatal(err)
			}
			_, err := m.Resume(ctx, "pa", nil)
			if err == nil {
				t.Fatal("resume with a broken snapshot succeeded")
			}
			t.Logf("error: %v", err)
			i, _ := m.Get(ctx, "pa")
			if i.State != pb.SandboxState_SANDBOX_STATE_PAUSED {
				t.Fatalf("state %v after failed resume", i.State)
			}
			if left, _ := os.ReadDir(snapDir); len(left) < len(files)-1 {
				t.Fatalf("snapshot files deleted: %v -> %v", files, left)
			}
			os.Remove(state + ".away")
			if err := os.WriteFile(state, orig, 0o600); err != nil {
				t.Fatal(err)
			}
		})
	}
	if _, err := m.Resume(ctx, "pa", nil); err != nil {
		t.Fatalf("resume with the snapshot restored: %v", err)
	}
	if out := mustExec(t, m, "pa", "cat /tmp/who"); out != "pa\n" {
		t.Fatalf("after resume %q", out)
	}
}

// Exec round trip through the manager against envd directly (the same
// command on the same VM), for docs/benchmarks.md:
//
//	go test -run XXX -bench VMExec -benchtime 100x ./internal/agent/sandbox/
func benchExec(b *testing.B, direct bool) {
	e := newVMEnv(b, nil)
	m := e.parts.Manager
	ctx := context.Background()
	info, err := m.Create(ctx, &pb.CreateSandboxRequest{SandboxId: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	var c *envdclient.Client
	if direct {
		c = envdclient.New(info.EnvdAddress)
		defer c.Close()
		b, err := os.ReadFile(filepath.Join(m.Dir(), "sandboxes", "bench", "state.json"))
		if err != nil {
			panic(err)
		}
		var st struct {
			Token string `json:"access_token"`
		}
		json.Unmarshal(b, &st)
		c.SetToken(st.Token)
	}
	b.ResetTimer()
	for range b.N {
		if direct {
			st, err := c.Process.Start(ctx, connect.NewRequest(&procpb.StartRequest{Process: &procpb.ProcessConfig{Cmd: "/bin/true"}}))
			if err != nil {
				b.Fatal(err)
			}
			for st.Receive() {
			}
			if err := st.Err(); err != nil {
				b.Fatal(err)
			}
			st.Close()
			continue
		}
		if _, err := m.Exec(ctx, &pb.ExecRequest{SandboxId: "bench", Cmd: "/bin/true"}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVMExecViaManager(b *testing.B) { benchExec(b, false) }
func BenchmarkVMExecDirectEnvd(b *testing.B) { benchExec(b, true) }

// TestVMMeasure records the numbers for docs/benchmarks.md (opt-in: it
// only measures). WRENN_MEASURE=1 go test -run TestVMMeasure -v ./internal/agent/sandbox/
func TestVMMeasure(t *testing.T) {
	if os.Getenv("WRENN_MEASURE") != "1" {
		t.Skip("measurement only; set WRENN_MEASURE=1")
	}
	e := newVMEnv(t, nil)
	m := e.parts.Manager
	ctx := context.Background()
	const runs = 6
	pct := func(d []time.Duration) string {
		s := append([]time.Duration(nil), d...)
		for i := range s {
			for j := i + 1; j < len(s); j++ {
				if s[j] < s[i] {
					s[i], s[j] = s[j], s[i]
				}
			}
		}
		return fmt.Sprintf("p50 %v p95 %v (n=%d)", s[len(s)/2].Round(time.Millisecond), s[(len(s)*95+99)/100-1].Round(time.Millisecond), len(s))
	}
	var cold, pause, resume, clone []time.Duration
	for i := range runs {
		id := fmt.Sprintf("c%d", i)
		s := time.Now()
		if _, err := m.Create(ctx, &pb.CreateSandboxRequest{SandboxId: id}); err != nil {
			t.Fatal(err)
		}
		cold = append(cold, time.Since(s))
		if i == 0 {
			du, _ := os.ReadFile(filepath.Join(m.Dir(), "sandboxes", id, "rootfs.disk"))
			t.Logf("new sandbox disk file: %d bytes apparent", len(du))
		}
		s = time.Now()
		if _, err := m.Pause(ctx, id); err != nil {
			t.Fatal(err)
		}
		pause = append(pause, time.Since(s))
		if i == 0 {
			var n int64
			filepath.WalkDir(filepath.Join(m.Dir(), "snapshots", id), func(p string, d os.DirEntry, err error) error {
				if err == nil && !d.IsDir() {
					if fi, err := d.Info(); err == nil {
						n += fi.Sys().(*syscall.Stat_t).Blocks * 512
					}
				}
				return nil
			})
			t.Logf("pause snapshot on disk: %d MB for a 256 MB guest", n>>20)
		}
		s = time.Now()
		if _, err := m.Resume(ctx, id, nil); err != nil {
			t.Fatal(err)
		}
		resume = append(resume, time.Since(s))
		if i == 0 {
			if _, err := m.CreateSnapshot(ctx, id, "mtpl"); err != nil {
				t.Fatal(err)
			}
		}
		if err := m.Destroy(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	for i := range runs {
		id := fmt.Sprintf("k%d", i)
		s := time.Now()
		if _, err := m.Create(ctx, &pb.CreateSandboxRequest{SandboxId: id, Template: "mtpl"}); err != nil {
			t.Fatal(err)
		}
		clone = append(clone, time.Since(s))
		m.Destroy(ctx, id)
	}
	m.DeleteSnapshot(ctx, "mtpl")
	t.Logf("cold create-to-ready (TCG): %s", pct(cold))
	t.Logf("pause: %s", pct(pause))
	t.Logf("resume to envd ready: %s", pct(resume))
	t.Logf("create from snapshot template (TCG): %s", pct(clone))
}

// A pause whose snapshot cannot be written (disk full), or whose record
// cannot be (state.json blocked), must leave the VM running with its
// memory, and a later pause with room must work.
func TestVMPauseWithFullDiskKeepsRunning(t *testing.T) {
	e := newVMEnv(t, nil)
	m := e.parts.Manager
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := m.Create(ctx, &pb.CreateSandboxRequest{SandboxId: "full"}); err != nil {
		t.Fatal(err)
	}
	mustExec(t, m, "full", "echo kept > /tmp/marker")

	// A 64 KiB filesystem where snapshots go: too small for the device state.
	snaps := filepath.Join(m.Dir(), "snapshots")
	if err := os.MkdirAll(snaps, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", snaps, "tmpfs", 0, "size=64k"); err != nil {
		testenv.Require(t, false, "mount a small tmpfs: %v", err)
	}
	mounted := true
	unmount := func() {
		if mounted {
			if err := syscall.Unmount(snaps, syscall.MNT_DETACH); err != nil {
				t.Errorf("unmount %s: %v", snaps, err)
			}
			mounted = false
		}
	}
	t.Cleanup(unmount)

	_, err := m.Pause(ctx, "full")
	if err == nil {
		t.Fatal("pause with a full snapshot disk succeeded")
	}
	t.Logf("pause error: %v", err)
	info, err := m.Get(ctx, "full")
	if err != nil || info.State != pb.SandboxState_SANDBOX_STATE_RUNNING {
		t.Fatalf("after the failed pause: state %v, err %v; want RUNNING", info.GetState(), err)
	}
	if out := mustExec(t, m, "full", "cat /tmp/marker"); out != "kept\n" {
		t.Fatalf("after the failed pause the guest says %q", out)
	}
	if left, _ := os.ReadDir(snaps); len(left) != 0 {
		t.Fatalf("a failed pause left snapshot files: %v", left)
	}

	unmount()

	// The snapshot fits but the record of it cannot be written: a snapshot
	// no record names would be lost to a restarted agent, so the pause is
	// undone.
	stateFile := filepath.Join(m.Dir(), "sandboxes", "full", "state.json")
	saved, err := os.ReadFile(stateFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(stateFile); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(stateFile, "in-the-way"), 0o700); err != nil {
		t.Fatal(err)
	}
	_, err = m.Pause(ctx, "full")
	if err == nil || !strings.Contains(err.Error(), "record paused sandbox") {
		t.Fatalf("pause with state.json blocked: %v, want the record failure", err)
	}
	if info, err := m.Get(ctx, "full"); err != nil || info.State != pb.SandboxState_SANDBOX_STATE_RUNNING {
		t.Fatalf("after the unrecorded pause: state %v, err %v; want RUNNING", info.GetState(), err)
	}
	if out := mustExec(t, m, "full", "cat /tmp/marker"); out != "kept\n" {
		t.Fatalf("after the unrecorded pause the guest says %q", out)
	}
	if left, _ := os.ReadDir(snaps); len(left) != 0 {
		t.Fatalf("an unrecorded pause left snapshot files: %v", left)
	}
	if err := os.RemoveAll(stateFile); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(stateFile, saved, 0o600); err != nil {
		t.Fatal(err)
	}

	if _, err := m.Pause(ctx, "full"); err != nil {
		t.Fatalf("pause with room: %v", err)
	}
	if b, err := os.ReadFile(stateFile); err != nil || !strings.Contains(string(b), `"state": "paused"`) {
		t.Fatalf("state.json after pause: %s, %v; want the state by name", b, err)
	}
	if _, err := m.Resume(ctx, "full", nil); err != nil {
		t.Fatalf("resume: %v", err)
	}
	if out := mustExec(t, m, "full", "cat /tmp/marker"); out != "kept\n" {
		t.Fatalf("after pause and resume the guest says %q", out)
	}
}

// A sandbox's disk larger than the image it starts from: envd grows the
// root filesystem at boot, so the space is usable.
func TestVMRootFilesystemFillsItsDisk(t *testing.T) {
	e := newVMEnv(t, nil)
	m := e.parts.Manager
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	tests := []struct {
		name      string
		diskMB    uint32
		minSizeKB int64
		maxSizeKB int64
	}{
		{"image size", 1024, 900 << 10, 1100 << 10},
		{"twice the image", 2048, 1900 << 10, 2100 << 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := fmt.Sprintf("disk-%d", tt.diskMB)
			if _, err := m.Create(ctx, &pb.CreateSandboxRequest{SandboxId: id, DiskMb: tt.diskMB}); err != nil {
				t.Fatal(err)
			}
			defer m.Destroy(ctx, id)
			out := mustExec(t, m, id, "df -k / | tail -1 | awk '{print $2}'")
			size, err := strconv.ParseInt(strings.TrimSpace(out), 10, 64)
			if err != nil {
				t.Fatalf("df output %q: %v", out, err)
			}
			if size < tt.minSizeKB || size > tt.maxSizeKB {
				t.Fatalf("root filesystem is %d KiB with disk_mb=%d, want %d..%d", size, tt.diskMB, tt.minSizeKB, tt.maxSizeKB)
			}
			// Writes still work on the grown filesystem.
			mustExec(t, m, id, "dd if=/dev/zero of=/root/fill bs=1M count=64 2>/dev/null && sync && ls -l /root/fill")
		})
	}
}

// A guest whose disk is full answers an upload with ErrDiskFull (envd's
// 507), which the server sends as RESOURCE_EXHAUSTED with reason DISK_FULL
// and the API as 507 sandbox_disk_full; and an exec that a pause overtakes
// ends at once with ErrInvalidState instead of hanging on a VM that is gone.
func TestVMGuestDiskFullAndExecRacingPause(t *testing.T) {
	e := newVMEnv(t, nil)
	m := e.parts.Manager
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := m.Create(ctx, &pb.CreateSandboxRequest{SandboxId: "fill"}); err != nil {
		t.Fatal(err)
	}
	// A 64 KiB filesystem inside the guest stands for a full disk.
	mustExec(t, m, "fill", "mkdir -p /mnt/small && mount -t tmpfs -o size=64k tmpfs /mnt/small")
	_, err := m.WriteFile(ctx, &pb.WriteFileRequest{SandboxId: "fill", Path: "/mnt/small/big", Content: make([]byte, 1<<20)})
	wantErr(t, err, agenterr.ErrDiskFull)
	if _, err := m.WriteFile(ctx, &pb.WriteFileRequest{SandboxId: "fill", Path: "/mnt/small/tiny", Content: []byte("fits")}); err != nil {
		t.Fatalf("a small write after the full one: %v", err)
	}

	errc := make(chan error, 1)
	go func() {
		_, err := m.Exec(ctx, &pb.ExecRequest{SandboxId: "fill", Cmd: "/bin/sh", Args: []string{"-c", "sleep 120"}})
		errc <- err
	}()
	time.Sleep(time.Second) // the exec runs in the guest
	if _, err := m.Pause(ctx, "fill"); err != nil {
		t.Fatalf("pause: %v", err)
	}
	select {
	case err := <-errc:
		wantErr(t, err, agenterr.ErrInvalidState)
	case <-time.After(20 * time.Second):
		t.Fatal("the exec still waits 20 s after its sandbox was paused")
	}
}
