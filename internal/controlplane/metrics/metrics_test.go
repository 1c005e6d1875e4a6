package metrics

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/wrenn-dev/wrenn/internal/controlplane/lease"
	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
	"github.com/wrenn-dev/wrenn/internal/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

// sb is one sandbox row of a test team.
type sb struct {
	status    string
	vcpus     int
	memoryMB  int
	otherTeam bool
}

func addTeam(t testing.TB, pool *pgxpool.Pool, id string) {
	t.Helper()
	if _, err := pool.Exec(context.Background(), `INSERT INTO teams (id, name) VALUES ($1, $1)`, id); err != nil {
		t.Fatalf("insert team %s: %v", id, err)
	}
}

func addSandboxes(t testing.TB, pool *pgxpool.Pool, team string, sbs []sb) {
	t.Helper()
	for i, s := range sbs {
		if _, err := pool.Exec(context.Background(), `INSERT INTO sandboxes (id, team_id, template, status, vcpus, memory_mb, disk_mb)
			VALUES ($1, $2, 'base', $3, $4, $5, 1024)`, fmt.Sprintf("sb-%s-%d", team, i), team, s.status, s.vcpus, s.memoryMB); err != nil {
			t.Fatalf("insert sandbox: %v", err)
		}
	}
}

func newSampler(t testing.TB, pool *pgxpool.Pool, retention time.Duration) *Sampler {
	t.Helper()
	s, err := NewSampler(pool, SamplerConfig{Retention: retention}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// The reserved formula: running reserves its full vCPUs and memory, paused
// ceil(x/2) of each, per sandbox; other states reserve nothing.
func TestReservedFormula(t *testing.T) {
	pool, _ := testenv.MigratedPool(t)
	ctx := context.Background()
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	cases := []struct {
		name string
		sbs  []sb
		want *Usage // nil: no row (nothing running or paused)
	}{
		{"one running", []sb{{"running", 2, 512, false}}, &Usage{1, 0, 2, 512}},
		{"one paused odd", []sb{{"paused", 1, 257, false}}, &Usage{0, 1, 1, 129}},
		{"one paused even", []sb{{"paused", 4, 1024, false}}, &Usage{0, 1, 2, 512}},
		{"paused rounded per sandbox", []sb{{"paused", 1, 1, false}, {"paused", 1, 1, false}, {"paused", 3, 3, false}}, &Usage{0, 3, 4, 4}},
		{"mix", []sb{{"running", 2, 2048, false}, {"running", 1, 128, false}, {"paused", 3, 1000, false}, {"paused", 1, 129, false}},
			&Usage{2, 2, 3 + 2 + 1, 2176 + 500 + 65}},
		{"other states count nothing", []sb{{"pending", 8, 8192, false}, {"stopped", 8, 8192, false}, {"error", 2, 1, false},
			{"missing", 2, 2, false}, {"stopping", 4, 4, false}, {"running", 1, 256, false}}, &Usage{1, 0, 1, 256}},
		{"nothing running", []sb{{"stopped", 2, 512, false}}, nil},
		{"another team's sandboxes are not counted", []sb{{"running", 1, 128, false}, {"running", 4, 4096, true}}, &Usage{1, 0, 1, 128}},
	}
	s := newSampler(t, pool, 24*time.Hour)
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			team, other := fmt.Sprintf("team-f%d", i), fmt.Sprintf("team-o%d", i)
			addTeam(t, pool, team)
			addTeam(t, pool, other)
			var mine, theirs []sb
			for _, x := range tc.sbs {
				if x.otherTeam {
					theirs = append(theirs, x)
				} else {
					mine = append(mine, x)
				}
			}
			addSandboxes(t, pool, team, mine)
			addSandboxes(t, pool, other, theirs)
			tick := at.Add(time.Duration(i) * time.Hour)
			if _, err := s.Sample(ctx, tick); err != nil {
				t.Fatal(err)
			}
			for _, res := range []int{resRaw, resMinute, resHour} {
				var got Usage
				var n int
				err := pool.QueryRow(ctx, `SELECT count(*) OVER (), running, paused, reserved_vcpus, reserved_memory_mb FROM sandbox_metrics_snapshots
					WHERE team_id = $1 AND resolution_sec = $2`, team, res).Scan(&n, &got.Running, &got.Paused, &got.ReservedVCPUs, &got.ReservedMemoryMB)
				if tc.want == nil {
					if err == nil {
						t.Fatalf("resolution %d: a row for a team with nothing running: %+v", res, got)
					}
					continue
				}
				if err != nil {
					t.Fatalf("resolution %d: read row: %v", res, err)
				}
				if n != 1 || got != *tc.want {
					t.Fatalf("resolution %d: %d rows, got %+v, want %+v", res, n, got, *tc.want)
				}
			}
			// The live numbers of the stats API use the same formula.
			st, err := NewReader(pool, func() time.Time { return tick }).TeamStats(ctx, team, "5m")
			if err != nil {
				t.Fatal(err)
			}
			want := Usage{}
			if tc.want != nil {
				want = *tc.want
			}
			if st.Current != want {
				t.Fatalf("current = %+v, want %+v", st.Current, want)
			}
		})
	}
}

