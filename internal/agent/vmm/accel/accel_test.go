package accel

import (
	"context"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/agent/images"
	"github.com/wrenn-dev/wrenn/internal/agent/vmm"
	"github.com/wrenn-dev/wrenn/internal/testenv"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func prereq(t *testing.T, what string) {
	t.Helper()
	testenv.Require(t, false, "%s", what)
}

func TestParseMode(t *testing.T) {
	tests := []struct {
		in      string
		want    Mode
		wantErr bool
	}{
		{"", ModeAuto, false},
		{"auto", ModeAuto, false},
		{" KVM ", ModeKVM, false},
		{"tcg", ModeTCG, false},
		{"hvf", "", true},
	}
	for _, tc := range tests {
		got, err := ParseMode(tc.in)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("ParseMode(%q) = %q, %v", tc.in, got, err)
		}
	}
}

func TestModeFromEnv(t *testing.T) {
	t.Setenv("WRENN_ACCEL", "tcg")
	if m, err := ModeFromEnv(); err != nil || m != ModeTCG {
		t.Fatalf("ModeFromEnv = %q, %v", m, err)
	}
	t.Setenv("WRENN_ACCEL", "bogus")
	if _, err := ModeFromEnv(); err == nil {
		t.Fatal("bogus WRENN_ACCEL accepted")
	}
}

func TestForcedModes(t *testing.T) {
	tests := []struct {
		name    string
		opts    Options
		want    vmm.Accel
		wantErr bool
	}{
		{"tcg", Options{Mode: ModeTCG}, vmm.AccelTCG, false},
		{"kvm without device", Options{Mode: ModeKVM, KVMDevice: "/nonexistent/kvm"}, "", true},
		{"invalid mode", Options{Mode: "hvf"}, "", true},
		{"auto without device", Options{Mode: ModeAuto, KVMDevice: "/nonexistent/kvm"}, vmm.AccelTCG, false},
		{"auto without qemu", Options{Mode: ModeAuto, KVMDevice: "/dev/null", QEMUPath: "/nonexistent/qemu"}, "", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.opts.Logger = quiet()
			res, err := NewDetector(tc.opts).Detect(context.Background())
			if (err != nil) != tc.wantErr || res.Accel != tc.want {
				t.Fatalf("Detect = %+v, %v; want %q (err %v)", res, err, tc.want, tc.wantErr)
			}
		})
	}
	if _, err := os.Stat("/dev/kvm"); err == nil {
		res, err := NewDetector(Options{Mode: ModeKVM, Logger: quiet()}).Detect(context.Background())
		if err != nil || res.Accel != vmm.AccelKVM {
			t.Fatalf("forced kvm = %+v, %v", res, err)
		}
	}
}

// TestProbeNeverHangs: a "QEMU" that hangs forever is killed at the
// deadline and the answer is TCG.
func TestProbeNeverHangs(t *testing.T) {
	dir := t.TempDir()
	fake := filepath.Join(dir, "qemu-system-x86_64")
	// Ignores SIGTERM, spawns a child in its group: only a group SIGKILL ends it.
	script := "#!/bin/sh\ntrap '' TERM\nsleep 6017 &\nwait\n"
	if err := os.WriteFile(fake, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	kernel := filepath.Join(dir, "vmlinux")
	if err := os.WriteFile(kernel, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{kernel, ""} {
		d := NewDetector(Options{QEMUPath: fake, KernelPath: k, KVMDevice: "/dev/null", Timeout: 300 * time.Millisecond, Logger: quiet()})
		start := time.Now()
		res, err := d.Detect(context.Background())
		took := time.Since(start)
		if err != nil || res.Accel != vmm.AccelTCG {
			t.Fatalf("kernel %q: Detect = %+v, %v", k, res, err)
		}
		if took > 2*time.Second {
			t.Fatalf("kernel %q: probe took %v", k, took)
		}
		if !strings.Contains(res.Reason, "killed") {
			t.Fatalf("kernel %q: reason %q", k, res.Reason)
		}
	}
	// Both the "QEMU" and its child died with the process group.
	for _, marker := range []string{fake, "sleep\x006017"} {
		if pids := processesWith(t, marker); len(pids) > 0 {
			t.Fatalf("probe left processes %v matching %q", pids, marker)
		}
	}
}

// TestDetectRealHost runs the real probe with the installed kernel. On this
// kind of machine (/dev/kvm present, KVM guests hang) it must say TCG in
// well under 3 s; where KVM works it must say KVM.
func TestDetectRealHost(t *testing.T) {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		prereq(t, "qemu-system-x86_64")
	}
	p := images.NewPaths(images.DirFromEnv())
	k, err := p.ResolvedKernel()
	if err != nil {
		prereq(t, err.Error())
	}
	d := NewDetector(Options{KernelPath: k, Logger: quiet()})
	start := time.Now()
	res, err := d.Detect(context.Background())
	took := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("detected %s in %v: %s", res.Accel, took, res.Reason)
	if took > 3*time.Second {
		t.Fatalf("detection took %v", took)
	}
	if want := os.Getenv("WRENN_TEST_EXPECT_ACCEL"); want != "" && string(res.Accel) != want {
		t.Fatalf("detected %s, WRENN_TEST_EXPECT_ACCEL=%s", res.Accel, want)
	}
	// Cached: the second call does not probe again.
	start = time.Now()
	res2, err := d.Detect(context.Background())
	if err != nil || res2 != res || time.Since(start) > 50*time.Millisecond {
		t.Fatalf("second Detect = %+v, %v after %v", res2, err, time.Since(start))
	}
}

func TestStubFirmware(t *testing.T) {
	fw := stubFirmware()
	if len(fw) != 64<<10 {
		t.Fatalf("firmware size %d", len(fw))
	}
	if fw[0xfff0] != 0xb0 || fw[0xfff2] != 0xe6 {
		t.Fatal("reset vector code missing")
	}
	// The stub really exits through isa-debug-exit under TCG.
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		prereq(t, "qemu-system-x86_64")
	}
	bios := filepath.Join(t.TempDir(), "stub.bin")
	if err := os.WriteFile(bios, fw, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("qemu-system-x86_64", "-M", "microvm,accel=tcg", "-m", "16", "-nodefaults", "-no-user-config",
		"-display", "none", "-bios", bios, "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04")
	err := cmd.Run()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != 0x83 {
		t.Fatalf("stub under TCG: %v", err)
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
