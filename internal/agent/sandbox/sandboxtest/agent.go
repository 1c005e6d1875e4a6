package sandboxtest

import (
	"context"
	"log/slog"
	"net"
	"os"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/agent/sandbox"
	"github.com/wrenn-dev/wrenn/internal/agent/server"
	"github.com/wrenn-dev/wrenn/internal/envd/envdtest"
)

// StartAgent serves a real host agent (RPC server and sandbox manager) on a
// loopback port for the rest of the test; its sandboxes are real envd
// processes on this host (HostDriver). It returns the agent's address.
func StartAgent(t testing.TB) string {
	t.Helper()
	bin := envdtest.Build(t)
	dir := t.TempDir()
	if err := FakeImages(dir); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	m, err := sandbox.New(sandbox.Config{Dir: dir, Driver: &HostDriver{Bin: bin}, Net: NewLoopNet(), Disks: FileDisks{}, Logger: log, Accel: "tcg"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, s := range m.List(context.Background()).Sandboxes {
			m.Destroy(context.Background(), s.SandboxId)
		}
	})
	return ServeAgent(t, m, dir, log)
}

// ServeAgent serves manager m through the real RPC server on a loopback
// port until the test ends and returns the address ("host:port").
func ServeAgent(t testing.TB, m *sandbox.Manager, dir string, log *slog.Logger) string {
	t.Helper()
	srv, err := server.New(server.Config{Manager: m, Dir: dir, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return ln.Addr().String()
}
