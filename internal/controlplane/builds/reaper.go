package builds

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
	"github.com/wrenn-dev/wrenn/internal/db"
)

// ReapInterval is how often the reaper looks for builds whose worker died.
const ReapInterval = 5 * time.Second

// Reap runs the reaper until ctx ends. It must run in one replica at a
// time (a singleton loop under the "build-reaper" lease).
func (s *Service) Reap(ctx context.Context) {
	t := time.NewTicker(ReapInterval)
	defer t.Stop()
	for {
		if err := s.ReapOnce(ctx); err != nil && ctx.Err() == nil {
			s.log.WarnContext(ctx, "build reaper", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// ReapOnce handles running builds whose worker stopped renewing its lease
// (its control plane died or lost the database): the build sandbox left
// behind is destroyed, and the build is retried from the start once, then
// failed with the reason. Queued builds nobody took for a while are pushed
// on the queue again (their entry may have been lost with Redis).
func (s *Service) ReapOnce(ctx context.Context) error {
	var expired []db.TemplateBuild
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		q := s.q.WithTx(tx)
		rows, err := q.ExpiredBuilds(ctx)
		if err != nil {
			return err
		}
		for _, b := range rows {
			reason := fmt.Sprintf("attempt %d: its worker %s stopped renewing its lease (the control plane stopped or lost the database)", b.Attempts, b.Worker)
			var r db.TemplateBuild
			if b.Attempts < maxAttempts {
				r, err = q.RequeueBuild(ctx, db.RequeueBuildParams{ID: b.ID, Reason: reason + "; retrying from the start"})
			} else {
				if r, err = q.FailExpiredBuild(ctx, db.FailExpiredBuildParams{ID: b.ID, Reason: reason + "; not retried again"}); err == nil {
					err = s.audit.TemplateBuildFailed(ctx, q, service.ActorBuildReaper, r)
				}
			}
			if err != nil {
				return err
			}
			r.SandboxID = b.SandboxID // the one left behind
			expired = append(expired, r)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("reap expired builds: %w", err)
	}
	for _, b := range expired {
		if b.SandboxID != nil {
			bl := &builder{s: s, b: b, a: actorOf(b), sandbox: *b.SandboxID}
			bl.destroySandbox(ctx)
		}
		if Status(b.Status) == StatusQueued {
			s.log.WarnContext(ctx, "template build retried: its worker died", "build_id", b.ID, "reason", b.ErrorMessage)
			if err := s.rdb.RPush(ctx, QueueKey, b.ID).Err(); err != nil {
				s.log.WarnContext(ctx, "queue retried build", "build_id", b.ID, "err", err)
			}
			continue
		}
		_ = s.q.DeleteBuildArchive(ctx, b.ID)
		s.publish(ctx, b.ID, Event{Type: "end", Status: StatusFailed})
	}
	stale, err := s.q.StaleQueuedBuilds(ctx, 30)
	if err != nil {
		return fmt.Errorf("find stale queued builds: %w", err)
	}
	for _, id := range stale {
		if err := s.rdb.RPush(ctx, QueueKey, id).Err(); err != nil {
			return fmt.Errorf("queue stale build: %w", err)
		}
	}
	return nil
}
