// Package accel decides whether microVMs run under KVM or QEMU's TCG.
//
// /dev/kvm opening is not enough: on some hosts it opens, tiny real-mode
// guests even run, yet a Linux guest hangs part way through boot. So KVM is
// chosen only when a real kernel boots under KVM (to its "no root fs" panic)
// in a child QEMU process killed at a deadline: detection never hangs.
package accel

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/wrenn-dev/wrenn/internal/agent/vmm"
	"github.com/wrenn-dev/wrenn/internal/childproc"
)

// Mode is the WRENN_ACCEL setting.
type Mode string

const (
	ModeAuto Mode = "auto"
	ModeKVM  Mode = "kvm"
	ModeTCG  Mode = "tcg"
)

// ParseMode parses WRENN_ACCEL ("" means auto).
func ParseMode(s string) (Mode, error) {
	switch m := Mode(strings.ToLower(strings.TrimSpace(s))); m {
	case "", ModeAuto:
		return ModeAuto, nil
	case ModeKVM, ModeTCG:
		return m, nil
	default:
		return "", fmt.Errorf("WRENN_ACCEL=%q: want auto, kvm or tcg", s)
	}
}

// ModeFromEnv parses $WRENN_ACCEL.
func ModeFromEnv() (Mode, error) { return ParseMode(os.Getenv("WRENN_ACCEL")) }

// Options configures a Detector.
type Options struct {
	// Mode forces kvm or tcg; auto probes.
	Mode Mode
	// QEMUPath is the qemu-system-x86_64 binary (default from $PATH).
	QEMUPath string
	// KernelPath is the microVM kernel booted by the probe. Without it only
	// a real-mode stub is run, which proves much less (see package doc), and
	// the result is not cached.
	KernelPath string
	// KVMDevice is the KVM device node (default /dev/kvm).
	KVMDevice string
	// Timeout bounds the probe (default 2s); the child is killed after it.
	Timeout time.Duration
	Logger  *slog.Logger
}

// Result is what Detect found, with the reason for people.
type Result struct {
	Accel  vmm.Accel
	Reason string
}

// Detector probes once and remembers the answer for its lifetime; the agent
// keeps one per process.
type Detector struct {
	opts Options

	mu     sync.Mutex
	cached *Result
}

// NewDetector returns a Detector; an invalid mode is reported by Detect.
func NewDetector(opts Options) *Detector {
	if opts.Mode == "" {
		opts.Mode = ModeAuto
	}
	if opts.QEMUPath == "" {
		opts.QEMUPath = "qemu-system-x86_64"
	}
	if opts.KVMDevice == "" {
		opts.KVMDevice = "/dev/kvm"
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 2 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Detector{opts: opts}
}

// Detect returns the acceleration to use. Errors only for forced kvm on a
// host without /dev/kvm or an invalid mode; probe failures mean TCG.
func (d *Detector) Detect(ctx context.Context) (Result, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cached != nil {
		return *d.cached, nil
	}
	res, cache, err := d.detect(ctx)
	if err != nil {
		return Result{}, err
	}
	if cache {
		d.cached = &res
	}
	d.opts.Logger.Info("vmm acceleration", "accel", res.Accel, "reason", res.Reason)
	return res, nil
}

func (d *Detector) detect(ctx context.Context) (Result, bool, error) {
	switch d.opts.Mode {
	case ModeTCG:
		return Result{vmm.AccelTCG, "WRENN_ACCEL=tcg"}, true, nil
	case ModeKVM:
		if err := openKVM(d.opts.KVMDevice); err != nil {
			return Result{}, false, fmt.Errorf("WRENN_ACCEL=kvm: %w", err)
		}
		return Result{vmm.AccelKVM, "WRENN_ACCEL=kvm"}, true, nil
	case ModeAuto:
	default:
		return Result{}, false, fmt.Errorf("accel mode %q: want auto, kvm or tcg", d.opts.Mode)
	}
	if err := openKVM(d.opts.KVMDevice); err != nil {
		return Result{vmm.AccelTCG, err.Error()}, true, nil
	}
	if _, err := exec.LookPath(d.opts.QEMUPath); err != nil {
		return Result{}, false, fmt.Errorf("find QEMU (install Debian's qemu-system-x86): %w", err)
	}
	start := time.Now()
	kernel := d.opts.KernelPath
	if kernel != "" {
		if _, err := os.Stat(kernel); err != nil {
			kernel = ""
		}
	}
	var err error
	if kernel == "" {
		err = d.probeStub(ctx)
		if err != nil {
			return Result{vmm.AccelTCG, "KVM stub guest failed: " + err.Error()}, false, nil
		}
		// Not cached: only a kernel boot proves KVM works here.
		return Result{vmm.AccelKVM, "KVM ran a real-mode stub guest (no kernel to probe with yet)"}, false, nil
	}
	err = d.probeKernel(ctx, kernel)
	took := time.Since(start).Round(time.Millisecond)
	if err != nil {
		return Result{vmm.AccelTCG, fmt.Sprintf("KVM guest did not boot within %s: %v", took, err)}, true, nil
	}
	return Result{vmm.AccelKVM, fmt.Sprintf("KVM guest booted in %s", took)}, true, nil
}

func openKVM(dev string) error {
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dev, err)
	}
	return f.Close()
}

