package metrics

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/wrenn-dev/wrenn/internal/testenv"
)

// latencies runs f b.N times and reports p50 and p99 in milliseconds.
func latencies(b *testing.B, f func()) {
	b.Helper()
	ds := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for b.Loop() {
		start := time.Now()
		f()
		ds = append(ds, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(ds)
	ms := func(q float64) float64 { return float64(ds[int(q*float64(len(ds)-1))].Microseconds()) / 1000 }
	b.ReportMetric(ms(0.50), "p50-ms")
	b.ReportMetric(ms(0.99), "p99-ms")
}

// seedTeamHistory gives team 60 days of 10-second snapshots ending at end
// (518,400 rows) and the minute and hour roll-ups the sampler would have
// written beside them.
func seedTeamHistory(b *testing.B, pool *pgxpool.Pool, team string, end time.Time) {
	b.Helper()
	ctx := context.Background()
	start := end.Add(-60 * 24 * time.Hour)
	for _, res := range []int{resRaw, resMinute, resHour} {
		if _, err := pool.Exec(ctx, `INSERT INTO sandbox_metrics_snapshots (team_id, resolution_sec, sampled_at, running, paused, reserved_vcpus, reserved_memory_mb)
			SELECT $1, $2, g, 3 + (extract(epoch FROM g)::bigint / 3600) % 5, 1, 7, 2048
			FROM generate_series($3::timestamptz, $4::timestamptz - make_interval(secs => $2), make_interval(secs => $2)) g`,
			team, res, start, end); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := pool.Exec(ctx, `VACUUM ANALYZE sandbox_metrics_snapshots`); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkStats: GET /v1/sandboxes/stats's reader for a team with 60 days
// of 10-second samples (518,400 rows). Baseline: range=5m (30 rows).
// "30d from raw rows" is the same answer computed from the 10-second rows
// (what the roll-ups avoid).
func BenchmarkStats(b *testing.B) {
	pool, _ := testenv.MigratedPool(b)
	addTeam(b, pool, "team-bench")
	end := time.Now().Truncate(SampleInterval)
	seedTeamHistory(b, pool, "team-bench", end)
	var raw int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM sandbox_metrics_snapshots WHERE team_id = 'team-bench' AND resolution_sec = 10`).Scan(&raw); err != nil || raw != 518400 {
		b.Fatalf("seeded %d 10-second rows (%v), want 518400", raw, err)
	}
	r := NewReader(pool, nil)
	ctx := context.Background()
	for _, name := range []string{"5m", "1h", "24h", "30d"} {
		b.Run("range="+name, func(b *testing.B) {
			latencies(b, func() {
				if _, err := r.TeamStats(ctx, "team-bench", name); err != nil {
					b.Fatal(err)
				}
			})
		})
	}
	b.Run("30d from raw rows", func(b *testing.B) {
		latencies(b, func() {
			rows, err := pool.Query(ctx, `SELECT date_bin('1 hour', sampled_at, timestamptz 'epoch'), max(running), max(paused), max(reserved_vcpus), max(reserved_memory_mb)
				FROM sandbox_metrics_snapshots WHERE team_id = 'team-bench' AND resolution_sec = 10 AND sampled_at >= $1 GROUP BY 1`, end.Add(-30*24*time.Hour))
			if err != nil {
				b.Fatal(err)
			}
			rows.Close()
		})
	})
}

// BenchmarkSamplerTick: one sampler tick (every team's usage into three
// resolutions) with 1,000 teams of 3 sandboxes each (2 running, 1 paused)
// beside 10,000 stopped sandboxes. Baseline: the same with 1 team.
func BenchmarkSamplerTick(b *testing.B) {
	for _, teams := range []int{1, 1000} {
		b.Run(fmt.Sprintf("teams=%d", teams), func(b *testing.B) {
			pool, _ := testenv.MigratedPool(b)
			ctx := context.Background()
			if _, err := pool.Exec(ctx, `INSERT INTO teams (id, name) SELECT 'team-' || i, 't' FROM generate_series(1, $1) i`, teams); err != nil {
				b.Fatal(err)
			}
			if _, err := pool.Exec(ctx, `INSERT INTO sandboxes (id, team_id, template, status, vcpus, memory_mb, disk_mb)
				SELECT 'sb-' || t || '-' || k, 'team-' || t, 'base', CASE WHEN k = 3 THEN 'paused' ELSE 'running' END, 2, 1024, 1024
				FROM generate_series(1, $1) t, generate_series(1, 3) k`, teams); err != nil {
				b.Fatal(err)
			}
			if _, err := pool.Exec(ctx, `INSERT INTO sandboxes (id, team_id, template, status, vcpus, memory_mb, disk_mb)
				SELECT 'sb-old-' || i, 'team-1', 'base', 'stopped', 1, 256, 1024 FROM generate_series(1, 10000) i`); err != nil {
				b.Fatal(err)
			}
			if _, err := pool.Exec(ctx, `VACUUM ANALYZE`); err != nil {
				b.Fatal(err)
			}
			s := newSampler(b, pool, 60*24*time.Hour)
			at := time.Now().Truncate(SampleInterval)
			latencies(b, func() {
				at = at.Add(SampleInterval) // a new bucket each tick, as in production
				n, err := s.Sample(ctx, at)
				if err != nil || n != teams {
					b.Fatalf("sampled %d teams (%v), want %d", n, err, teams)
				}
			})
		})
	}
}
