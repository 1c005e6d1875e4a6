package qemu

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/agent/vmm"
)

// Run with a small count, e.g. -bench . -benchtime=5x: each iteration boots
// a real VM.

// BenchmarkColdBoot: QEMU start until envd answers /health.
func BenchmarkColdBoot(b *testing.B) {
	coldBoot(b, "sb-bench", nil)
}

// coldBoot boots b.N VMs (with the kernel parameters override when not
// nil) and reports the median and slowest boot.
func coldBoot(b *testing.B, prefix string, override *KernelParams) {
	e := testEnv(b)
	d := newDriver(b)
	var times []time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		s := newVMSetup(b, e, fmt.Sprintf("%s%d", prefix, i))
		if override != nil {
			args, err := KernelCmdline(*override)
			if err != nil {
				b.Fatal(err)
			}
			s.cfg.KernelArgs = args
		}
		b.StartTimer()
		start := time.Now()
		m, err := d.StartWithOptions(context.Background(), s.cfg, s.mo)
		if err != nil {
			b.Fatal(err)
		}
		mustHealth(b, m, s.url, 60*time.Second)
		times = append(times, time.Since(start))
		b.StopTimer()
		if err := m.Stop(context.Background()); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	slices.Sort(times)
	b.ReportMetric(float64(times[len(times)/2].Milliseconds()), "p50-ms")
	b.ReportMetric(float64(times[len(times)-1].Milliseconds()), "max-ms")
}

// BenchmarkSnapshot: pause + device state + sparse copies of RAM and disk.
func BenchmarkSnapshot(b *testing.B) {
	e := testEnv(b)
	d := newDriver(b)
	s := newVMSetup(b, e, "sb-bench-snap")
	m := startVM(b, d, s)
	mustHealth(b, m, s.url, 60*time.Second)
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := m.Snapshot(ctx, filepath.Join(b.TempDir(), "snap")); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := m.Resume(ctx); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

// BenchmarkRestore: new QEMU from a snapshot until envd answers /health.
func BenchmarkRestore(b *testing.B) {
	e := testEnv(b)
	d := newDriver(b)
	ctx := context.Background()
	s := newVMSetup(b, e, "sb-bench-src")
	m := startVM(b, d, s)
	mustHealth(b, m, s.url, 60*time.Second)
	snap, err := m.Snapshot(ctx, filepath.Join(b.TempDir(), "snap"))
	if err != nil {
		b.Fatal(err)
	}
	if err := m.Stop(ctx); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		c := newVMSetup(b, e, fmt.Sprintf("sb-bench-clone%d", i))
		c.cfg.DiskPath = filepath.Join(filepath.Dir(c.cfg.DiskPath), "clone.qcow2")
		overlay(b, snap.DiskPath, snap.DiskFormat, c.cfg.DiskPath)
		b.StartTimer()
		rm, err := d.RestoreWithOptions(ctx, c.cfg, snap, c.mo)
		if err != nil {
			b.Fatal(err)
		}
		mustHealth(b, rm, c.url, 30*time.Second)
		b.StopTimer()
		if err := rm.Stop(ctx); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

// BenchmarkColdBootNoLapicPreset is BenchmarkColdBoot without the TCG-only
// lapic_timer_period preset, to show what the kernel patch saves.
func BenchmarkColdBootNoLapicPreset(b *testing.B) {
	if testEnv(b).accel != vmm.AccelTCG {
		b.Skip("the preset only matters under TCG")
	}
	// KVM parameters: the same command line minus lapic_timer_period.
	coldBoot(b, "sb-bench-nolapic", &KernelParams{GuestIP: UserNetGuestIP, Gateway: UserNetGateway, PrefixLen: 24, Accel: vmm.AccelKVM})
}
