package server_test

import (
	"context"
	"log/slog"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/agent/sandbox"
	"github.com/wrenn-dev/wrenn/internal/agent/sandbox/sandboxtest"
	"github.com/wrenn-dev/wrenn/internal/agentconformance"
	"github.com/wrenn-dev/wrenn/internal/envd/envdtest"
	"github.com/wrenn-dev/wrenn/proto/hostagent/v1/hostagentv1connect"
)

// TestConformance runs the host-agent contract suite against the real
// server and sandbox manager (with its idle reaper running) over Connect
// on loopback; the "VMs" are real envd processes (sandboxtest.HostDriver,
// with cold snapshots).
func TestConformance(t *testing.T) {
	dir := t.TempDir()
	if err := sandboxtest.FakeImages(dir); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	m, err := sandbox.New(sandbox.Config{Dir: dir, Driver: &sandboxtest.HostDriver{Bin: envdtest.Build(t), Snapshots: true},
		Net: sandboxtest.NewLoopNet(), Disks: sandboxtest.FileDisks{}, Logger: log, Accel: "tcg", ReapInterval: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	reaped := make(chan struct{})
	go func() { m.Run(ctx); close(reaped) }()
	t.Cleanup(func() {
		cancel()
		<-reaped
		for _, s := range m.List(context.Background()).Sandboxes {
			m.Destroy(context.Background(), s.SandboxId)
		}
	})
	c := hostagentv1connect.NewHostAgentServiceClient(http.DefaultClient, serve(t, m, dir, log))
	agentconformance.Run(t, c, agentconformance.Options{})
}
