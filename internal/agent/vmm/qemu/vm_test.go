package qemu

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/wrenn-dev/wrenn/internal/agent/images"
	"github.com/wrenn-dev/wrenn/internal/agent/vmm"
	"github.com/wrenn-dev/wrenn/internal/agent/vmm/accel"
	"github.com/wrenn-dev/wrenn/internal/testenv"
)

const envdPort = 49983

// prereq skips (or, with CI=true, fails) when QEMU or the images are missing.
func prereq(t testing.TB, what string) {
	t.Helper()
	testenv.Require(t, false, "%s", what)
}

type env struct {
	kernel string
	rootfs string
	accel  vmm.Accel
}

var (
	envOnce sync.Once
	envVal  env
	envErr  string
)

// testEnv finds the installed images and decides the acceleration once per
// test binary.
func testEnv(t testing.TB) env {
	t.Helper()
	envOnce.Do(func() {
		if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
			envErr = "qemu-system-x86_64 not installed (apt-get install qemu-system-x86)"
			return
		}
		p := images.NewPaths(images.DirFromEnv())
		st, err := images.Status(p.Dir)
		if err != nil {
			envErr = fmt.Sprintf("images under %s: %v", p.Dir, err)
			return
		}
		if err := st.Err(); err != nil {
			envErr = err.Error()
			return
		}
		k, _ := p.ResolvedKernel()
		r, _ := p.ResolvedRootfs(images.MinimalTemplate)
		mode, err := accel.ParseMode(os.Getenv("WRENN_ACCEL"))
		if err != nil {
			envErr = err.Error()
			return
		}
		res, err := accel.NewDetector(accel.Options{Mode: mode, KernelPath: k}).Detect(context.Background())
		if err != nil {
			envErr = err.Error()
			return
		}
		envVal = env{kernel: k, rootfs: r, accel: res.Accel}
	})
	if envErr != "" {
		prereq(t, envErr)
	}
	return envVal
}

func newDriver(t testing.TB) *Driver {
	t.Helper()
	d, err := New(Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// overlay makes a qcow2 disk backed by base, as the storage layer does.
func overlay(t testing.TB, base, baseFormat, path string) {
	t.Helper()
	out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-F", baseFormat, "-b", base, path).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img create: %v: %s", err, out)
	}
}

func freePort(t testing.TB) netip.AddrPort {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return netip.MustParseAddrPort(l.Addr().String())
}

type vmSetup struct {
	cfg vmm.Config
	mo  MachineOptions
	url string
}

// vmName makes a VM name unique to this test process: the checks for
// leftover QEMU processes look at every process on the machine.
func vmName(name string) string { return fmt.Sprintf("%s-%d", name, os.Getpid()) }

func newVMSetup(t testing.TB, e env, name string) vmSetup {
	t.Helper()
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.qcow2")
	overlay(t, e.rootfs, "raw", disk)
	args, err := KernelCmdline(KernelParams{GuestIP: UserNetGuestIP, Gateway: UserNetGateway, PrefixLen: 24, Accel: e.accel})
	if err != nil {
		t.Fatal(err)
	}
	hp := freePort(t)
	return vmSetup{
		cfg: vmm.Config{ID: vmName(name), KernelPath: e.kernel, KernelArgs: args, DiskPath: disk, DiskFormat: "qcow2",
			VCPUs: 1, MemoryMB: 256, MAC: "06:00:ac:10:00:02", RunDir: filepath.Join(dir, "run"), Accel: e.accel},
		mo:  MachineOptions{UserNet: []Forward{{HostAddr: hp, GuestPort: envdPort}}},
		url: "http://" + hp.String() + "/health",
	}
}

