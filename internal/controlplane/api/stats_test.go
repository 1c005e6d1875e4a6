package api

import (
	"context"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/wrenn-dev/wrenn/internal/controlplane/metrics"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

func TestUsageStats(t *testing.T) {
	e := newEnv(t)
	owner := e.signup("owner@example.com")
	other := e.signup("other@example.com")
	key, _ := e.apiKey(owner, "sdk")
	c := cred{key: key}
	e.createSandbox(c, map[string]any{"vcpus": 2, "memory_mb": 512})
	paused := e.createSandbox(c, map[string]any{"vcpus": 1, "memory_mb": 256})
	e.want("POST", sbPath(paused.ID, "/pause"), nil, c, 200, nil)
	sampler, err := metrics.NewSampler(e.pool, metrics.SamplerConfig{Retention: 24 * time.Hour}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// A sample in the last complete 10-second bucket.
	if _, err := sampler.Sample(context.Background(), time.Now().Add(-10*time.Second)); err != nil {
		t.Fatal(err)
	}
	type usage struct {
		Running          int `json:"running"`
		Paused           int `json:"paused"`
		ReservedVCPUs    int `json:"reserved_vcpus"`
		ReservedMemoryMB int `json:"reserved_memory_mb"`
	}
	var st struct {
		Range        string
		BucketSec    int `json:"bucket_sec"`
		PollAfterSec int `json:"poll_after_sec"`
		Current      usage
		Peaks        usage
		Series       []struct {
			T time.Time
			usage
		}
	}
	want := usage{Running: 1, Paused: 1, ReservedVCPUs: 3, ReservedMemoryMB: 640}
	e.want("GET", "/v1/sandboxes/stats?range=5m", nil, c, 200, &st)
	if st.Range != "5m" || st.BucketSec != 10 || st.PollAfterSec != 5 || len(st.Series) != 30 || st.Current != want || st.Peaks != want {
		t.Fatalf("stats %+v", st)
	}
	if last := st.Series[len(st.Series)-1]; last.usage != want {
		t.Fatalf("last bucket %+v, want the sample %+v", last, want)
	}
	// Another team sees only its own (nothing).
	e.want("GET", "/v1/sandboxes/stats?range=30d", nil, other.cred(), 200, &st)
	if st.Current != (usage{}) || st.Peaks != (usage{}) || len(st.Series) != 720 || st.PollAfterSec != 300 {
		t.Fatalf("other team's stats: current %+v peaks %+v, %d buckets", st.Current, st.Peaks, len(st.Series))
	}
	for _, bad := range []string{"", "?range=", "?range=7d", "?range=5M"} {
		e.wantErr("GET", "/v1/sandboxes/stats"+bad, nil, c, 400, "invalid_request", "range")
	}
}

func TestSandboxMetricHistory(t *testing.T) {
	e := newEnv(t)
	owner := e.signup("owner@example.com")
	other := e.signup("other@example.com")
	c := owner.cred()
	sb := e.createSandbox(c, nil)
	ctx := context.Background()

	// The one reconcile pass stores what the agent's list carries.
	e.rec.Pass(ctx)
	var stored int
	if err := e.pool.QueryRow(ctx, `SELECT count(*) FROM sandbox_metric_samples WHERE sandbox_id = $1`, sb.ID).Scan(&stored); err != nil || stored != 1 {
		t.Fatalf("samples stored by the reconcile pass = %d (%v), want 1", stored, err)
	}
	e.rec.Pass(ctx) // listed again: no duplicate
	if err := e.pool.QueryRow(ctx, `SELECT count(*) FROM sandbox_metric_samples WHERE sandbox_id = $1`, sb.ID).Scan(&stored); err != nil || stored != 1 {
		t.Fatalf("samples after a second pass = %d (%v), want 1", stored, err)
	}
	// Two samples in a bucket that is complete now; another host cannot
	// write this sandbox's history.
	at := time.Now().Truncate(10 * time.Second).Add(-20 * time.Second)
	sample := func(at time.Time, cpu float64) *pb.SandboxMetrics {
		return &pb.SandboxMetrics{SampledAt: timestamppb.New(at), CpuPercent: cpu, HostCpuPercent: cpu / 2, MemoryUsedBytes: 100, MemoryTotalBytes: 1000, DiskUsedBytes: 5, DiskTotalBytes: 50}
	}
	store := metrics.NewSampleStore(e.pool)
	series := []*pb.SandboxMetricsSeries{{SandboxId: sb.ID, Samples: []*pb.SandboxMetrics{sample(at, 90), sample(at.Add(5*time.Second), 100)}}}
	if err := store.StoreListed(ctx, "host-test", series); err != nil {
		t.Fatal(err)
	}
	forged := []*pb.SandboxMetricsSeries{{SandboxId: sb.ID, Samples: []*pb.SandboxMetrics{sample(at.Add(-10*time.Second), 1)}}}
	if err := store.StoreListed(ctx, "host-elsewhere", forged); err != nil {
		t.Fatal(err)
	}
	e.want("POST", sbPath(sb.ID, "/pause"), nil, c, 200, nil)

	var h struct {
		Range        string
		BucketSec    int `json:"bucket_sec"`
		PollAfterSec int `json:"poll_after_sec"`
		Series       []struct {
			T               time.Time
			CPUPercent      *float64 `json:"cpu_percent"`
			MemoryUsedBytes *int64   `json:"memory_used_bytes"`
		}
	}
	// Kept after the sandbox paused.
	e.want("GET", sbPath(sb.ID, "/metrics?range=5m"), nil, c, 200, &h)
	if h.Range != "5m" || h.BucketSec != 10 || len(h.Series) != 30 {
		t.Fatalf("history %+v", h)
	}
	var filled int
	for _, p := range h.Series {
		switch {
		case p.T.Equal(at):
			if p.CPUPercent == nil || *p.CPUPercent != 95 || p.MemoryUsedBytes == nil || *p.MemoryUsedBytes != 100 {
				t.Fatalf("bucket %s = cpu %v mem %v, want the mean 95 and 100", p.T, p.CPUPercent, p.MemoryUsedBytes)
			}
			filled++
		case p.T.Equal(at.Add(-10 * time.Second)):
			if p.CPUPercent != nil {
				t.Fatalf("a sample from another host was stored: %v", *p.CPUPercent)
			}
		}
	}
	if filled != 1 {
		t.Fatalf("the sampled bucket %s is missing from %+v", at, h.Series)
	}
	e.want("GET", sbPath(sb.ID, "/metrics?range=24h"), nil, c, 200, &h)
	if h.BucketSec != 900 || len(h.Series) != 96 {
		t.Fatalf("24h history: bucket %d, %d buckets", h.BucketSec, len(h.Series))
	}
	e.wantErr("GET", sbPath(sb.ID, "/metrics?range=30d"), nil, c, 400, "invalid_request", "range")
	e.wantErr("GET", sbPath(sb.ID, "/metrics?range="), nil, c, 400, "invalid_request", "range")
	e.wantErr("GET", sbPath(sb.ID, "/metrics?range=5m"), nil, other.cred(), 404, "sandbox_not_found", "")
	e.wantErr("GET", sbPath("sb-nope", "/metrics?range=5m"), nil, c, 404, "sandbox_not_found", "")
}