// probeKernel boots the kernel without a root disk: reaching the "unable to
// mount root" panic means real mode, long mode, paging, interrupts and
// timers all work. panic=-1 plus -no-reboot makes QEMU exit right then.
func (d *Detector) probeKernel(ctx context.Context, kernel string) error {
	dir, err := os.MkdirTemp("", "wrenn-kvm-probe-")
	if err != nil {
		return fmt.Errorf("create probe dir: %w", err)
	}
	defer os.RemoveAll(dir)
	serial := filepath.Join(dir, "serial.log")
	args := []string{
		"-M", "microvm,accel=kvm,acpi=off", "-cpu", "host", "-m", "64", "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-serial", "file:" + serial, "-kernel", kernel,
		"-append", "console=ttyS0 panic=-1 loglevel=4",
	}
	if err := d.runProbe(ctx, args); err != nil {
		return err
	}
	out, _ := os.ReadFile(serial)
	if !bytes.Contains(out, []byte("Kernel panic")) {
		return errors.New("guest exited without reaching the root mount")
	}
	return nil
}

// probeStub runs a 64 KiB firmware whose reset vector writes to an
// isa-debug-exit port: QEMU then exits with status (0x41<<1)|1.
func (d *Detector) probeStub(ctx context.Context) error {
	dir, err := os.MkdirTemp("", "wrenn-kvm-probe-")
	if err != nil {
		return fmt.Errorf("create probe dir: %w", err)
	}
	defer os.RemoveAll(dir)
	bios := filepath.Join(dir, "stub.bin")
	if err := os.WriteFile(bios, stubFirmware(), 0o644); err != nil {
		return fmt.Errorf("write probe firmware: %w", err)
	}
	args := []string{
		"-M", "microvm,accel=kvm", "-cpu", "host", "-m", "16", "-nodefaults", "-no-user-config",
		"-display", "none", "-bios", bios, "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
	}
	err = d.runProbe(ctx, args)
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 0x83 {
		return nil
	}
	if err == nil {
		return errors.New("stub guest exited without signalling")
	}
	return err
}

func stubFirmware() []byte {
	b := bytes.Repeat([]byte{0xf4}, 64<<10) // hlt everywhere
	// At the reset vector (F000:FFF0): mov al,0x41; out 0xf4,al; hlt; jmp $.
	copy(b[0xfff0:], []byte{0xb0, 0x41, 0xe6, 0xf4, 0xf4, 0xeb, 0xfe})
	return b
}

// runProbe runs QEMU in its own process group and kills the group at the
// deadline, so a wedged vCPU thread can never hold the caller.
func (d *Detector) runProbe(ctx context.Context, args []string) error {
	ctx, cancel := context.WithTimeout(ctx, d.opts.Timeout)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.Command(d.opts.QEMUPath, args...)
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	// childproc: a plain Start would tie the probe's life to whichever
	// thread forked it, and a thread ending early would make a KVM host look
	// like TCG.
	done, err := childproc.Start(cmd)
	if err != nil {
		return fmt.Errorf("start probe: %w", err)
	}
	select {
	case err := <-done:
		if err != nil {
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				return fmt.Errorf("%w: %s", err, lastLine(stderr.String()))
			}
		}
		return err
	case <-ctx.Done():
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		return fmt.Errorf("probe killed: %w", ctx.Err())
	}
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	if len(s) > 300 {
		s = s[:300]
	}
	return s
}
