package events_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/wrenn-dev/wrenn/internal/controlplane/audit"
	"github.com/wrenn-dev/wrenn/internal/controlplane/events"
	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
	"github.com/wrenn-dev/wrenn/internal/db"
	"github.com/wrenn-dev/wrenn/internal/testenv"
)

// BenchmarkRelayThroughput drains a backlog of 5,000 committed events to a
// real Redis through the relay (real PostgreSQL), reporting events per
// second; the backlog is written with the timer stopped.
func BenchmarkRelayThroughput(b *testing.B) {
	const backlog = 5000
	pool, _ := testenv.MigratedPool(b)
	rdb := redisClient(b, testenv.RedisURL(b))
	ctx := context.Background()
	al := audit.New()
	relay := events.NewRelay(pool, rdb, events.RelayConfig{}, nil)
	var spent time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			q := db.New(tx)
			for j := range backlog {
				sb := db.Sandbox{ID: "sb-bench", TeamID: []string{"team-a", "team-b", "team-c", "team-d"}[j%4], Status: "running"}
				if err := al.SandboxRunning(ctx, q, service.ActorReconciler, audit.SandboxChange{Sandbox: sb, From: "pending", Reason: "bench"}); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		t0 := time.Now()
		for sent := 0; sent < backlog; {
			n, err := relay.PublishBatch(ctx)
			if err != nil {
				b.Fatal(err)
			}
			if n == 0 {
				b.Fatalf("relay stopped after %d of %d events", sent, backlog)
			}
			sent += n
		}
		spent += time.Since(t0)
	}
	b.ReportMetric(float64(backlog*b.N)/spent.Seconds(), "events/s")
}
