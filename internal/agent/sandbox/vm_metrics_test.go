package sandbox_test

import (
	"context"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/agent/sandbox"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// latestListed is the newest sample List reports for id, or nil.
func latestListed(m *sandbox.Manager, id string) *pb.SandboxMetrics {
	for _, s := range m.List(context.Background()).GetMetrics() {
		if s.GetSandboxId() == id && len(s.GetSamples()) > 0 {
			return s.GetSamples()[len(s.GetSamples())-1]
		}
	}
	return nil
}

// A real TCG VM running a CPU-bound loop: the background sampler (beside
// the reaper, started by Run) reports its CPU near 100 % of one core in the
// list the control plane polls, with memory and disk from the guest; idle,
// far less.
func TestVMMetricsCPUBoundLoop(t *testing.T) {
	e := newVMEnv(t, func(c *sandbox.Config) { c.MetricsInterval = time.Second })
	m := e.parts.Manager
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	runCtx, stopRun := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); m.Run(runCtx) }()
	defer func() { stopRun(); <-done }()

	if _, err := m.Create(ctx, &pb.CreateSandboxRequest{SandboxId: "cpu", Vcpus: 1}); err != nil {
		t.Fatal(err)
	}
	// Idle: let boot settle, then read the sampler's latest.
	time.Sleep(4 * time.Second)
	idle := latestListed(m, "cpu")
	if idle == nil {
		t.Fatal("no sample listed for a running sandbox")
	}
	if idle.GetMemoryUsedBytes() == 0 || idle.GetMemoryTotalBytes() == 0 || idle.GetDiskUsedBytes() == 0 || idle.GetDiskTotalBytes() == 0 {
		t.Fatalf("idle sample without memory or disk: %v", idle)
	}

	loop := make(chan error, 1)
	go func() {
		_, err := m.Exec(ctx, &pb.ExecRequest{SandboxId: "cpu", Cmd: "/bin/sh", Args: []string{"-c", "while :; do :; done & sleep 12; kill $!"}})
		loop <- err
	}()
	time.Sleep(8 * time.Second)
	busy := latestListed(m, "cpu")
	if err := <-loop; err != nil {
		t.Fatalf("cpu loop: %v", err)
	}
	t.Logf("guest cpu idle %.1f %%, busy %.1f %%; host cpu idle %.1f %%, busy %.1f %%",
		idle.GetCpuPercent(), busy.GetCpuPercent(), idle.GetHostCpuPercent(), busy.GetHostCpuPercent())
	// The guest sees its one vCPU busy whatever share of the (shared,
	// loaded) host it gets; the host's view must rise with it.
	if busy.GetCpuPercent() < 90 || busy.GetCpuPercent() > 100 || idle.GetCpuPercent() > 50 {
		t.Fatalf("guest cpu during a busy loop = %.1f %% (idle %.1f %%), want near 100 %%", busy.GetCpuPercent(), idle.GetCpuPercent())
	}
	if busy.GetHostCpuPercent() <= idle.GetHostCpuPercent() || busy.GetHostCpuPercent() <= 0 {
		t.Fatalf("host cpu of the VMM process: busy %.1f %%, idle %.1f %%; want it to rise", busy.GetHostCpuPercent(), idle.GetHostCpuPercent())
	}
	if !busy.GetSampledAt().AsTime().After(idle.GetSampledAt().AsTime()) {
		t.Fatal("the sampler stopped sampling")
	}
}