// waitHealth polls envd's /health until it answers 2xx.
func waitHealth(ctx context.Context, url string) error {
	c := &http.Client{Timeout: 500 * time.Millisecond}
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := c.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode/100 == 2 {
				return nil
			}
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("health %s: %w (last: %v)", url, ctx.Err(), err)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func mustHealth(t testing.TB, m *Machine, url string, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := waitHealth(ctx, url); err != nil {
		serial, _ := os.ReadFile(m.SerialLog())
		t.Fatalf("%v\nserial log:\n%s", err, serial)
	}
	return time.Since(start)
}

// processGone reports whether pid no longer names a live process.
func processGone(pid int) bool {
	err := syscall.Kill(pid, 0)
	if errors.Is(err, syscall.ESRCH) {
		return true
	}
	ps, err := readProcStat(pid)
	return err != nil || ps.State == 'Z'
}

func startVM(t testing.TB, d *Driver, s vmSetup) *Machine {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := d.StartWithOptions(ctx, s.cfg, s.mo)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Stop(context.Background()) })
	return m
}

func TestBootPauseResumeStop(t *testing.T) {
	e := testEnv(t)
	tests := []struct {
		name      string
		memoryDir bool
	}{
		{"ram file in run dir", false},
		{"ram file in memory dir", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opts := Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
			if tc.memoryDir {
				opts.MemoryDir = t.TempDir()
			}
			d, err := New(opts)
			if err != nil {
				t.Fatal(err)
			}
			bootPauseResumeStop(t, e, d)
		})
	}
}

func bootPauseResumeStop(t *testing.T, e env, d *Driver) {
	s := newVMSetup(t, e, "sb-boot")
	memFile := filepath.Join(s.cfg.RunDir, memFileName)
	if d.opts.MemoryDir != "" {
		memFile = filepath.Join(d.opts.MemoryDir, vmName("sb-boot")+".mem")
	}
	start := time.Now()
	m := startVM(t, d, s)
	mustHealth(t, m, s.url, 60*time.Second)
	t.Logf("accel %s: start to /health %v", e.accel, time.Since(start))
	if _, err := os.Stat(memFile); err != nil {
		t.Fatalf("guest RAM file: %v", err)
	}
	met, err := m.Metrics(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if met.RSSBytes < 10<<20 || met.CPUTime <= 0 {
		t.Fatalf("implausible metrics %+v", met)
	}
	t.Logf("metrics after boot: rss %d MiB cpu %v", met.RSSBytes>>20, met.CPUTime)

	ctx := context.Background()
	t0 := time.Now()
	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	pauseTook := time.Since(t0)
	// A paused guest cannot answer.
	c := &http.Client{Timeout: 400 * time.Millisecond}
	if resp, err := c.Get(s.url); err == nil {
		resp.Body.Close()
		t.Fatalf("paused guest answered /health with %d", resp.StatusCode)
	}
	t0 = time.Now()
	if err := m.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	resumeTook := time.Since(t0)
	again := mustHealth(t, m, s.url, 10*time.Second)
	t.Logf("pause %v, resume %v, /health after resume %v", pauseTook, resumeTook, again)

	pid := m.PID()
	marker := "-name\x00" + s.cfg.ID + "\x00"
	if len(processesWith(t, marker)) != 1 {
		t.Fatalf("want exactly one process with %q", marker)
	}
	if err := m.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-m.Done():
	default:
		t.Fatal("Done not closed after Stop")
	}
	if pids := processesWith(t, marker); len(pids) > 0 {
		t.Fatalf("processes left after Stop: %v", pids)
	}
	if !processGone(pid) {
		t.Fatalf("qemu pid %d still alive after Stop", pid)
	}
	if err := m.Stop(ctx); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	for _, p := range []string{memFile, filepath.Join(s.cfg.RunDir, qmpSocketName),
		filepath.Join(s.cfg.RunDir, pidFileName), filepath.Join(s.cfg.RunDir, stateFileName)} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left after Stop (err %v)", p, err)
		}
	}
	if err := m.Pause(ctx); !errors.Is(err, vmm.ErrNotRunning) {
		t.Errorf("Pause after Stop: got %v, want ErrNotRunning", err)
	}
	if _, err := m.Metrics(ctx); !errors.Is(err, vmm.ErrNotRunning) {
		t.Errorf("Metrics after Stop: got %v, want ErrNotRunning", err)
	}
}

