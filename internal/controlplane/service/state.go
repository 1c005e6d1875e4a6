package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/wrenn-dev/wrenn/internal/controlplane/audit"
	"github.com/wrenn-dev/wrenn/internal/controlplane/auth"
	"github.com/wrenn-dev/wrenn/internal/db"
	"github.com/wrenn-dev/wrenn/internal/pgtx"
)

// Status is a sandbox's state in the database. The migration's CHECK
// constraint holds the same set.
type Status string

// Sandbox states.
const (
	StatusPending Status = "pending"
	StatusRunning Status = "running"
	StatusPaused  Status = "paused"
	StatusStopped Status = "stopped"
	StatusError   Status = "error"
	StatusMissing Status = "missing"
	// StatusStopping: destroyed while its host was away; the reconciler
	// destroys the VM when the host answers and only then records stopped.
	StatusStopping Status = "stopping"
)

// AllStatuses lists every sandbox state.
func AllStatuses() []Status {
	return []Status{StatusPending, StatusRunning, StatusPaused, StatusStopped, StatusError, StatusMissing, StatusStopping}
}

// LiveStatuses are the states of a sandbox that may still hold resources on
// its host: everything but stopped and error.
func LiveStatuses() []Status {
	return []Status{StatusPending, StatusRunning, StatusPaused, StatusMissing, StatusStopping}
}

// StatusStrings converts states for SQL array parameters.
func StatusStrings(ss []Status) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = string(s)
	}
	return out
}

// ActorType says what kind of party changed a sandbox (the audit trail's).
type ActorType = audit.ActorType

const (
	ActorUser   = audit.ActorUser
	ActorAPIKey = audit.ActorAPIKey
	ActorSystem = audit.ActorSystem
)

// Actor is who caused a change: a user, an API key, or a named part of the
// control plane.
type Actor = audit.Actor

// The control plane's own actors.
var (
	// ActorReconciler records what a host agent reports.
	ActorReconciler = Actor{Type: ActorSystem, ID: "reconciler", Name: "reconciler"}
	// ActorHostMonitor reacts to a host that stopped sending heartbeats.
	ActorHostMonitor = Actor{Type: ActorSystem, ID: "host-monitor", Name: "host monitor"}
	// ActorAutoPause is the agent's idle reaper, recorded by the reconciler.
	ActorAutoPause = Actor{Type: ActorSystem, ID: "auto-pause", Name: "auto-pause"}
	// ActorChannelDispatcher delivers events to notification channels.
	ActorChannelDispatcher = Actor{Type: ActorSystem, ID: "channel-dispatcher", Name: "channel dispatcher"}
	// ActorBuildWorker runs template builds.
	ActorBuildWorker = Actor{Type: ActorSystem, ID: "build-worker", Name: "build worker"}
	// ActorAutoResume is the sandbox HTTP proxy resuming a paused sandbox
	// with auto_resume on traffic to it.
	ActorAutoResume = Actor{Type: ActorSystem, ID: "auto-resume", Name: "auto-resume"}
	// ActorBuildReaper fails builds whose worker died.
	ActorBuildReaper = Actor{Type: ActorSystem, ID: "build-reaper", Name: "build reaper"}
	// ActorSandboxEnd ends sandboxes whose end-of-life timer passed.
	ActorSandboxEnd = Actor{Type: ActorSystem, ID: "sandbox-end", Name: "end-of-life timer"}
)

// ActorOf is the actor behind an authenticated request.
func ActorOf(a auth.AuthContext) Actor {
	switch a.Method {
	case auth.MethodAPIKey:
		return Actor{Type: ActorAPIKey, ID: a.APIKeyID, Name: a.APIKeyName}
	case auth.MethodSystem:
		for _, s := range []Actor{ActorReconciler, ActorHostMonitor, ActorAutoPause, ActorChannelDispatcher, ActorBuildWorker, ActorBuildReaper, ActorSandboxEnd} {
			if s.ID == a.SystemActor {
				return s
			}
		}
		return Actor{Type: ActorSystem, ID: a.SystemActor, Name: a.SystemActor}
	}
	return Actor{Type: ActorUser, ID: a.UserID, Name: a.UserEmail}
}

