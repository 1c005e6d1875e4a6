package sandbox

import (
	"context"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/wrenn-dev/wrenn/internal/agent/agenterr"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// sample takes one metrics reading of a running sandbox: CPU % as the
// guest sees it and memory and disk from envd inside, and the host's CPU %
// from the VMM process's CPU time (/proc of the QEMU or Firecracker
// process, so it works under TCG too).
func (m *Manager) sample(ctx context.Context, s *Sandbox) (*pb.SandboxMetrics, error) {
	s.mu.Lock()
	mref, c := s.machine, s.client
	s.mu.Unlock()
	if mref == nil || c == nil {
		return nil, errorf(agenterr.ErrInvalidState, "sandbox %q is not running", s.rec.ID)
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	now := m.cfg.Now()
	out := &pb.SandboxMetrics{SampledAt: timestamppb.New(now)}
	vm, err := mref.m.Metrics(ctx)
	if err != nil {
		return nil, wrapErr(agenterr.ErrUnavailable, err, "vmm metrics")
	}
	gm, err := c.Metrics(ctx)
	if err != nil {
		return nil, envdErr(err, "guest metrics")
	}
	out.CpuPercent = gm.CPUUsedPct
	out.MemoryUsedBytes, out.MemoryTotalBytes = gm.MemUsed, gm.MemTotal
	out.DiskUsedBytes, out.DiskTotalBytes = gm.DiskUsed, gm.DiskTotal
	s.mu.Lock()
	defer s.mu.Unlock()
	if prev := s.lastSample; prev != nil && now.After(prev.at) && vm.CPUTime >= prev.cpu {
		out.HostCpuPercent = 100 * float64(vm.CPUTime-prev.cpu) / float64(now.Sub(prev.at))
	}
	s.lastSample = &cpuSample{at: now, cpu: vm.CPUTime}
	s.metrics = append(s.metrics, out)
	if n := len(s.metrics) - m.cfg.MetricsHistory; n > 0 {
		s.metrics = append(s.metrics[:0:0], s.metrics[n:]...)
	}
	return out, nil
}

// sampleAll samples every running sandbox, MetricsConcurrency at a time:
// each sample waits on its guest (up to 3 s), so one slow guest must not
// hold up the others, and a host with hundreds of sandboxes must not start
// hundreds of calls at once.
func (m *Manager) sampleAll(ctx context.Context) {
	sem := make(chan struct{}, m.cfg.MetricsConcurrency)
	var wg sync.WaitGroup
	for _, s := range m.all() {
		s.mu.Lock()
		run := s.rec.State == pb.SandboxState_SANDBOX_STATE_RUNNING
		s.mu.Unlock()
		if !run {
			continue
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if _, err := m.sample(ctx, s); err != nil {
				m.log.Debug("metrics sample failed", "sandbox", s.rec.ID, "err", err)
			}
		})
	}
	wg.Wait()
}

// runSampler samples on every MetricsInterval until ctx ends; a pass that
// overruns the interval delays the next instead of piling up.
func (m *Manager) runSampler(ctx context.Context) {
	t := time.NewTicker(m.cfg.MetricsInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			m.sampleAll(ctx)
		}
	}
}

// listedSamples is how many of a sandbox's latest samples List reports:
// the control plane lists every few seconds, so a few cover a missed list.
const listedSamples = 3

// recentMetrics is the latest samples of each running sandbox, for List.
func (m *Manager) recentMetrics(all []*Sandbox) []*pb.SandboxMetricsSeries {
	var out []*pb.SandboxMetricsSeries
	for _, s := range all {
		s.mu.Lock()
		if n := len(s.metrics); n > 0 && s.rec.State == pb.SandboxState_SANDBOX_STATE_RUNNING {
			out = append(out, &pb.SandboxMetricsSeries{SandboxId: s.rec.ID, Samples: append([]*pb.SandboxMetrics(nil), s.metrics[max(0, n-listedSamples):]...)})
		}
		s.mu.Unlock()
	}
	return out
}

// Metrics returns the latest sample (taken now if none is recent) and the
// recent history, oldest first.
func (m *Manager) Metrics(ctx context.Context, id string) (*pb.GetSandboxMetricsResponse, error) {
	s, err := m.get(id)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	state := s.rec.State
	if state != pb.SandboxState_SANDBOX_STATE_RUNNING {
		s.mu.Unlock()
		return nil, errorf(agenterr.ErrInvalidState, "sandbox %q is %s: no metrics", id, stateName(state))
	}
	var cur *pb.SandboxMetrics
	if n := len(s.metrics); n > 0 && m.cfg.Now().Sub(s.metrics[n-1].SampledAt.AsTime()) < 2*m.cfg.MetricsInterval {
		cur = s.metrics[n-1]
	}
	s.mu.Unlock()
	if cur == nil {
		if cur, err = m.sample(ctx, s); err != nil {
			return nil, err
		}
	}
	s.mu.Lock()
	hist := append([]*pb.SandboxMetrics(nil), s.metrics...)
	s.mu.Unlock()
	return &pb.GetSandboxMetricsResponse{Current: cur, History: hist}, nil
}