// A repeated tick (two samplers, or one restarted, within one bucket)
// merges into the bucket's row: never a duplicate.
func TestRepeatedTickMerges(t *testing.T) {
	pool, _ := testenv.MigratedPool(t)
	ctx := context.Background()
	addTeam(t, pool, "team-r")
	addSandboxes(t, pool, "team-r", []sb{{"running", 2, 512, false}})
	s := newSampler(t, pool, 24*time.Hour)
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	for _, d := range []time.Duration{0, 3 * time.Second, 9 * time.Second} {
		if _, err := s.Sample(ctx, at.Add(d)); err != nil {
			t.Fatal(err)
		}
	}
	counts := map[int]int{}
	rows, err := pool.Query(ctx, `SELECT resolution_sec, count(*) FROM sandbox_metrics_snapshots GROUP BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var r, n int
		if err := rows.Scan(&r, &n); err != nil {
			t.Fatal(err)
		}
		counts[r] = n
	}
	if want := map[int]int{10: 1, 60: 1, 3600: 1}; fmt.Sprint(counts) != fmt.Sprint(want) {
		t.Fatalf("rows per resolution = %v, want %v", counts, want)
	}
}

// Two control planes run the sampler loop under one lease: each tick has
// exactly one row per team, and ticks keep coming.
func TestOneSamplerAcrossTwoInstances(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for several 10-second ticks")
	}
	pool, _ := testenv.MigratedPool(t)
	addTeam(t, pool, "team-a")
	addTeam(t, pool, "team-b")
	addSandboxes(t, pool, "team-a", []sb{{"running", 1, 128, false}})
	addSandboxes(t, pool, "team-b", []sb{{"paused", 2, 256, false}})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var mu sync.Mutex
	ticks := map[string]int{} // replica -> ticks sampled
	for _, replica := range []string{"cp-one", "cp-two"} {
		l, err := lease.New(pool, lease.Config{Name: LeaseName, Replica: replica, Interval: SampleInterval}, nil)
		if err != nil {
			t.Fatal(err)
		}
		s := newSampler(t, pool, 24*time.Hour)
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.Run(ctx, func(ctx context.Context) {
				mu.Lock()
				ticks[replica]++
				mu.Unlock()
				s.Run(ctx)
			})
		}()
	}
	time.Sleep(25 * time.Second)
	cancel()
	wg.Wait()
	var buckets, dups, teams int
	if err := pool.QueryRow(context.Background(), `SELECT count(DISTINCT sampled_at), count(*) - count(DISTINCT (team_id, sampled_at)), count(DISTINCT team_id)
		FROM sandbox_metrics_snapshots WHERE resolution_sec = 10`).Scan(&buckets, &dups, &teams); err != nil {
		t.Fatal(err)
	}
	var perBucket int
	if err := pool.QueryRow(context.Background(), `SELECT min(n) FROM (SELECT count(*) n FROM sandbox_metrics_snapshots WHERE resolution_sec = 10 GROUP BY sampled_at) x`).Scan(&perBucket); err != nil {
		t.Fatal(err)
	}
	if buckets < 2 || dups != 0 || teams != 2 || perBucket != 2 {
		t.Fatalf("10-second buckets %d (want >= 2), duplicate rows %d, teams %d, min rows per bucket %d (want 2)", buckets, dups, teams, perBucket)
	}
	if len(ticks) != 1 {
		t.Fatalf("the sampler loop ran in %d replicas (%v), want exactly one", len(ticks), ticks)
	}
}

// Retention removes exactly the snapshots older than the cut-off, across
// several batches, and leaves the rest.
func TestRetentionRemovesExactlyWhatIsOlder(t *testing.T) {
	pool, _ := testenv.MigratedPool(t)
	ctx := context.Background()
	addTeam(t, pool, "team-k")
	now := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	retention := 48 * time.Hour
	cutoff := now.Add(-retention)
	// 10-second rows from 3 days ago to now: older, at, and after the cut-off.
	if _, err := pool.Exec(ctx, `INSERT INTO sandbox_metrics_snapshots (team_id, resolution_sec, sampled_at, running, paused, reserved_vcpus, reserved_memory_mb)
		SELECT 'team-k', 10, g, 1, 0, 1, 128 FROM generate_series($1::timestamptz, $2::timestamptz, interval '10 seconds') g`,
		now.Add(-72*time.Hour), now); err != nil {
		t.Fatal(err)
	}
	var older, kept int64
	if err := pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE sampled_at < $1), count(*) FILTER (WHERE sampled_at >= $1) FROM sandbox_metrics_snapshots`, cutoff).Scan(&older, &kept); err != nil {
		t.Fatal(err)
	}
	s, err := NewSampler(pool, SamplerConfig{Retention: retention, PruneBatch: 1000}, nil)
	if err != nil {
		t.Fatal(err)
	}
	n, err := s.Prune(ctx, now)
	if err != nil {
		t.Fatal(err)
	}
	var left, oldest int64
	var min time.Time
	if err := pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE sampled_at < $1), min(sampled_at) FROM sandbox_metrics_snapshots`, cutoff).Scan(&left, &oldest, &min); err != nil {
		t.Fatal(err)
	}
	if n != older || left != kept || oldest != 0 || !min.Equal(cutoff) {
		t.Fatalf("removed %d (want %d), left %d (want %d), left older %d, oldest left %s (want the cut-off %s)", n, older, left, kept, oldest, min, cutoff)
	}
}

// Every range answers complete buckets aligned to its size, every bucket
// present, with gaps in the data filled with zero.
func TestStatsBucketsCompleteAndAligned(t *testing.T) {
	pool, _ := testenv.MigratedPool(t)
	ctx := context.Background()
	addTeam(t, pool, "team-s")
	addTeam(t, pool, "team-x")
	now := time.Date(2026, 5, 1, 13, 7, 43, 500_000_000, time.UTC)
	// 31 days of 10-second samples at the tick times the sampler uses,
	// with a gap in the middle of each range; another team's rows beside.
	s := newSampler(t, pool, 60*24*time.Hour)
	addSandboxes(t, pool, "team-s", []sb{{"running", 2, 512, false}, {"paused", 1, 256, false}})
	addSandboxes(t, pool, "team-x", []sb{{"running", 8, 8192, false}})
	hour := now.Truncate(time.Hour)
	gaps := []struct{ from, to time.Time }{
		{now.Add(-150 * time.Second), now.Add(-100 * time.Second)},      // inside 5m
		{now.Add(-30 * time.Minute), now.Add(-25 * time.Minute)},        // inside 1h
		{now.Add(-3 * time.Hour), now.Add(-2 * time.Hour)},              // inside 6h
		{now.Add(-12 * time.Hour), now.Add(-11 * time.Hour)},            // inside 24h
		{hour.Add(-10 * 24 * time.Hour), hour.Add(-9 * 24 * time.Hour)}, // inside 30d
	}
	inGap := func(tk time.Time) bool {
		for _, g := range gaps {
			if !tk.Before(g.from) && tk.Before(g.to) {
				return true
			}
		}
		return false
	}
	// Every tick of the last 25 hours, and before that one tick an hour
	// (enough for the hour roll-up the 30d range reads), minus the gaps.
	var sampled []time.Time
	for tk := now.Truncate(SampleInterval).Add(-31 * 24 * time.Hour); !tk.After(now); tk = tk.Add(SampleInterval) {
		if inGap(tk) || (now.Sub(tk) > 25*time.Hour && !tk.Equal(tk.Truncate(time.Hour))) {
			continue
		}
		if _, err := s.Sample(ctx, tk); err != nil {
			t.Fatal(err)
		}
		sampled = append(sampled, tk)
	}
	hasSample := func(from, to time.Time) bool {
		i, _ := slices.BinarySearchFunc(sampled, from, time.Time.Compare)
		return i < len(sampled) && sampled[i].Before(to)
	}
	r := NewReader(pool, func() time.Time { return now })
	want := Usage{Running: 1, Paused: 1, ReservedVCPUs: 3, ReservedMemoryMB: 640}
	for _, name := range RangeNames() {
		t.Run(name, func(t *testing.T) {
			spec := ranges[name]
			st, err := r.TeamStats(ctx, "team-s", name)
			if err != nil {
				t.Fatal(err)
			}
			if st.Range != name || st.BucketSec != int(spec.bucket/time.Second) || st.PollAfterSec <= 0 {
				t.Fatalf("header = %q %d %d", st.Range, st.BucketSec, st.PollAfterSec)
			}
			if n := int(spec.span / spec.bucket); len(st.Series) != n {
				t.Fatalf("%d buckets, want %d", len(st.Series), n)
			}
			end := now.Truncate(spec.bucket)
			var zeros int
			for i, p := range st.Series {
				if wantT := end.Add(-spec.span + time.Duration(i)*spec.bucket); !p.T.Equal(wantT) || p.T.Unix()%int64(st.BucketSec) != 0 {
					t.Fatalf("bucket %d starts %s, want %s (aligned to %ds)", i, p.T, wantT, st.BucketSec)
				}
				wantP := want
				if !hasSample(p.T, p.T.Add(spec.bucket)) {
					wantP = Usage{}
					zeros++
				}
				if p.Usage != wantP {
					t.Fatalf("bucket %s = %+v, want %+v", p.T, p.Usage, wantP)
				}
			}
			if zeros == 0 {
				t.Fatalf("no empty bucket for the gap in range %s", name)
			}
			if last := st.Series[len(st.Series)-1].T.Add(spec.bucket); last.After(now) {
				t.Fatalf("last bucket ends %s, after now %s: incomplete", last, now)
			}
			if st.Current != want || st.Peaks != want {
				t.Fatalf("current %+v, peaks %+v, want %+v", st.Current, st.Peaks, want)
			}
		})
	}
	if _, err := r.TeamStats(ctx, "team-s", "7d"); err == nil {
		t.Fatal("range 7d accepted")
	} else if se, ok := service.AsError(err); !ok || se.Field != "range" || se.Code != service.CodeInvalidRequest {
		t.Fatalf("range 7d: %v, want invalid_request naming range", err)
	}
}
