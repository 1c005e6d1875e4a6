package metrics

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
	"github.com/wrenn-dev/wrenn/internal/db"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// SampleStore keeps the per-sandbox resource samples agents report in
// their sandbox list; the reconciler, the one poller of the hosts, hands
// them over (reconciler.Config.Samples).
type SampleStore struct{ q *db.Queries }

// NewSampleStore builds a store on conn.
func NewSampleStore(conn db.DBTX) *SampleStore { return &SampleStore{q: db.New(conn)} }

// StoreListed stores the samples host's agent listed, in one round trip.
// Samples of sandboxes that are not on host are dropped, so an agent can
// write only its own sandboxes' history.
func (s *SampleStore) StoreListed(ctx context.Context, hostID string, series []*pb.SandboxMetricsSeries) error {
	type row struct {
		SandboxID        string    `json:"sandbox_id"`
		SampledAt        time.Time `json:"sampled_at"`
		CPUPercent       float64   `json:"cpu_percent"`
		HostCPUPercent   float64   `json:"host_cpu_percent"`
		MemoryUsedBytes  int64     `json:"memory_used_bytes"`
		MemoryTotalBytes int64     `json:"memory_total_bytes"`
		DiskUsedBytes    int64     `json:"disk_used_bytes"`
		DiskTotalBytes   int64     `json:"disk_total_bytes"`
	}
	var rows []row
	for _, sr := range series {
		for _, m := range sr.GetSamples() {
			if m.GetSampledAt() == nil {
				continue
			}
			cpu, host := m.GetCpuPercent(), m.GetHostCpuPercent()
			if !reading(cpu) || !reading(host) {
				continue // not a reading; JSON could not even carry it
			}
			rows = append(rows, row{SandboxID: sr.GetSandboxId(), SampledAt: m.GetSampledAt().AsTime(), CPUPercent: cpu, HostCPUPercent: host,
				MemoryUsedBytes: clampInt64(m.GetMemoryUsedBytes()), MemoryTotalBytes: clampInt64(m.GetMemoryTotalBytes()),
				DiskUsedBytes: clampInt64(m.GetDiskUsedBytes()), DiskTotalBytes: clampInt64(m.GetDiskTotalBytes())})
		}
	}
	if len(rows) == 0 {
		return nil
	}
	raw, err := json.Marshal(rows)
	if err != nil {
		return fmt.Errorf("encode sandbox samples: %w", err)
	}
	// One statement for the whole list: one round trip per host and pass.
	if _, err := s.q.InsertSandboxSamples(ctx, db.InsertSandboxSamplesParams{Samples: raw, HostID: hostID}); err != nil {
		return fmt.Errorf("store %d sandbox samples of host %s: %w", len(rows), hostID, err)
	}
	return nil
}

func reading(pct float64) bool { return !math.IsNaN(pct) && !math.IsInf(pct, 0) && pct >= 0 }

func clampInt64(v uint64) int64 { return int64(min(v, 1<<63-1)) }

// SandboxPoint is one bucket of a sandbox's history: mean CPU (the guest's
// percent of its vCPUs busy, and the host's percent of one core) and peak
// memory and disk. Fields are null in a bucket with no sample (the
// sandbox did not run).
type SandboxPoint struct {
	T                time.Time `json:"t"`
	CPUPercent       *float64  `json:"cpu_percent"`
	HostCPUPercent   *float64  `json:"host_cpu_percent"`
	MemoryUsedBytes  *int64    `json:"memory_used_bytes"`
	MemoryTotalBytes *int64    `json:"memory_total_bytes"`
	DiskUsedBytes    *int64    `json:"disk_used_bytes"`
	DiskTotalBytes   *int64    `json:"disk_total_bytes"`
}

// SandboxHistory is GET /v1/sandboxes/{id}/metrics?range=.
type SandboxHistory struct {
	Range        string         `json:"range"`
	BucketSec    int            `json:"bucket_sec"`
	PollAfterSec int            `json:"poll_after_sec"`
	Series       []SandboxPoint `json:"series"`
}

// sandboxRanges are the ranges of a sandbox's history (its samples have
// no roll-ups, so no 30d).
var sandboxRanges = []string{"5m", "1h", "6h", "24h"}

// SandboxHistory is the history of one of teamID's sandboxes over the
// named range, in complete aligned buckets (as the team stats); another
// team's sandbox is not found.
func (r *Reader) SandboxHistory(ctx context.Context, teamID, sandboxID, rangeName string) (SandboxHistory, error) {
	spec, ok := ranges[rangeName]
	if !ok || !slices.Contains(sandboxRanges, rangeName) {
		return SandboxHistory{}, service.Invalid("range", "unknown range %q: use one of %s", rangeName, strings.Join(sandboxRanges, ", "))
	}
	if _, err := r.q.GetSandbox(ctx, db.GetSandboxParams{ID: sandboxID, TeamID: teamID}); errors.Is(err, pgx.ErrNoRows) {
		return SandboxHistory{}, service.NotFound(service.CodeSandboxNotFound, "no such sandbox")
	} else if err != nil {
		return SandboxHistory{}, service.Internal("load sandbox", err)
	}
	start, end := spec.window(r.now())
	rows, err := r.q.SandboxSampleSeries(ctx, db.SandboxSampleSeriesParams{SandboxID: sandboxID,
		BucketSec: int32(spec.bucket / time.Second), FromAt: start, ToAt: end})
	if err != nil {
		return SandboxHistory{}, service.Internal("read sandbox samples", err)
	}
	out := SandboxHistory{Range: rangeName, BucketSec: int(spec.bucket / time.Second), PollAfterSec: int(spec.pollAfter / time.Second)}
	out.Series = fill(spec, start, end, rows, func(r db.SandboxSampleSeriesRow) time.Time { return r.Bucket },
		func(t time.Time, r *db.SandboxSampleSeriesRow) SandboxPoint {
			p := SandboxPoint{T: t}
			if r != nil {
				p.CPUPercent, p.HostCPUPercent = &r.CpuPercent, &r.HostCpuPercent
				p.MemoryUsedBytes, p.MemoryTotalBytes = &r.MemoryUsedBytes, &r.MemoryTotalBytes
				p.DiskUsedBytes, p.DiskTotalBytes = &r.DiskUsedBytes, &r.DiskTotalBytes
			}
			return p
		})
	return out, nil
}
