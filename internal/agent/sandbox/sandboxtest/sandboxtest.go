// Package sandboxtest holds test doubles that are real processes, not
// mocks, for tests of the sandbox manager and the agent server.
package sandboxtest

// Test doubles that are real processes, not mocks: HostDriver "boots" a
// sandbox by running the real envd binary as a host process (host mode,
// paths confined to a directory), LoopNet hands out loopback ports instead
// of network namespaces, FileDisks makes plain files. They let the manager's
// logic (state machine, cleanup, envd protocol, persistence, adoption) be
// tested against a real envd without QEMU. The real-VM tests are in
// vm_test.go.

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/wrenn-dev/wrenn/internal/agent/sandbox"
	"github.com/wrenn-dev/wrenn/internal/agent/vmm"
)

// HostDriver is a vmm.Driver whose "VM" is envd (Bin) run as a host
// process on the loopback address its NetSlot names (wrenn.testaddr= in
// the kernel arguments). It cannot snapshot unless Snapshots is set.
type HostDriver struct {
	Bin string
	// FailStart makes Start launch envd with an address it cannot bind.
	FailStart bool
	// Snapshots makes snapshots work like a cold boot: Snapshot writes a
	// state file, Restore starts envd again over the same guest root, so
	// files survive a pause and processes do not. Tests of the contract
	// above the driver (pause, resume, snapshot templates) need them.
	Snapshots bool
}

// snapshotState is the content of the state file a Snapshot writes.
const snapshotState = "host-envd snapshot\n"

// Name implements vmm.Driver.
func (d *HostDriver) Name() string { return "host-envd" }

func argValue(cmdline, key string) string {
	for _, f := range strings.Fields(cmdline) {
		if v, ok := strings.CutPrefix(f, key+"="); ok {
			return v
		}
	}
	return ""
}

// Start implements vmm.Driver.
func (d *HostDriver) Start(ctx context.Context, cfg vmm.Config) (vmm.Machine, error) {
	addr := argValue(cfg.KernelArgs, "wrenn.testaddr")
	if addr == "" {
		return nil, fmt.Errorf("host driver: no wrenn.testaddr in %q", cfg.KernelArgs)
	}
	if d.FailStart {
		addr = "256.0.0.1:1"
	}
	if _, err := os.Stat(cfg.DiskPath); err != nil {
		return nil, fmt.Errorf("host driver: disk: %w", err)
	}
	root := filepath.Join(filepath.Dir(cfg.RunDir), "guestroot")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(cfg.RunDir, "envd.log"))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(d.Bin, "-addr", addr, "-root", root)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("host driver: start envd: %w", err)
	}
	if err := os.WriteFile(filepath.Join(cfg.RunDir, "pid"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		return nil, err
	}
	m := &hostMachine{pid: cmd.Process.Pid, done: make(chan struct{}), snapshots: d.Snapshots}
	go func() { cmd.Wait(); close(m.done) }()
	return m, nil
}

// Restore implements vmm.Driver: with Snapshots, a fresh envd over the
// sandbox's guest root; unsupported otherwise.
func (d *HostDriver) Restore(ctx context.Context, cfg vmm.Config, snap vmm.Snapshot) (vmm.Machine, error) {
	if !d.Snapshots {
		return nil, vmm.ErrUnsupported
	}
	if b, err := os.ReadFile(snap.StatePath); err != nil || string(b) != snapshotState {
		return nil, fmt.Errorf("host driver: state file %s: %w", snap.StatePath, vmm.ErrSnapshotInvalid)
	}
	return d.Start(ctx, cfg)
}

// Adopt implements vmm.Driver from the pid file Start wrote.
func (d *HostDriver) Adopt(ctx context.Context, cfg vmm.Config) (vmm.Machine, error) {
	b, err := os.ReadFile(filepath.Join(cfg.RunDir, "pid"))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", vmm.ErrNotRunning, err)
	}
	pid, err := strconv.Atoi(string(b))
	if err != nil || !IsEnvd(pid, d.Bin) {
		return nil, vmm.ErrNotRunning
	}
	m := &hostMachine{pid: pid, done: make(chan struct{}), snapshots: d.Snapshots}
	go func() {
		for IsEnvd(pid, d.Bin) {
			time.Sleep(50 * time.Millisecond)
		}
		close(m.done)
	}()
	return m, nil
}

// IsEnvd reports whether pid is a live process running bin.
func IsEnvd(pid int, bin string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil || strings.Contains(string(b), ") Z ") {
		return false
	}
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	return err == nil && exe == bin
}

type hostMachine struct {
	pid       int
	done      chan struct{}
	snapshots bool
}

func (m *hostMachine) PID() int                     { return m.pid }
func (m *hostMachine) Done() <-chan struct{}        { return m.done }
func (m *hostMachine) Pause(context.Context) error  { return syscall.Kill(m.pid, syscall.SIGSTOP) }
func (m *hostMachine) Resume(context.Context) error { return syscall.Kill(m.pid, syscall.SIGCONT) }
func (m *hostMachine) Snapshot(_ context.Context, dir string) (vmm.Snapshot, error) {
	if !m.snapshots {
		return vmm.Snapshot{}, fmt.Errorf("host process: %w", vmm.ErrUnsupported)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return vmm.Snapshot{}, fmt.Errorf("host process: snapshot dir: %w", err)
	}
	state := filepath.Join(dir, "state")
	if err := os.WriteFile(state, []byte(snapshotState), 0o600); err != nil {
		return vmm.Snapshot{}, fmt.Errorf("host process: write state: %w", err)
	}
	return vmm.Snapshot{Dir: dir, StatePath: state}, nil
}