func fileSum(t testing.TB, path string) [32]byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(data)
}

func TestSnapshotRestoreClones(t *testing.T) {
	e := testEnv(t)
	d := newDriver(t)
	ctx := context.Background()
	src := newVMSetup(t, e, "sb-src")
	m := startVM(t, d, src)
	mustHealth(t, m, src.url, 60*time.Second)

	snapDir := filepath.Join(t.TempDir(), "snap")
	t0 := time.Now()
	snap, err := m.Snapshot(ctx, snapDir)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("snapshot (pause+state+memory+disk copy): %v", time.Since(t0))
	if snap.MemoryPath == "" || snap.Driver != DriverName || snap.MemoryMB != 256 {
		t.Fatalf("unexpected snapshot %+v", snap)
	}
	st, _ := os.Stat(snap.StatePath)
	t.Logf("state file %d KiB", st.Size()>>10)
	if got, err := ReadSnapshot(snapDir); err != nil || got != snap {
		t.Fatalf("ReadSnapshot = %+v, %v; want %+v", got, err, snap)
	}
	memSum := fileSum(t, snap.MemoryPath)

	// The source may continue after a snapshot.
	if err := m.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	mustHealth(t, m, src.url, 10*time.Second)
	if err := m.Stop(ctx); err != nil {
		t.Fatal(err)
	}

	// Two clones from one snapshot, at the same time.
	var clones []*Machine
	for i := range 2 {
		c := newVMSetup(t, e, fmt.Sprintf("sb-clone%d", i))
		overlay(t, snap.DiskPath, snap.DiskFormat, filepath.Join(filepath.Dir(c.cfg.DiskPath), "clone.qcow2"))
		c.cfg.DiskPath = filepath.Join(filepath.Dir(c.cfg.DiskPath), "clone.qcow2")
		c.cfg.KernelArgs = "" // state comes from the snapshot
		t0 := time.Now()
		rm, err := d.RestoreWithOptions(ctx, c.cfg, snap, c.mo)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = rm.Stop(context.Background()) })
		loaded := time.Since(t0)
		h := mustHealth(t, rm, c.url, 30*time.Second)
		t.Logf("clone %d: state loaded in %v, /health %v later", i, loaded, h)
		clones = append(clones, rm)
	}
	// A clone of a clone: its RAM is private, so it travels in the stream.
	snap2, err := clones[0].Snapshot(ctx, filepath.Join(t.TempDir(), "snap2"))
	if err != nil {
		t.Fatal(err)
	}
	if snap2.MemoryPath != "" {
		t.Fatalf("snapshot of a clone should carry RAM in the state, got memory %q", snap2.MemoryPath)
	}
	c := newVMSetup(t, e, "sb-clone-of-clone")
	c.cfg.DiskPath = snap2.DiskPath
	rm, err := d.RestoreWithOptions(ctx, c.cfg, snap2, c.mo)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rm.Stop(context.Background()) })
	mustHealth(t, rm, c.url, 30*time.Second)

	for _, cm := range append(clones, rm) {
		pid := cm.PID()
		if err := cm.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		if !processGone(pid) {
			t.Fatalf("clone pid %d alive after Stop", pid)
		}
	}
	if fileSum(t, snap.MemoryPath) != memSum {
		t.Fatal("restoring clones modified the snapshot's memory file")
	}
}

