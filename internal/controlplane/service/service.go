package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/wrenn-dev/wrenn/internal/controlplane/audit"
	"github.com/wrenn-dev/wrenn/internal/controlplane/auth"
	"github.com/wrenn-dev/wrenn/internal/controlplane/hosts"
	"github.com/wrenn-dev/wrenn/internal/controlplane/lease"
	"github.com/wrenn-dev/wrenn/internal/db"
	"github.com/wrenn-dev/wrenn/internal/pgtx"
)

// Limits bound what one request or team may ask for.
type Limits struct {
	MaxVCPUs          int
	MaxMemoryMB       int
	MaxTimeoutSec     int
	MaxRunningPerTeam int
	// LifecycleTimeout bounds create/pause/resume/destroy calls to an agent;
	// they run detached from the HTTP request so a client hanging up cannot
	// leave a half-made transition.
	LifecycleTimeout time.Duration
	// OperationLease is how long a lifecycle operation stays claimed
	// after its replica last renewed it (every third of it); once it
	// expires the reconciler settles the operation.
	OperationLease time.Duration
}

// DefaultLimits are used for zero fields.
var defaultLimits = Limits{MaxVCPUs: 8, MaxMemoryMB: 8192, MaxTimeoutSec: 86400, MaxRunningPerTeam: 20, LifecycleTimeout: 5 * time.Minute, OperationLease: 15 * time.Second}

// Deps are the service's collaborators.
type Deps struct {
	Pool      *pgxpool.Pool
	Hosts     *hosts.Pool
	Scheduler hosts.Scheduler
	// States writes sandbox status; nil builds one on Pool with Audit.
	States *States
	// Audit records actions; nil records with audit.New().
	Audit     *audit.Logger
	Tokens    *auth.Tokens
	Passwords auth.Passwords
	Limits    Limits
	Logger    *slog.Logger
	// Replica names this process as the owner of the operations and
	// idempotent requests it runs (empty: a new random id).
	Replica string
}

// Service is the control plane's business layer.
type Service struct {
	pool      *pgxpool.Pool
	q         *db.Queries
	states    *States
	audit     *audit.Logger
	hosts     *hosts.Pool
	scheduler hosts.Scheduler
	tokens    *auth.Tokens
	passwords auth.Passwords
	limits    Limits
	log       *slog.Logger
	dummyHash string
	replica   string
	// background counts creates answered at once (respond-async) whose
	// boot still runs.
	background sync.WaitGroup
}

// New builds the service. It does not touch the database.
func New(d Deps) (*Service, error) {
	if d.Tokens == nil {
		return nil, errors.New("service: Tokens is required")
	}
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	l := d.Limits
	if l.MaxVCPUs <= 0 {
		l.MaxVCPUs = defaultLimits.MaxVCPUs
	}
	if l.MaxMemoryMB <= 0 {
		l.MaxMemoryMB = defaultLimits.MaxMemoryMB
	}
	if l.MaxTimeoutSec <= 0 {
		l.MaxTimeoutSec = defaultLimits.MaxTimeoutSec
	}
	if l.MaxRunningPerTeam <= 0 {
		l.MaxRunningPerTeam = defaultLimits.MaxRunningPerTeam
	}
	if l.LifecycleTimeout <= 0 {
		l.LifecycleTimeout = defaultLimits.LifecycleTimeout
	}
	if l.OperationLease <= 0 {
		l.OperationLease = defaultLimits.OperationLease
	}
	if d.Replica == "" {
		d.Replica = lease.NewReplicaID()
	}
	var q *db.Queries
	if d.Pool != nil {
		q = db.New(d.Pool)
	}
	al := d.Audit
	if al == nil {
		al = audit.New()
	}
	st := d.States
	if st == nil && d.Pool != nil {
		st = NewAuditedStates(d.Pool, al, d.Logger)
	}
	hp := d.Hosts
	if hp == nil && q != nil {
		hp = hosts.NewPool(q, nil)
	}
	sch := d.Scheduler
	if sch == nil {
		sch = hosts.NewRoundRobin(hosts.Overcommit{})
	}
	dummy, err := d.Passwords.Hash("wrenn timing equalizer")
	if err != nil {
		return nil, err
	}
	return &Service{pool: d.Pool, q: q, states: st, audit: al, hosts: hp, scheduler: sch, tokens: d.Tokens, passwords: d.Passwords, limits: l, log: d.Logger, dummyHash: dummy, replica: d.Replica}, nil
}

// WaitBackground waits until the boots of creates answered at once have
// ended, or ctx ends (what is left is settled by the reconciler once its
// lease expires).
func (s *Service) WaitBackground(ctx context.Context) error {
	done := make(chan struct{})
	go func() { s.background.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("background sandbox boots still running: %w", ctx.Err())
	}
}

// Limits reports the effective limits.
func (s *Service) Limits() Limits { return s.limits }

// inTx runs fn in a transaction. A hot path that records an audit row
// (a sandbox create) calls pgtx.Run itself and queues the row on its Tail,
// so it costs no round trip.
func (s *Service) inTx(ctx context.Context, fn func(q *db.Queries) error) error {
	return pgtx.Run(ctx, s.pool, func(tx *pgtx.Tx) error { return fn(tx.Q) })
}

func isNoRows(err error) bool { return errors.Is(err, pgx.ErrNoRows) }

// IsUniqueViolation reports a unique constraint violation (a name taken).
func IsUniqueViolation(err error) bool { return isUniqueViolation(err) }

func isUniqueViolation(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505"
}

// lifecycleCtx detaches an agent lifecycle call from the request.
func (s *Service) lifecycleCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), s.limits.LifecycleTimeout)
}

func wrapDB(what string, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := AsError(err); ok {
		return err
	}
	return Internal(what, fmt.Errorf("%w", err))
}