// Change asks for one sandbox status change.
type Change struct {
	SandboxID string
	// TeamID, when set, restricts the change to the team's sandbox.
	TeamID string
	// From are the states the row must be in for the change to apply.
	From []Status
	// SeenUpdatedAt, when set, also requires the row to be unchanged since it
	// was read: a decision made on that read never undoes a later change.
	SeenUpdatedAt *time.Time
	To            Status
	Actor         Actor
	// Reason says why, for logs (and the audit log).
	Reason string
	// ErrorMessage, when set, replaces the message users see on the row.
	ErrorMessage *string
	// TimeoutSec, when set, replaces the idle timeout with the change.
	TimeoutSec *int32
	// EndAfterSec, when set, restarts the end-of-life timer with the change
	// (a pause stops it; see SetSandboxStatus).
	EndAfterSec *int32
}

// Transition is a change that was made.
type Transition struct {
	SandboxID string
	TeamID    string
	HostID    *string
	From, To  Status
	Actor     Actor
	Reason    string
	At        time.Time
	// Sandbox is the row after the change.
	Sandbox db.Sandbox
}

// States is the one writer of sandbox status: every change goes through
// StateTx.Change, which also writes its audit row (and so its event).
type States struct {
	pool  *pgxpool.Pool
	q     *db.Queries
	audit *audit.Logger
	log   *slog.Logger

	mu        sync.Mutex
	observers []func(Transition)
}

// Observe calls fn with every transition this process commits, after the
// commit, and with every other change of a sandbox's row that readers may
// cache (From == To: its proxy options); the sandbox HTTP proxy drops what
// it cached about the sandbox. fn must be quick and must not block.
func (s *States) Observe(fn func(Transition)) {
	s.mu.Lock()
	s.observers = append(s.observers, fn)
	s.mu.Unlock()
}

// NewStates builds the writer, recording every change in the audit trail.
func NewStates(pool *pgxpool.Pool, logger *slog.Logger) *States {
	return NewAuditedStates(pool, audit.New(), logger)
}

// NewAuditedStates builds the writer with the given audit logger.
func NewAuditedStates(pool *pgxpool.Pool, al *audit.Logger, logger *slog.Logger) *States {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &States{pool: pool, q: db.New(pool), audit: al, log: logger}
}

// StateTx is a transaction in which status changes are made, possibly
// together with other writes (a host marked unreachable with its sandboxes).
type StateTx struct {
	// Q runs other queries in the same transaction.
	Q *db.Queries
	// Tail takes the transaction's audit rows: they are sent with its
	// COMMIT (pgtx), so recording costs no round trip of its own.
	Tail *db.Queries
	// Audit records other actions of the transaction (a host marked down),
	// through Tail.
	Audit *audit.Logger
	done  []Transition
}

// InTx runs fn in one transaction and logs the transitions it made once
// they are committed.
func (s *States) InTx(ctx context.Context, fn func(tx *StateTx) error) error {
	var st *StateTx
	err := pgtx.Run(ctx, s.pool, func(tx *pgtx.Tx) error {
		st = &StateTx{Q: tx.Q, Tail: tx.Tail, Audit: s.audit}
		return fn(st)
	})
	if err != nil {
		return err
	}
	for _, t := range st.done {
		s.log.InfoContext(ctx, "sandbox state changed", "sandbox_id", t.SandboxID, "team_id", t.TeamID,
			"from", t.From, "to", t.To, "actor_type", t.Actor.Type, "actor_id", t.Actor.ID, "reason", t.Reason)
		s.notify(t)
	}
	return nil
}

// notify tells the observers about t.
func (s *States) notify(t Transition) {
	s.mu.Lock()
	observers := s.observers
	s.mu.Unlock()
	for _, fn := range observers {
		fn(t)
	}
}

// Change applies c in its own transaction. ok is false, with no error,
// when the row is not in a state c expects (another change came first).
func (s *States) Change(ctx context.Context, c Change) (t Transition, ok bool, err error) {
	err = s.InTx(ctx, func(tx *StateTx) error {
		t, ok, err = tx.Change(ctx, c)
		return err
	})
	return t, ok, err
}