func TestAdoptFromNewDriver(t *testing.T) {
	e := testEnv(t)
	ctx := context.Background()
	s := newVMSetup(t, e, "sb-adopt")
	m := startVM(t, newDriver(t), s)
	mustHealth(t, m, s.url, 60*time.Second)

	// A new driver (as after an agent restart) knows only the run dir. The
	// old handle stays alive: handles do not hold QMP between operations.
	d2 := newDriver(t)
	am, err := d2.AdoptMachine(ctx, vmm.Config{ID: s.cfg.ID, RunDir: s.cfg.RunDir})
	if err != nil {
		t.Fatal(err)
	}
	if am.PID() != m.PID() {
		t.Fatalf("adopted pid %d, started %d", am.PID(), m.PID())
	}
	if _, err := am.Metrics(ctx); err != nil {
		t.Fatal(err)
	}
	// Both handles work, one after the other.
	if err := m.Pause(ctx); err != nil {
		t.Fatalf("old handle after adoption: %v", err)
	}
	if err := m.Resume(ctx); err != nil {
		t.Fatalf("old handle after adoption: %v", err)
	}
	if err := am.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if err := am.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	mustHealth(t, am, s.url, 10*time.Second)
	if err := am.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-am.Done():
	default:
		t.Fatal("adopted Done not closed")
	}
	select {
	case <-m.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("original handle did not see the exit")
	}
	if !processGone(m.PID()) {
		t.Fatal("qemu alive after adopted Stop")
	}
	// Nothing left to adopt.
	if _, err := d2.Adopt(ctx, vmm.Config{ID: s.cfg.ID, RunDir: s.cfg.RunDir}); !errors.Is(err, vmm.ErrNotRunning) {
		t.Fatalf("Adopt after Stop: got %v, want ErrNotRunning", err)
	}
}

// TestAdoptDeadVMM: a VMM killed behind the agent's back is reported as
// not running, not adopted.
func TestAdoptDeadVMM(t *testing.T) {
	e := testEnv(t)
	s := newVMSetup(t, e, "sb-dead")
	m := startVM(t, newDriver(t), s)
	// Keep the state file the way a crashed agent would leave it.
	if err := syscall.Kill(m.PID(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-m.Done()
	_, err := newDriver(t).Adopt(context.Background(), vmm.Config{ID: s.cfg.ID, RunDir: s.cfg.RunDir})
	if !errors.Is(err, vmm.ErrNotRunning) {
		t.Fatalf("got %v, want ErrNotRunning", err)
	}
}

// processesWith lists the PIDs whose command line contains marker
// (arguments separated by NUL).
func processesWith(t *testing.T, marker string) []string {
	t.Helper()
	dirs, err := filepath.Glob("/proc/[0-9]*")
	if err != nil {
		t.Fatal(err)
	}
	var pids []string
	for _, d := range dirs {
		cmdline, err := os.ReadFile(d + "/cmdline")
		if err == nil && strings.Contains(string(cmdline), marker) {
			pids = append(pids, filepath.Base(d))
		}
	}
	return pids
}

func TestStartBadInput(t *testing.T) {
	e := testEnv(t)
	d := newDriver(t)
	notKernel := filepath.Join(t.TempDir(), "not-a-kernel")
	if err := os.WriteFile(notKernel, []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		mod  func(*vmm.Config)
	}{
		{"no id", func(c *vmm.Config) { c.ID = "" }},
		{"zero vcpus", func(c *vmm.Config) { c.VCPUs = 0 }},
		{"tiny memory", func(c *vmm.Config) { c.MemoryMB = 1 }},
		{"relative disk", func(c *vmm.Config) { c.DiskPath = "disk.qcow2" }},
		{"missing disk", func(c *vmm.Config) { c.DiskPath = "/nonexistent/disk.qcow2" }},
		{"missing kernel", func(c *vmm.Config) { c.KernelPath = "/nonexistent/vmlinux" }},
		{"bad format", func(c *vmm.Config) { c.DiskFormat = "vmdk" }},
		{"bad mac", func(c *vmm.Config) { c.MAC = "zz:00:00:00:00:00" }},
		{"bad accel", func(c *vmm.Config) { c.Accel = "hvf" }},
		{"comma in path", func(c *vmm.Config) { c.RunDir = "/tmp/a,b" }},
		{"garbage kernel", func(c *vmm.Config) { c.KernelPath = notKernel }},
		{"missing netns", func(c *vmm.Config) { c.NetNSPath = "/nonexistent/netns" }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newVMSetup(t, e, "sb-bad")
			tc.mod(&s.cfg)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			m, err := d.StartWithOptions(ctx, s.cfg, s.mo)
			if err == nil {
				m.Stop(ctx)
				t.Fatal("Start succeeded")
			}
			t.Logf("error: %v", err)
		})
	}
	if pids := processesWith(t, "-name\x00"+vmName("sb-bad")+"\x00"); len(pids) > 0 {
		t.Fatalf("qemu left running after failed starts: %v", pids)
	}
}

func TestRestoreBadSnapshot(t *testing.T) {
	e := testEnv(t)
	d := newDriver(t)
	s := newVMSetup(t, e, "sb-rbad")
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	if err := os.WriteFile(state, []byte("not a migration stream"), 0o600); err != nil {
		t.Fatal(err)
	}
	good := vmm.Snapshot{Dir: dir, StatePath: state, DiskPath: s.cfg.DiskPath, DiskFormat: "qcow2", VCPUs: 1, MemoryMB: 256, Driver: DriverName}
	tests := []struct {
		name    string
		snap    func(vmm.Snapshot) vmm.Snapshot
		invalid bool // want ErrSnapshotInvalid (else any error)
	}{
		{"other driver", func(s vmm.Snapshot) vmm.Snapshot { s.Driver = "firecracker"; return s }, true},
		{"memory size", func(s vmm.Snapshot) vmm.Snapshot { s.MemoryMB = 512; return s }, true},
		{"missing state", func(s vmm.Snapshot) vmm.Snapshot { s.StatePath = filepath.Join(dir, "nope"); return s }, true},
		{"missing memory", func(s vmm.Snapshot) vmm.Snapshot { s.MemoryPath = filepath.Join(dir, "nope"); return s }, true},
		{"quote in path", func(s vmm.Snapshot) vmm.Snapshot { s.StatePath = "/tmp/it's"; return s }, true},
		{"garbage state", func(s vmm.Snapshot) vmm.Snapshot { return s }, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			m, err := d.RestoreWithOptions(ctx, s.cfg, tc.snap(good), s.mo)
			if err == nil {
				m.Stop(ctx)
				t.Fatal("Restore succeeded")
			}
			if tc.invalid && !errors.Is(err, vmm.ErrSnapshotInvalid) {
				t.Fatalf("got %v, want ErrSnapshotInvalid", err)
			}
			t.Logf("error: %v", err)
		})
	}
	// The failed restores left no QEMU behind.
	if pids := processesWith(t, "-name\x00"+vmName("sb-rbad")+"\x00"); len(pids) > 0 {
		t.Fatalf("qemu left running: %v", pids)
	}
}

