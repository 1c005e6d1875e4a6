package server_test

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/agent/sandbox"
	"github.com/wrenn-dev/wrenn/internal/agent/sandbox/sandboxtest"
	"github.com/wrenn-dev/wrenn/internal/agent/server"
	"github.com/wrenn-dev/wrenn/internal/envd/envdtest"
	"github.com/wrenn-dev/wrenn/internal/telemetry"
	"github.com/wrenn-dev/wrenn/internal/telemetry/telemetrytest"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
	"github.com/wrenn-dev/wrenn/proto/hostagent/v1/hostagentv1connect"
)

// The agent's /metrics (here on its RPC port, behind the token) parses
// with Prometheus's parser and counts RPCs by code and times create,
// pause and resume.
func TestAgentPrometheusMetrics(t *testing.T) {
	const token = "agent-scrape-token-0123"
	bin := envdtest.Build(t)
	dir := t.TempDir()
	if err := sandboxtest.FakeImages(dir); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	var m *sandbox.Manager
	tel := telemetry.NewAgent(func(context.Context) (map[string]float64, error) { return m.StateCounts(), nil }, log)
	m, err := sandbox.New(sandbox.Config{Dir: dir, Driver: &sandboxtest.HostDriver{Bin: bin, Snapshots: true}, Net: sandboxtest.NewLoopNet(),
		Disks: sandboxtest.FileDisks{}, Logger: log, Accel: "tcg", Observe: tel.ObserveOperation})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, s := range m.List(context.Background()).Sandboxes {
			m.Destroy(context.Background(), s.SandboxId)
		}
	})
	srv, err := server.New(server.Config{Manager: m, Dir: dir, Logger: log,
		HandlerOptions: []connect.HandlerOption{connect.WithInterceptors(tel.ServerInterceptor())},
		Metrics:        telemetry.Handler(tel.Registry, token)})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	defer func() { cancel(); <-done }()
	base := "http://" + ln.Addr().String()
	c := hostagentv1connect.NewHostAgentServiceClient(http.DefaultClient, base)

	if _, err := c.CreateSandbox(ctx, connect.NewRequest(&pb.CreateSandboxRequest{SandboxId: "m1"})); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateSandbox(ctx, connect.NewRequest(&pb.CreateSandboxRequest{SandboxId: "m2"})); err != nil {
		t.Fatal(err)
	}
	if _, err := c.PauseSandbox(ctx, connect.NewRequest(&pb.PauseSandboxRequest{SandboxId: "m2"})); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ResumeSandbox(ctx, connect.NewRequest(&pb.ResumeSandboxRequest{SandboxId: "m2"})); err != nil {
		t.Fatal(err)
	}
	if _, err := c.PauseSandbox(ctx, connect.NewRequest(&pb.PauseSandboxRequest{SandboxId: "m2"})); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetSandbox(ctx, connect.NewRequest(&pb.GetSandboxRequest{SandboxId: "nope"})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("get unknown = %v", err)
	}

	if code, _ := telemetrytest.Get(t, base+"/metrics", ""); code != http.StatusUnauthorized {
		t.Fatalf("scrape without the token = %d, want 401", code)
	}
	fams := telemetrytest.Scrape(t, base+"/metrics", token)
	counts := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"wrenn_agent_rpc_requests_total", map[string]string{"procedure": "CreateSandbox", "code": "ok"}, 2},
		{"wrenn_agent_rpc_requests_total", map[string]string{"procedure": "GetSandbox", "code": "not_found"}, 1},
		{"wrenn_agent_sandboxes", map[string]string{"state": "running"}, 1},
		{"wrenn_agent_sandboxes", map[string]string{"state": "paused"}, 1},
		{"wrenn_agent_sandboxes", map[string]string{"state": "auto_paused"}, 0},
	}
	for _, w := range counts {
		s := telemetrytest.Find(fams, w.name, w.labels)
		if s == nil {
			t.Fatalf("no series %s%v in %v", w.name, w.labels, telemetrytest.Names(fams))
		}
		got := s.GetCounter().GetValue() + s.GetGauge().GetValue()
		if got != w.want {
			t.Errorf("%s%v = %v, want %v", w.name, w.labels, got, w.want)
		}
	}
	for _, w := range []struct {
		op   string
		want uint64
	}{{"create", 2}, {"pause", 2}, {"resume", 1}, {"restore", 0}} {
		s := telemetrytest.Find(fams, "wrenn_agent_sandbox_operation_duration_seconds", map[string]string{"operation": w.op, "outcome": "ok"})
		if s == nil || s.GetHistogram().GetSampleCount() != w.want || (w.want > 0 && s.GetHistogram().GetSampleSum() <= 0) {
			t.Errorf("operation %s histogram = %v, want %d observations", w.op, s, w.want)
		}
	}
}
