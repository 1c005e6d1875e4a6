package api

import (
	"context"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/controlplane/metrics"
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