// ConfirmChange records c's actor in the audit trail when the row is
// already in c.To because another writer recorded the same outcome first
// (the reconciler read the host's new state before the call that caused
// it returned): no status is written, but the action the caller asked for
// is recorded as theirs. ok is false when the row is in another state.
func (s *States) ConfirmChange(ctx context.Context, c Change) (row db.Sandbox, ok bool, err error) {
	err = s.InTx(ctx, func(tx *StateTx) error {
		row, err = tx.Q.GetSandbox(ctx, db.GetSandboxParams{ID: c.SandboxID, TeamID: c.TeamID})
		if err != nil || Status(row.Status) != c.To {
			return err
		}
		ok = true
		t := Transition{SandboxID: row.ID, TeamID: row.TeamID, HostID: row.HostID, To: c.To, Actor: c.Actor,
			Reason: c.Reason + " (recorded first by another writer)", At: row.UpdatedAt, Sandbox: row}
		if len(c.From) == 1 {
			t.From = c.From[0]
		}
		return tx.recordAudit(ctx, t)
	})
	if err != nil {
		return db.Sandbox{}, false, fmt.Errorf("confirm sandbox %s %s: %w", c.SandboxID, c.To, err)
	}
	return row, ok, nil
}

// Change is the one place a sandbox's status is written: a conditional
// UPDATE that returns the state the row left.
func (tx *StateTx) Change(ctx context.Context, c Change) (Transition, bool, error) {
	if c.To == "" || len(c.From) == 0 || c.Actor.Type == "" || c.Reason == "" {
		return Transition{}, false, fmt.Errorf("sandbox %s state change: to, from, actor and reason are required", c.SandboxID)
	}
	p := db.SetSandboxStatusParams{ID: c.SandboxID, FromStatuses: StatusStrings(c.From), ToStatus: string(c.To),
		SeenUpdatedAt: c.SeenUpdatedAt, ErrorMessage: c.ErrorMessage, TimeoutSec: c.TimeoutSec, EndAfterSec: c.EndAfterSec}
	if c.TeamID != "" {
		p.TeamID = &c.TeamID
	}
	r, err := tx.Q.SetSandboxStatus(ctx, p)
	if errors.Is(err, pgx.ErrNoRows) {
		return Transition{}, false, nil
	}
	if err != nil {
		return Transition{}, false, fmt.Errorf("set sandbox %s %s: %w", c.SandboxID, c.To, err)
	}
	t := Transition{SandboxID: r.Sandbox.ID, TeamID: r.Sandbox.TeamID, HostID: r.Sandbox.HostID,
		From: Status(r.FromStatus), To: c.To, Actor: c.Actor, Reason: c.Reason, At: r.Sandbox.UpdatedAt, Sandbox: r.Sandbox}
	if err := tx.recordAudit(ctx, t); err != nil {
		return Transition{}, false, err
	}
	tx.done = append(tx.done, t)
	return t, true, nil
}

// recordAudit writes t's audit row in t's transaction: the one mapping from a
// status change to its event.
func (tx *StateTx) recordAudit(ctx context.Context, t Transition) error {
	c := audit.SandboxChange{Sandbox: t.Sandbox, From: string(t.From), Reason: t.Reason}
	record := tx.Audit.SandboxDestroyed
	switch {
	case t.To == StatusRunning && t.From == StatusPaused:
		record = tx.Audit.SandboxResumed
	case t.To == StatusRunning:
		record = tx.Audit.SandboxRunning
	case t.To == StatusPaused && t.Actor == ActorAutoPause:
		record = tx.Audit.SandboxAutoPaused
	case t.To == StatusPaused:
		record = tx.Audit.SandboxPaused
	case t.To == StatusError:
		record = tx.Audit.SandboxError
	case t.To == StatusMissing:
		record = tx.Audit.SandboxMissing
	case t.To == StatusStopped || t.To == StatusStopping:
	default:
		return fmt.Errorf("sandbox %s state change to %s: no audit event for it", t.SandboxID, t.To)
	}
	return record(ctx, tx.Tail, t.Actor, c)
}
