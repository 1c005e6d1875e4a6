// Package pgtx runs PostgreSQL transactions whose last writes travel with
// their COMMIT.
//
// A write nothing in the transaction reads back (an audit row and its
// event) need not cost a round trip of its own: queued on Tx.Tail, it is
// sent in one pipeline with the COMMIT, so it commits or fails with the
// transaction exactly as if it had run in place, for the price of its
// execution alone. On a busy control plane the round trip, not the row,
// is most of what such a write costs.
package pgtx

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/wrenn-dev/wrenn/internal/db"
)

// Tx is a transaction in progress.
type Tx struct {
	// Q runs statements now, in the transaction.
	Q *db.Queries
	// Tail queues writes that run just before COMMIT, in the same round
	// trip. Only writes without results (sqlc :exec) may go here: a read
	// through Tail fails.
	Tail *db.Queries
}

// Run runs fn in a transaction on a connection of pool and commits it,
// with the writes queued on Tail, when fn returns nil. Any error, or a
// panic, rolls it back.
func Run(ctx context.Context, pool *pgxpool.Pool, fn func(tx *Tx) error) (err error) {
	c, err := pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("acquire a database connection: %w", err)
	}
	// A connection left inside a transaction (a failed rollback) is
	// destroyed by Release instead of going back to the pool.
	defer c.Release()
	if _, err := c.Exec(ctx, "begin"); err != nil {
		return fmt.Errorf("begin a transaction: %w", err)
	}
	tail := &tail{}
	committed := false
	defer func() {
		if !committed {
			rollback(ctx, c)
		}
	}()
	if err := fn(&Tx{Q: db.New(c), Tail: db.New(tail)}); err != nil {
		return err
	}
	if err := commit(ctx, c, &tail.batch); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	committed = true
	return nil
}

// commit sends the queued writes and COMMIT in one round trip.
func commit(ctx context.Context, c *pgxpool.Conn, queued *pgx.Batch) error {
	if queued.Len() == 0 {
		ct, err := c.Exec(ctx, "commit")
		if err != nil {
			return err
		}
		return committedTag(ct)
	}
	queued.Queue("commit").Exec(committedTag)
	return c.SendBatch(ctx, queued).Close()
}

// committedTag tells a COMMIT from the ROLLBACK that COMMIT answers in a
// transaction an earlier statement aborted (when fn went on after that
// statement's failure).
func committedTag(ct pgconn.CommandTag) error {
	if ct.String() == "ROLLBACK" {
		return pgx.ErrTxCommitRollback
	}
	return nil
}

// rollback ends a transaction that will not commit. It runs even when ctx
// is done (a cancelled request), bounded by its own timeout.
func rollback(ctx context.Context, c *pgxpool.Conn) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_, _ = c.Exec(ctx, "rollback")
}

// errTailRead is what a read through Tail answers.
var errTailRead = errors.New("pgtx: Tail only queues writes; read through Q")

// tail is the DBTX behind Tx.Tail: it queues what it is asked to execute.
type tail struct{ batch pgx.Batch }

func (t *tail) Exec(_ context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	t.batch.Queue(sql, args...)
	return pgconn.CommandTag{}, nil
}

func (t *tail) Query(context.Context, string, ...any) (pgx.Rows, error) { return nil, errTailRead }

func (t *tail) QueryRow(context.Context, string, ...any) pgx.Row { return errRow{} }

type errRow struct{}

func (errRow) Scan(...any) error { return errTailRead }
