package sandbox

import (
	"context"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/wrenn-dev/wrenn/internal/agent/agenterr"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// sample takes one metrics reading of a running sandbox: CPU % from the
// VMM process's CPU time (percent of one host core, so up to 100*vCPUs),
// memory and disk from envd inside.
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
	out.MemoryUsedBytes, out.MemoryTotalBytes = gm.MemUsed, gm.MemTotal
	out.DiskUsedBytes, out.DiskTotalBytes = gm.DiskUsed, gm.DiskTotal
	s.mu.Lock()
	defer s.mu.Unlock()
	if prev := s.lastSample; prev != nil && now.After(prev.at) && vm.CPUTime >= prev.cpu {
		out.CpuPercent = 100 * float64(vm.CPUTime-prev.cpu) / float64(now.Sub(prev.at))
	} else {
		// First reading: fall back to the guest's own view.
		out.CpuPercent = gm.CPUUsedPct
	}
	s.lastSample = &cpuSample{at: now, cpu: vm.CPUTime}
	s.metrics = append(s.metrics, out)
	if n := len(s.metrics) - m.cfg.MetricsHistory; n > 0 {
		s.metrics = append(s.metrics[:0:0], s.metrics[n:]...)
	}
	return out, nil
}

func (m *Manager) sampleAll(ctx context.Context) {
	for _, s := range m.all() {
		s.mu.Lock()
		run := s.rec.State == pb.SandboxState_SANDBOX_STATE_RUNNING
		s.mu.Unlock()
		if !run {
			continue
		}
		if _, err := m.sample(ctx, s); err != nil {
			m.log.Debug("metrics sample failed", "sandbox", s.rec.ID, "err", err)
		}
	}
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