// netnsWithTap creates a network namespace holding tap0 with the gateway
// address, as the network package does, and removes it at the end.
func netnsWithTap(t *testing.T, gw netip.Prefix, guest netip.Addr, mac string) string {
	t.Helper()
	if _, err := exec.LookPath("ip"); err != nil {
		prereq(t, "iproute2 (ip) for the TAP test fixture")
	}
	name := fmt.Sprintf("wrtest-%d", os.Getpid())
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		prereq(t, fmt.Sprintf("cannot create a network namespace (root needed): %v: %s", err, out))
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	run("-n", name, "link", "set", "lo", "up")
	run("-n", name, "tuntap", "add", "dev", "tap0", "mode", "tap")
	run("-n", name, "addr", "add", gw.String(), "dev", "tap0")
	run("-n", name, "link", "set", "tap0", "up")
	// Without a static neighbour the first connection waits for ARP.
	run("-n", name, "neigh", "replace", guest.String(), "lladdr", mac, "dev", "tap0", "nud", "permanent")
	return "/var/run/netns/" + name
}

// healthInNetns does GET /health from inside the namespace: the socket is
// created on a thread switched into it for the duration.
func healthInNetns(nsPath string, addr netip.AddrPort, timeout time.Duration) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		ns, err := netns.GetFromPath(nsPath)
		if err != nil {
			errc <- err
			return
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			errc <- err
			return
		}
		// Back to the agent's namespace before the thread is reused.
		defer func() {
			if netns.Set(orig) == nil {
				runtime.UnlockOSThread()
			}
		}()
		deadline := time.Now().Add(timeout)
		for {
			err = func() error {
				c, err := net.DialTimeout("tcp", addr.String(), 300*time.Millisecond)
				if err != nil {
					return err
				}
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(time.Second))
				if _, err := c.Write([]byte("GET /health HTTP/1.0\r\nHost: envd\r\n\r\n")); err != nil {
					return err
				}
				buf := make([]byte, 12)
				if _, err := io.ReadFull(c, buf); err != nil {
					return err
				}
				if string(buf[:9]) != "HTTP/1.0 " && string(buf[:9]) != "HTTP/1.1 " || buf[9] != '2' {
					return fmt.Errorf("unexpected reply %q", buf)
				}
				return nil
			}()
			if err == nil || time.Now().After(deadline) {
				errc <- err
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	return <-errc
}

