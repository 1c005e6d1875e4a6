package metrics

import (
	"context"
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
	"github.com/wrenn-dev/wrenn/internal/db"
)

// rangeSpec is one range of GET /v1/sandboxes/stats: its span, the bucket
// size of its series, the snapshot resolution it reads, and how soon a
// client should ask again.
type rangeSpec struct {
	span       time.Duration
	bucket     time.Duration
	resolution int32
	pollAfter  time.Duration
}

// ranges is the one table of stats ranges. Each reads the coarsest
// resolution that still fills its buckets, so no range reads more than
// 1,440 rows per team.
var ranges = map[string]rangeSpec{
	"5m":  {span: 5 * time.Minute, bucket: 10 * time.Second, resolution: resRaw, pollAfter: 5 * time.Second},
	"1h":  {span: time.Hour, bucket: time.Minute, resolution: resMinute, pollAfter: 15 * time.Second},
	"6h":  {span: 6 * time.Hour, bucket: 5 * time.Minute, resolution: resMinute, pollAfter: 30 * time.Second},
	"24h": {span: 24 * time.Hour, bucket: 15 * time.Minute, resolution: resMinute, pollAfter: time.Minute},
	"30d": {span: 30 * 24 * time.Hour, bucket: time.Hour, resolution: resHour, pollAfter: 5 * time.Minute},
}

// RangeNames lists the accepted ranges, shortest first.
func RangeNames() []string {
	names := make([]string, 0, len(ranges))
	for n := range ranges {
		names = append(names, n)
	}
	slices.SortFunc(names, func(a, b string) int { return int(ranges[a].span - ranges[b].span) })
	return names
}

// Usage is what a team runs and reserves at one time (or, in a series
// bucket and in peaks, the maximum of each field over that time).
type Usage struct {
	Running          int32 `json:"running"`
	Paused           int32 `json:"paused"`
	ReservedVCPUs    int32 `json:"reserved_vcpus"`
	ReservedMemoryMB int64 `json:"reserved_memory_mb"`
}

func (u Usage) max(o Usage) Usage {
	return Usage{Running: max(u.Running, o.Running), Paused: max(u.Paused, o.Paused),
		ReservedVCPUs: max(u.ReservedVCPUs, o.ReservedVCPUs), ReservedMemoryMB: max(u.ReservedMemoryMB, o.ReservedMemoryMB)}
}

// Point is one bucket of a series; T is the bucket's start.
type Point struct {
	T time.Time `json:"t"`
	Usage
}

// Stats is GET /v1/sandboxes/stats.
type Stats struct {
	Range        string  `json:"range"`
	BucketSec    int     `json:"bucket_sec"`
	PollAfterSec int     `json:"poll_after_sec"`
	Current      Usage   `json:"current"`
	Peaks        Usage   `json:"peaks"`
	Series       []Point `json:"series"`
}

// Reader answers the metrics routes: team stats from the snapshots and the
// live sandbox rows, sandbox history from the stored samples.
type Reader struct {
	q   *db.Queries
	now func() time.Time
}

// NewReader builds a reader on conn; now may be nil (time.Now).
func NewReader(conn db.DBTX, now func() time.Time) *Reader {
	if now == nil {
		now = time.Now
	}
	return &Reader{q: db.New(conn), now: now}
}

// TeamStats is the usage of teamID over the named range: the complete
// buckets that end at or before now, every one present and aligned to the
// bucket size. A bucket without a snapshot is zero: the sampler writes rows
// only for teams with a running or paused sandbox, so no row means none
// (or, while no control plane ran, no sample). Current is live; peaks are
// the maxima over the series and current.
func (r *Reader) TeamStats(ctx context.Context, teamID, rangeName string) (Stats, error) {
	spec, ok := ranges[rangeName]
	if rangeName == "" {
		return Stats{}, service.Invalid("range", "range is required: use one of %s", strings.Join(RangeNames(), ", "))
	}
	if !ok {
		return Stats{}, service.Invalid("range", "unknown range %q: use one of %s", rangeName, strings.Join(RangeNames(), ", "))
	}
	start, end := spec.window(r.now())
	rows, err := r.q.TeamUsageSeries(ctx, db.TeamUsageSeriesParams{TeamID: teamID, ResolutionSec: spec.resolution,
		BucketSec: int32(spec.bucket / time.Second), FromAt: start, ToAt: end})
	if err != nil {
		return Stats{}, service.Internal("read usage series", err)
	}
	cur, err := r.q.GetTeamUsage(ctx, teamID)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return Stats{}, service.Internal("read current usage", err)
	}
	out := Stats{Range: rangeName, BucketSec: int(spec.bucket / time.Second), PollAfterSec: int(spec.pollAfter / time.Second),
		Current: Usage{Running: cur.Running, Paused: cur.Paused, ReservedVCPUs: cur.ReservedVcpus, ReservedMemoryMB: cur.ReservedMemoryMb}}
	out.Series = fill(spec, start, end, rows, func(r db.TeamUsageSeriesRow) time.Time { return r.Bucket },
		func(t time.Time, r *db.TeamUsageSeriesRow) Point {
			p := Point{T: t}
			if r != nil {
				p.Usage = Usage{Running: r.Running, Paused: r.Paused, ReservedVCPUs: r.ReservedVcpus, ReservedMemoryMB: r.ReservedMemoryMb}
			}
			return p
		})
	out.Peaks = out.Current
	for _, p := range out.Series {
		out.Peaks = out.Peaks.max(p.Usage)
	}
	return out, nil
}

// window is the range's complete buckets at now: [start, end), end the
// start of the bucket in progress.
func (s rangeSpec) window(now time.Time) (start, end time.Time) {
	end = now.Truncate(s.bucket)
	return end.Add(-s.span), end
}

// fill makes one point per bucket of [start, end): from the row whose
// bucket it is (rows sorted by bucket, each aligned), or from nil when no
// row has it. The one gap-filling rule of every series.
func fill[R, P any](s rangeSpec, start, end time.Time, rows []R, bucket func(R) time.Time, point func(time.Time, *R) P) []P {
	out := make([]P, 0, int(s.span/s.bucket))
	i := 0
	for t := start; t.Before(end); t = t.Add(s.bucket) {
		var row *R
		if i < len(rows) && bucket(rows[i]).Equal(t) {
			row = &rows[i]
			i++
		}
		out = append(out, point(t.UTC(), row))
	}
	return out
}