func (m *hostMachine) Stop(ctx context.Context) error {
	select {
	case <-m.done:
		return nil
	default:
	}
	// SIGTERM first: envd stops the processes it started.
	syscall.Kill(m.pid, syscall.SIGCONT)
	syscall.Kill(m.pid, syscall.SIGTERM)
	select {
	case <-m.done:
		return nil
	case <-time.After(5 * time.Second):
	}
	syscall.Kill(-m.pid, syscall.SIGKILL)
	select {
	case <-m.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (m *hostMachine) Metrics(ctx context.Context) (vmm.Metrics, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", m.pid))
	if err != nil {
		return vmm.Metrics{}, vmm.ErrNotRunning
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseUint(f[11], 10, 64)
	st, _ := strconv.ParseUint(f[12], 10, 64)
	rss, _ := strconv.ParseUint(f[21], 10, 64)
	return vmm.Metrics{CPUTime: time.Duration(ut+st) * 10 * time.Millisecond, RSSBytes: rss * uint64(os.Getpagesize())}, nil
}

// LoopNet gives each sandbox a loopback port.
type LoopNet struct {
	mu       sync.Mutex
	live     map[string]string // slot name -> sandbox
	AdoptErr error
	// releaseErr, while set, fails every Release (the slot stays held).
	releaseErr error
}

// FailRelease makes every Release fail with err until called with nil.
func (n *LoopNet) FailRelease(err error) {
	n.mu.Lock()
	n.releaseErr = err
	n.mu.Unlock()
}

// NewLoopNet returns an empty allocator.
func NewLoopNet() *LoopNet { return &LoopNet{live: map[string]string{}} }

// Allocate implements sandbox.NetworkAllocator.
func (n *LoopNet) Allocate(ctx context.Context, id string, internet bool) (sandbox.NetSlot, error) {
	port, err := freePort()
	if err != nil {
		return sandbox.NetSlot{}, err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	s := sandbox.NetSlot{Name: "lo-" + strconv.Itoa(port), EnvdAddr: addr, KernelIPArg: "wrenn.testaddr=" + addr, TapDevice: "none", GuestMAC: "02:00:00:00:00:01"}
	n.mu.Lock()
	n.live[s.Name] = id
	n.mu.Unlock()
	return s, nil
}

// Release implements sandbox.NetworkAllocator.
func (n *LoopNet) Release(ctx context.Context, s sandbox.NetSlot) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.releaseErr != nil {
		return fmt.Errorf("release %s: %w", s.Name, n.releaseErr)
	}
	if _, ok := n.live[s.Name]; !ok {
		return fmt.Errorf("release %s: not allocated", s.Name)
	}
	delete(n.live, s.Name)
	return nil
}

// Adopt implements sandbox.NetworkAllocator.
func (n *LoopNet) Adopt(ctx context.Context, s sandbox.NetSlot) error {
	if n.AdoptErr != nil {
		return n.AdoptErr
	}
	n.mu.Lock()
	n.live[s.Name] = "adopted"
	n.mu.Unlock()
	return nil
}

// Count is the number of slots held.
func (n *LoopNet) Count() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.live)
}

// FileDisks makes disks as plain sparse files.
type FileDisks struct{}

// CreateOverlay implements sandbox.DiskMaker with a sparse file.
func (FileDisks) CreateOverlay(ctx context.Context, base, baseFormat, dst string, sizeMB int) (string, error) {
	st, err := os.Stat(base)
	if err != nil {
		return "", err
	}
	size := st.Size()
	if sizeMB > 0 {
		size = int64(sizeMB) << 20
	}
	f, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return "", err
	}
	defer f.Close()
	return "raw", f.Truncate(size)
}

// Clone implements sandbox.DiskMaker with a copy.
func (FileDisks) Clone(ctx context.Context, src, srcFormat, dst string) (string, error) {
	return srcFormat, copyFile(src, dst)
}

// Flatten implements sandbox.DiskMaker with a copy.
func (FileDisks) Flatten(ctx context.Context, src, srcFormat, dst string) (int64, error) {
	if err := copyFile(src, dst); err != nil {
		return 0, err
	}
	st, err := os.Stat(dst)
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// FakeImages lays out a WRENN_DIR with a kernel and a minimal rootfs that
// the host driver never reads.
func FakeImages(dir string) error {
	for _, p := range []string{"kernels/vmlinux-x", "templates/minimal/rootfs-x.ext4"} {
		if err := os.MkdirAll(filepath.Join(dir, filepath.Dir(p)), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, p), make([]byte, 4096), 0o644); err != nil {
			return err
		}
	}
	if err := os.Symlink("vmlinux-x", filepath.Join(dir, "kernels/vmlinux")); err != nil {
		return err
	}
	return os.Symlink("rootfs-x.ext4", filepath.Join(dir, "templates/minimal/rootfs.ext4"))
}
