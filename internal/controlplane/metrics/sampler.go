// Package metrics holds the control plane's usage metrics: the sampler that
// snapshots each team's usage every tick, retention, and the stats read by
// GET /v1/sandboxes/stats.
package metrics

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/wrenn-dev/wrenn/internal/db"
	"github.com/wrenn-dev/wrenn/internal/retention"
)

// SampleInterval is the sampler's tick and the finest resolution of the
// snapshots (resolution_sec 10 in the migration).
const SampleInterval = 10 * time.Second

// LeaseName names the sampler's singleton lease.
const LeaseName = "metrics-sampler"

// Resolutions the sampler writes, in seconds; the migration's CHECK and
// SampleTeamUsage list the same three.
const (
	resRaw    = 10
	resMinute = 60
	resHour   = 3600
)

// SamplerConfig paces the sampler and its retention.
type SamplerConfig struct {
	// Retention is how long snapshots are kept (WRENN_METRICS_RETENTION).
	Retention time.Duration
	// PruneEvery is the pace of retention (default 5 minutes); PruneBatch
	// the most rows one DELETE removes (default 5000), so retention never
	// holds long locks or delays a tick.
	PruneEvery time.Duration
	PruneBatch int32
	// Now is the clock (time.Now by default).
	Now func() time.Time
}

// Sampler snapshots every team's usage once per SampleInterval. It must run
// in one replica at a time (under a lease); the table's key makes a second
// sampler in the same bucket merge into the same row anyway.
type Sampler struct {
	q   *db.Queries
	cfg SamplerConfig
	log *slog.Logger
}

// NewSampler builds a sampler on conn.
func NewSampler(conn db.DBTX, cfg SamplerConfig, logger *slog.Logger) (*Sampler, error) {
	if cfg.Retention < time.Hour {
		return nil, fmt.Errorf("metrics retention %s is under an hour", cfg.Retention)
	}
	if cfg.PruneEvery <= 0 {
		cfg.PruneEvery = 5 * time.Minute
	}
	if cfg.PruneBatch <= 0 {
		cfg.PruneBatch = 5000
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Sampler{q: db.New(conn), cfg: cfg, log: logger.With("loop", "metrics-sampler")}, nil
}

// Sample writes one tick stamped at: a row per team with a running or
// paused sandbox, at each resolution. It returns the number of teams.
func (s *Sampler) Sample(ctx context.Context, at time.Time) (int, error) {
	n, err := s.q.SampleTeamUsage(ctx, at)
	if err != nil {
		return 0, fmt.Errorf("sample team usage: %w", err)
	}
	return int(n / 3), nil
}

// Prune deletes the team snapshots and sandbox samples older than now
// minus the retention, batch by batch, and returns how many it removed.
func (s *Sampler) Prune(ctx context.Context, now time.Time) (int64, error) {
	before := now.Add(-s.cfg.Retention)
	var total int64
	for _, del := range []struct {
		what string
		run  func(ctx context.Context, batch int32) (int64, error)
	}{
		{"team snapshots", func(ctx context.Context, batch int32) (int64, error) {
			return s.q.DeleteSnapshotsBefore(ctx, db.DeleteSnapshotsBeforeParams{Before: before, BatchSize: batch})
		}},
		{"sandbox samples", func(ctx context.Context, batch int32) (int64, error) {
			return s.q.DeleteSandboxSamplesBefore(ctx, db.DeleteSandboxSamplesBeforeParams{Before: before, BatchSize: batch})
		}},
	} {
		n, err := retention.Batches(ctx, s.cfg.PruneBatch, del.run)
		total += n
		if err != nil {
			return total, fmt.Errorf("delete %s before %s: %w", del.what, before.Format(time.RFC3339), err)
		}
	}
	return total, nil
}

// Run samples on every SampleInterval boundary until ctx ends, and prunes
// in its own goroutine so a long retention pass never delays a tick. A
// tick that fails is skipped (a gap in the series); an outage is logged
// once when it starts and once when it ends.
func (s *Sampler) Run(ctx context.Context) {
	done := make(chan struct{})
	go func() { defer close(done); s.pruneLoop(ctx) }()
	defer func() { <-done }()
	var out outage
	for {
		// Ticks sit on bucket boundaries, so each 10-second bucket's row is
		// written as the bucket starts and is there once it is complete.
		now := s.cfg.Now()
		next := now.Truncate(SampleInterval).Add(SampleInterval)
		select {
		case <-ctx.Done():
			return
		case <-time.After(next.Sub(now)):
		}
		_, err := s.Sample(ctx, next)
		out.report(ctx, s.log, "metrics sampler", err)
	}
}

func (s *Sampler) pruneLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.PruneEvery)
	defer t.Stop()
	var out outage
	for {
		n, err := s.Prune(ctx, s.cfg.Now())
		if n > 0 {
			s.log.DebugContext(ctx, "metrics retention removed old snapshots", "rows", n)
		}
		out.report(ctx, s.log, "metrics retention", err)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// outage logs the first failure of a run of failures and the recovery
// after it, instead of one line per tick.
type outage struct{ failing bool }

func (o *outage) report(ctx context.Context, log *slog.Logger, what string, err error) {
	switch {
	case ctx.Err() != nil:
	case err != nil && !o.failing:
		o.failing = true
		log.WarnContext(ctx, what+": failing; skipping ticks until the database answers", "err", err)
	case err == nil && o.failing:
		o.failing = false
		log.InfoContext(ctx, what+": resumed")
	}
}