func TestTapInNetns(t *testing.T) {
	e := testEnv(t)
	if os.Geteuid() != 0 {
		prereq(t, "root for network namespaces")
	}
	gw := netip.MustParsePrefix("10.77.0.1/30")
	guest := netip.MustParseAddr("10.77.0.2")
	s := newVMSetup(t, e, "sb-tap")
	nsPath := netnsWithTap(t, gw, guest, s.cfg.MAC)
	args, err := KernelCmdline(KernelParams{GuestIP: guest, Gateway: gw.Addr(), PrefixLen: gw.Bits(), Accel: e.accel})
	if err != nil {
		t.Fatal(err)
	}
	s.cfg.KernelArgs, s.cfg.TapDevice, s.cfg.NetNSPath = args, "tap0", nsPath
	start := time.Now()
	m := startVM(t, newDriver(t), vmSetup{cfg: s.cfg})
	if err := healthInNetns(nsPath, netip.AddrPortFrom(guest, envdPort), 60*time.Second); err != nil {
		serial, _ := os.ReadFile(m.SerialLog())
		t.Fatalf("health via TAP: %v\nserial:\n%s", err, serial)
	}
	t.Logf("TAP in netns: start to /health %v", time.Since(start))
	// QEMU really runs in the namespace, the agent's threads do not.
	var want syscall.Stat_t
	if err := syscall.Stat(nsPath, &want); err != nil {
		t.Fatal(err)
	}
	var got syscall.Stat_t
	if err := syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", m.PID()), &got); err != nil {
		t.Fatal(err)
	}
	if got.Ino != want.Ino {
		t.Fatalf("qemu in netns inode %d, want %d", got.Ino, want.Ino)
	}
	if err := filepath.Walk("/proc/self/task", func(p string, fi os.FileInfo, err error) error {
		if err != nil || filepath.Dir(p) != "/proc/self/task" {
			return nil
		}
		var st syscall.Stat_t
		if syscall.Stat(p+"/ns/net", &st) == nil && st.Ino == want.Ino {
			return fmt.Errorf("agent thread %s left in the sandbox netns", filepath.Base(p))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	// Pause the sandbox the way the manager does (snapshot, tear down) and
	// bring it back in the same namespace.
	ctx := context.Background()
	snap, err := m.Snapshot(ctx, filepath.Join(t.TempDir(), "snap"))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	rcfg := s.cfg
	rcfg.RunDir = filepath.Join(t.TempDir(), "run2")
	rcfg.DiskPath = filepath.Join(t.TempDir(), "disk2.qcow2")
	overlay(t, snap.DiskPath, snap.DiskFormat, rcfg.DiskPath)
	start = time.Now()
	rm, err := newDriver(t).Restore(ctx, rcfg, snap)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rm.Stop(context.Background()) })
	if err := healthInNetns(nsPath, netip.AddrPortFrom(guest, envdPort), 30*time.Second); err != nil {
		t.Fatalf("health via TAP after restore: %v", err)
	}
	t.Logf("TAP in netns: restore to /health %v", time.Since(start))
	if err := rm.Stop(ctx); err != nil {
		t.Fatal(err)
	}
}
