package firecracker

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wrenn-dev/wrenn/internal/agent/vmm"
)

// Real-binary test: runs the driver against an actual firecracker on KVM.
// It needs, all at once:
//   - WRENN_FIRECRACKER_TESTS=1 (KVM can open yet never run a guest, as on
//     the machines this project is developed on, so opening /dev/kvm alone
//     proves nothing; the variable is the operator's word that guests run);
//   - a firecracker binary (WRENN_FIRECRACKER_BIN or PATH);
//   - /dev/kvm answering KVM_GET_API_VERSION;
//   - WRENN_FC_KERNEL (uncompressed vmlinux) and WRENN_FC_ROOTFS (raw ext4).
//
// It skips otherwise, even with CI=true: the CI machines cannot have
// Firecracker. The skip message names the missing piece.

const kvmGetAPIVersion = 0xAE00 // _IO(KVMIO, 0x00)

func realFirecrackerPrereqs() (bin, kernel, rootfs string, why string) {
	if os.Getenv("WRENN_FIRECRACKER_TESTS") != "1" {
		return "", "", "", "WRENN_FIRECRACKER_TESTS is not 1 (set it on a host where KVM guests really run)"
	}
	bin = os.Getenv("WRENN_FIRECRACKER_BIN")
	if bin == "" {
		p, err := exec.LookPath("firecracker")
		if err != nil {
			return "", "", "", "no firecracker binary in PATH and WRENN_FIRECRACKER_BIN unset"
		}
		bin = p
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", "", "", fmt.Sprintf("cannot open /dev/kvm: %v", err)
	}
	// A single ioctl, answered by the kernel at once: bounded by nature.
	v, err := unix.IoctlRetInt(int(f.Fd()), kvmGetAPIVersion)
	f.Close()
	if err != nil || v != 12 {
		return "", "", "", fmt.Sprintf("KVM_GET_API_VERSION failed (version %d, err %v)", v, err)
	}
	kernel, rootfs = os.Getenv("WRENN_FC_KERNEL"), os.Getenv("WRENN_FC_ROOTFS")
	if kernel == "" || rootfs == "" {
		return "", "", "", "WRENN_FC_KERNEL and WRENN_FC_ROOTFS must name a vmlinux and a raw ext4 root filesystem"
	}
	for _, p := range []string{kernel, rootfs} {
		if _, err := os.Stat(p); err != nil {
			return "", "", "", fmt.Sprintf("%v", err)
		}
	}
	return bin, kernel, rootfs, ""
}

func TestRealFirecracker(t *testing.T) {
	bin, kernel, rootfs, why := realFirecrackerPrereqs()
	if why != "" {
		t.Skipf("REAL FIRECRACKER TEST NOT RUN: %s", why)
	}
	dir := t.TempDir()
	disk := filepath.Join(dir, "rootfs.raw")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := copyDisk(ctx, rootfs, disk); err != nil {
		t.Fatal(err)
	}
	drv, err := New(Options{Binary: bin, StopGrace: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	cfg := vmm.Config{
		ID:         "realfc",
		KernelPath: kernel,
		KernelArgs: "console=ttyS0 reboot=k panic=1 pci=off", // Firecracker appends root=/dev/vda rw
		DiskPath:   disk,
		DiskFormat: "raw",
		VCPUs:      1,
		MemoryMB:   256,
		RunDir:     filepath.Join(dir, "run"),
		Accel:      vmm.AccelKVM,
	}
	m, err := drv.Start(ctx, cfg)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	defer m.Stop(context.Background())
	t.Logf("firecracker %s booting, pid %d", m.(*machine).version, m.PID())

	// The guest must reach userspace: wait for the kernel to hand over.
	logPath := filepath.Join(cfg.RunDir, logName)
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, _ := os.ReadFile(logPath)
		if strings.Contains(string(b), "Run /") || strings.Contains(string(b), "Freeing unused kernel") {
			break
		}
		select {
		case <-m.Done():
			t.Fatalf("firecracker exited during boot; log:\n%s", b)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("guest did not reach userspace in 30 s; log:\n%s", b)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if st := instanceState(t, m); st != "Running" {
		t.Fatalf("state %q", st)
	}
	met, err := m.Metrics(ctx)
	if err != nil || met.RSSBytes == 0 {
		t.Fatalf("Metrics: %+v %v", met, err)
	}
	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	snap, err := m.Snapshot(ctx, filepath.Join(dir, "snap"))
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	t.Logf("snapshot of %d MiB took %v", cfg.MemoryMB, time.Since(t0))
	if err := m.Stop(ctx); err != nil {
		t.Fatal(err)
	}

	rcfg := cfg
	rcfg.RunDir = filepath.Join(dir, "run2")
	rcfg.DiskPath = filepath.Join(dir, "restored.raw")
	if err := copyDisk(ctx, snap.DiskPath, rcfg.DiskPath); err != nil {
		t.Fatal(err)
	}
	t0 = time.Now()
	r, err := drv.Restore(ctx, rcfg, snap)
	if err != nil {
		t.Fatalf("Restore: %v", err)
	}
	defer r.Stop(context.Background())
	t.Logf("restore (process start to resumed) took %v", time.Since(t0))
	if st := instanceState(t, r); st != "Running" {
		t.Fatalf("restored state %q", st)
	}
	pid := r.PID()
	if err := r.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	assertGone(t, pid)
}
