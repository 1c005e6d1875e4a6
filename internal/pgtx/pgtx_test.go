package pgtx

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/wrenn-dev/wrenn/internal/db"
	"github.com/wrenn-dev/wrenn/internal/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

// onePool is a pool of one connection, so every Run reuses the connection
// the previous one left: a transaction left open would show in the next.
func onePool(t *testing.T) *pgxpool.Pool {
	t.Helper()
	_, url := testenv.MigratedPool(t)
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 1
	pool, err := pgxpool.NewWithConfig(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

func auditRow(id, actorType string) db.InsertAuditLogParams {
	return db.InsertAuditLogParams{ID: id, EventID: "evt-" + id, ActorType: actorType, ActorID: "usr-1", ResourceType: "team",
		ResourceID: "team-1", Action: "created", Scope: "team", Status: "success", Metadata: json.RawMessage(`{}`)}
}

// The transaction's writes and its tail land together or not at all, and
// the connection goes back to the pool outside any transaction whatever
// happened.
func TestRun(t *testing.T) {
	pool := onePool(t)
	q := db.New(pool)
	errFn := errors.New("fn failed")
	tests := []struct {
		name    string
		fn      func(ctx context.Context, tx *Tx) error
		wantErr func(error) bool
		landed  bool
	}{
		{"commits both", func(ctx context.Context, tx *Tx) error {
			if _, err := tx.Q.CreateTeam(ctx, db.CreateTeamParams{ID: "team-a", Name: "a"}); err != nil {
				return err
			}
			return tx.Tail.InsertAuditLog(ctx, auditRow("log-a", "user"))
		}, nil, true},
		{"fn fails: neither", func(ctx context.Context, tx *Tx) error {
			if _, err := tx.Q.CreateTeam(ctx, db.CreateTeamParams{ID: "team-b", Name: "b"}); err != nil {
				return err
			}
			if err := tx.Tail.InsertAuditLog(ctx, auditRow("log-b", "user")); err != nil {
				return err
			}
			return errFn
		}, func(err error) bool { return errors.Is(err, errFn) }, false},
		{"a tail write fails: neither", func(ctx context.Context, tx *Tx) error {
			if _, err := tx.Q.CreateTeam(ctx, db.CreateTeamParams{ID: "team-c", Name: "c"}); err != nil {
				return err
			}
			// Violates the actor type check, so it fails only at commit.
			return tx.Tail.InsertAuditLog(ctx, auditRow("log-c", "robot"))
		}, func(err error) bool { return err != nil }, false},
		{"a swallowed statement error aborts it", func(ctx context.Context, tx *Tx) error {
			_, _ = tx.Q.CreateTeam(ctx, db.CreateTeamParams{ID: "team-a", Name: "again"}) // duplicate key
			return nil
		}, func(err error) bool { return errors.Is(err, pgx.ErrTxCommitRollback) }, false},
		{"a swallowed statement error with a tail", func(ctx context.Context, tx *Tx) error {
			_, _ = tx.Q.CreateTeam(ctx, db.CreateTeamParams{ID: "team-a", Name: "again"})
			return tx.Tail.InsertAuditLog(ctx, auditRow("log-e", "user"))
		}, func(err error) bool { return err != nil }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := t.Context()
			err := Run(ctx, pool, func(tx *Tx) error { return tt.fn(ctx, tx) })
			if tt.wantErr == nil && err != nil || tt.wantErr != nil && !tt.wantErr(err) {
				t.Fatalf("Run = %v", err)
			}
			var logs int
			if err := pool.QueryRow(ctx, "SELECT count(*) FROM audit_logs").Scan(&logs); err != nil {
				t.Fatal(err)
			}
			var teams int
			if err := pool.QueryRow(ctx, "SELECT count(*) FROM teams WHERE id <> 'team-a'").Scan(&teams); err != nil {
				t.Fatal(err)
			}
			if want := 1; logs != want || teams != 0 {
				t.Fatalf("after %q: %d audit rows, %d other teams; want %d and 0", tt.name, logs, teams, want)
			}
			if _, err := q.GetTeam(ctx, "team-a"); err != nil {
				t.Fatalf("the first case's team: %v", err)
			}
		})
	}
}

// A panic in fn rolls back and reaches the caller; a read through Tail is
// refused rather than answered from nowhere.
func TestRunPanicAndTailRead(t *testing.T) {
	pool := onePool(t)
	ctx := t.Context()
	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("the panic did not reach the caller")
			}
		}()
		_ = Run(ctx, pool, func(tx *Tx) error {
			if _, err := tx.Q.CreateTeam(ctx, db.CreateTeamParams{ID: "team-p", Name: "p"}); err != nil {
				return err
			}
			panic("boom")
		})
	}()
	err := Run(ctx, pool, func(tx *Tx) error {
		if _, err := tx.Tail.GetTeam(ctx, "team-p"); !errors.Is(err, errTailRead) {
			t.Errorf("read through Tail = %v", err)
		}
		_, err := tx.Q.GetTeam(ctx, "team-p")
		return err
	})
	if !errors.Is(err, pgx.ErrNoRows) {
		t.Fatalf("the panicking transaction's team: %v, want none", err)
	}
}
