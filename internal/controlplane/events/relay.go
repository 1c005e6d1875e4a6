package events

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wrenn-dev/wrenn/internal/db"
)

// RelayConfig sets the relay's pace.
type RelayConfig struct {
	// MaxLen caps the stream, approximately (XADD MAXLEN ~): older entries
	// are trimmed once consumers have had time to read them.
	MaxLen int64
	// Batch is how many events one round trip publishes (default 500).
	Batch int
	// Poll is how long an empty outbox waits before it is read again
	// (default 200 ms); a full batch is followed at once by the next.
	Poll time.Duration
	// MaxBackoff bounds the wait after a failure (default 5 s).
	MaxBackoff time.Duration
}

// Relay publishes committed events from the outbox to the stream, in outbox
// order, and removes them once Redis has them: at least once, since a
// relay stopped between the two publishes them again. Run it under a lease
// so one replica relays at a time.
type Relay struct {
	q   *db.Queries
	rdb redis.Cmdable
	cfg RelayConfig
	log *slog.Logger
}

// NewRelay builds a relay reading the outbox through conn.
func NewRelay(conn db.DBTX, rdb redis.Cmdable, cfg RelayConfig, logger *slog.Logger) *Relay {
	if cfg.MaxLen <= 0 {
		cfg.MaxLen = 100_000
	}
	if cfg.Batch <= 0 {
		cfg.Batch = 500
	}
	if cfg.Poll <= 0 {
		cfg.Poll = 200 * time.Millisecond
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 5 * time.Second
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Relay{q: db.New(conn), rdb: rdb, cfg: cfg, log: logger.With("loop", "event relay")}
}

// Backlog is how many committed events wait to be published (/health).
func (r *Relay) Backlog(ctx context.Context) (int64, error) {
	n, err := r.q.CountUnpublishedEvents(ctx)
	if err != nil {
		return 0, fmt.Errorf("count unpublished events: %w", err)
	}
	return n, nil
}

// Run relays until ctx ends. While Redis or PostgreSQL fail, the events
// wait in the outbox and Run retries with a growing pause.
func (r *Relay) Run(ctx context.Context) {
	backoff := time.Duration(0)
	for ctx.Err() == nil {
		n, err := r.PublishBatch(ctx)
		wait := time.Duration(0)
		switch {
		case err != nil && ctx.Err() == nil:
			backoff = min(max(2*backoff, r.cfg.Poll), r.cfg.MaxBackoff)
			wait = backoff
			r.log.WarnContext(ctx, "event relay: publish failed; events wait in the outbox", "err", err, "retry_in", wait)
		case err == nil:
			backoff = 0
			if n < r.cfg.Batch {
				wait = r.cfg.Poll
			}
		}
		if wait > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(wait):
			}
		}
	}
}

// PublishBatch publishes up to one batch of the oldest events and returns
// how many it published.
func (r *Relay) PublishBatch(ctx context.Context) (int, error) {
	rows, err := r.q.ListUnpublishedEvents(ctx, int32(r.cfg.Batch))
	if err != nil {
		return 0, fmt.Errorf("read the outbox: %w", err)
	}
	if len(rows) == 0 {
		return 0, nil
	}
	seqs := make([]int64, len(rows))
	// MULTI/EXEC: the batch lands whole or not at all, so a retry never
	// puts a later event in front of an earlier one that failed.
	_, err = r.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		for i, row := range rows {
			body, err := json.Marshal(FromAuditLog(row.AuditLog))
			if err != nil {
				return fmt.Errorf("encode event %s: %w", row.AuditLog.EventID, err)
			}
			seqs[i] = row.Seq
			p.XAdd(ctx, &redis.XAddArgs{Stream: StreamKey, MaxLen: r.cfg.MaxLen, Approx: true, Values: []any{Field, body}})
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("publish %d events to %s: %w", len(rows), StreamKey, err)
	}
	if _, err := r.q.MarkEventsPublished(ctx, seqs); err != nil {
		// They are on the stream and will be sent again: at least once.
		return 0, fmt.Errorf("mark %d events published: %w", len(rows), err)
	}
	return len(rows), nil
}
