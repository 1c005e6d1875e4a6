package firecracker

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
)

// Driver overhead against the fake firecracker (process spawn, socket
// wait, API calls, stop and reap); a real VMM adds its own boot and
// restore time on top. Each iteration starts processes: use -benchtime=20x.

func quiet(o *Options) { o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil)) }

func BenchmarkStartStop(b *testing.B) {
	e := newEnv(b, quiet)
	ctx := context.Background()
	for i := 0; b.Loop(); i++ {
		m, err := e.drv.Start(ctx, e.config(fmt.Sprintf("bench-%d", i)))
		if err != nil {
			b.Fatal(err)
		}
		if err := m.Stop(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRestoreStop(b *testing.B) {
	for _, backend := range []MemoryBackend{BackendFile, BackendUffd} {
		b.Run(string(backend), func(b *testing.B) {
			e := newEnv(b, quiet, withBackend(backend))
			ctx := context.Background()
			m, err := e.drv.Start(ctx, e.config("src"))
			if err != nil {
				b.Fatal(err)
			}
			defer m.Stop(ctx)
			if err := m.Pause(ctx); err != nil {
				b.Fatal(err)
			}
			snap, err := m.Snapshot(ctx, filepath.Join(e.dir, "snap"))
			if err != nil {
				b.Fatal(err)
			}
			for i := 0; b.Loop(); i++ {
				cfg := e.config(fmt.Sprintf("r-%d", i))
				cfg.DiskPath = snap.DiskPath
				r, err := e.drv.Restore(ctx, cfg, snap)
				if err != nil {
					b.Fatal(err)
				}
				if err := r.Stop(ctx); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
