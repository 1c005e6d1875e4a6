// Package lease runs singleton loops: work that must run in one control
// plane replica at a time (the reconciler, and later the event relay, the
// metrics sampler and the build lease reaper).
//
// A lease is a row of the leases table (name, holder replica, token,
// expires_at) taken and renewed with conditional statements judged by the
// database clock. A table lease rather than a session advisory lock,
// because a frozen holder (SIGSTOP, a long GC or VM pause) keeps its TCP
// connection and so would keep an advisory lock for ever; a lease expires
// whatever the holder's state. A killed holder's lease expires after TTL;
// a holder that stops cleanly releases it at once.
//
// The holder fences itself: each renewal is valid until the local time the
// statement was sent plus TTL (never later than the database's expiry, which
// is computed after it was sent), and when that passes without a successful
// renewal the work's context is cancelled. So a holder that wakes after
// losing the lease stops its work at once, before or while another replica
// takes over. The token, bumped at every change of holder, lets work that
// needs strict fencing check it in its own statements.
package lease

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/wrenn-dev/wrenn/internal/db"
)

// NewReplicaID returns a random id for this process, distinct for each
// start, so a restarted replica never mistakes an old lease for its own.
func NewReplicaID() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	return "cp-" + hex.EncodeToString(b)
}

// Holder is who holds one lease, as the database sees it now.
type Holder struct {
	Name string `json:"-"`
	// Replica held it last; Held says it still does (not expired).
	Replica   string    `json:"replica"`
	Held      bool      `json:"held"`
	Token     int64     `json:"token"`
	ExpiresAt time.Time `json:"expires_at"`
}

// Holders lists every lease's holder, by name.
func Holders(ctx context.Context, conn db.DBTX) ([]Holder, error) {
	rows, err := db.New(conn).ListLeases(ctx)
	if err != nil {
		return nil, fmt.Errorf("list leases: %w", err)
	}
	out := make([]Holder, len(rows))
	for i, r := range rows {
		out[i] = Holder{Name: r.Name, Replica: r.Holder, Held: r.Held, Token: r.Token, ExpiresAt: r.ExpiresAt}
	}
	return out, nil
}

// Config names a lease and sets its pace.
type Config struct {
	// Name identifies the loop ("reconciler").
	Name string
	// Replica is this process's id (NewReplicaID).
	Replica string
	// Interval is the longest a dead holder's loop may stay without a
	// runner: TTL is 3/4 of it and holders renew and contenders retry every
	// quarter, so another replica takes over within one Interval.
	Interval time.Duration
}

// Lease runs work under one lease; safe for one Run at a time.
type Lease struct {
	q       *db.Queries
	cfg     Config
	ttl     time.Duration
	tick    time.Duration
	log     *slog.Logger
	mu      sync.Mutex
	leading bool
}

// New builds a lease on conn (a pool, or in tests any db.DBTX).
func New(conn db.DBTX, cfg Config, logger *slog.Logger) (*Lease, error) {
	if cfg.Name == "" || cfg.Replica == "" {
		return nil, errors.New("lease: name and replica are required")
	}
	if cfg.Interval < 40*time.Millisecond {
		return nil, fmt.Errorf("lease %s: interval %s is too short", cfg.Name, cfg.Interval)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Lease{q: db.New(conn), cfg: cfg, ttl: cfg.Interval * 3 / 4, tick: cfg.Interval / 4,
		log: logger.With("lease", cfg.Name, "replica", cfg.Replica)}, nil
}

// TTL is how long one renewal keeps the lease.
func (l *Lease) TTL() time.Duration { return l.ttl }

// Leading reports whether this replica holds the lease now.
func (l *Lease) Leading() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.leading
}

func (l *Lease) setLeading(v bool) {
	l.mu.Lock()
	l.leading = v
	l.mu.Unlock()
}

// Run contends for the lease until ctx ends; while it holds the lease, work
// runs with a context cancelled as soon as the lease may be lost. Run waits
// for work to return before contending again, and releases the lease when
// ctx ends.
func (l *Lease) Run(ctx context.Context, work func(ctx context.Context)) {
	t := time.NewTicker(l.tick)
	defer t.Stop()
	for {
		sent := time.Now()
		token, err := l.acquire(ctx)
		switch {
		case err == nil:
			l.lead(ctx, token, sent, work)
		case !errors.Is(err, pgx.ErrNoRows) && ctx.Err() == nil:
			l.log.WarnContext(ctx, "lease: cannot reach the database to contend", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (l *Lease) acquire(ctx context.Context) (int64, error) {
	actx, cancel := context.WithTimeout(ctx, l.ttl)
	defer cancel()
	return l.q.AcquireLease(actx, db.AcquireLeaseParams{Name: l.cfg.Name, Holder: l.cfg.Replica, TtlSeconds: l.ttl.Seconds()})
}

// lead runs work while renewals keep the lease valid.
func (l *Lease) lead(ctx context.Context, token int64, sent time.Time, work func(context.Context)) {
	l.setLeading(true)
	l.log.InfoContext(ctx, "lease acquired: this replica runs the loop", "token", token)
	wctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); work(wctx) }()

	validUntil := sent.Add(l.ttl)
	expiry := time.NewTimer(time.Until(validUntil))
	renew := time.NewTicker(l.tick)
	reason := "stopping"
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-expiry.C:
			reason = "lease expired before a renewal succeeded"
			break loop
		case <-renew.C:
			sent := time.Now()
			ok, err := l.renew(ctx, token, validUntil)
			if err != nil || !ok {
				if ctx.Err() != nil {
					break loop
				}
				if err == nil {
					reason = "lease taken over or expired"
					break loop
				}
				// A failed renewal keeps the lease until validUntil; the
				// next tick tries again.
				l.log.WarnContext(ctx, "lease: renewal failed", "err", err)
				continue
			}
			validUntil = sent.Add(l.ttl)
			expiry.Reset(time.Until(validUntil))
		}
	}
	renew.Stop()
	expiry.Stop()
	stop()
	<-done
	l.setLeading(false)
	if ctx.Err() != nil {
		l.release(ctx, token)
		l.log.InfoContext(ctx, "lease released", "token", token)
		return
	}
	l.log.WarnContext(ctx, "lease lost: this replica stopped the loop", "token", token, "reason", reason)
}

// renew extends the lease; the call is bounded by the current validity so a
// hung database cannot keep work running past it.
func (l *Lease) renew(ctx context.Context, token int64, validUntil time.Time) (bool, error) {
	rctx, cancel := context.WithDeadline(ctx, validUntil)
	defer cancel()
	n, err := l.q.RenewLease(rctx, db.RenewLeaseParams{Name: l.cfg.Name, Holder: l.cfg.Replica, Token: token, TtlSeconds: l.ttl.Seconds()})
	return n == 1, err
}

// release ends the lease at once so another replica need not wait for it to
// expire; best effort (on failure it expires by itself).
func (l *Lease) release(ctx context.Context, token int64) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	if err := l.q.ReleaseLease(rctx, db.ReleaseLeaseParams{Name: l.cfg.Name, Holder: l.cfg.Replica, Token: token}); err != nil {
		l.log.WarnContext(ctx, "lease: release failed; it expires by itself", "err", err)
	}
}
