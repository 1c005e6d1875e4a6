package service

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/wrenn-dev/wrenn/internal/controlplane/auth"
	"github.com/wrenn-dev/wrenn/internal/controlplane/ids"
	"github.com/wrenn-dev/wrenn/internal/db"
)

// keepAlive calls renew every third of the operation lease until stop is
// called, ctx ends, or renew reports the lease gone (false). A failed
// renewal is retried at the next tick: the lease is still valid until it
// expires, and when it does the reconciler settles the work.
func (s *Service) keepAlive(ctx context.Context, what string, renew func(ctx context.Context, ttl time.Duration) (bool, error)) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		ttl := s.limits.OperationLease
		t := time.NewTicker(ttl / 3)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			rctx, rcancel := context.WithTimeout(ctx, ttl/3)
			ok, err := renew(rctx, ttl)
			rcancel()
			switch {
			case ctx.Err() != nil:
				return
			case err != nil:
				s.log.WarnContext(ctx, "renew lease", "what", what, "err", err)
			case !ok:
				s.log.InfoContext(ctx, "lease ended by another writer", "what", what)
				return
			}
		}
	})
	return func() { cancel(); wg.Wait() }
}

// operation is a lifecycle operation recorded on a sandbox row while it
// runs; its lease is renewed until end.
type operation struct {
	s         *Service
	sandboxID string
	id        string
	stop      func()
}

// newOpID names one operation (and fences its renewals and its end).
func newOpID() string { return ids.New(ids.Operation) }

// track renews the lease of the operation recorded on the row until end.
func (s *Service) track(ctx context.Context, sandboxID, opID string) *operation {
	op := &operation{s: s, sandboxID: sandboxID, id: opID}
	op.stop = s.keepAlive(ctx, "sandbox operation "+sandboxID, func(ctx context.Context, ttl time.Duration) (bool, error) {
		n, err := s.q.RenewSandboxOp(ctx, db.RenewSandboxOpParams{ID: sandboxID, OpID: &opID, OpTtlSeconds: ttl.Seconds()})
		return n == 1, err
	})
	return op
}

// claimOp records op on the team's sandbox r, which must be in one of
// from; ctx bounds the renewals (the lifecycle context). Another operation
// in flight is a 409, unless takeOver (destroy wins over any).
func (s *Service) claimOp(ctx context.Context, a auth.AuthContext, r db.Sandbox, op Op, from []Status, takeOver bool) (db.Sandbox, *operation, error) {
	id := newOpID()
	row, err := s.q.ClaimSandboxOp(ctx, db.ClaimSandboxOpParams{Op: string(op), OpID: id, OpOwner: s.replica,
		OpTtlSeconds: s.limits.OperationLease.Seconds(), ID: r.ID, TeamID: a.TeamID, FromStatuses: StatusStrings(from), TakeOver: takeOver})
	if isNoRows(err) {
		now, lerr := s.loadSandbox(ctx, a, r.ID)
		if lerr != nil {
			return db.Sandbox{}, nil, lerr
		}
		if !slices.Contains(from, Status(now.Status)) {
			return db.Sandbox{}, nil, wrongState(now, from...)
		}
		busy := "another operation"
		if now.Op != nil {
			busy = "a " + *now.Op
		}
		return db.Sandbox{}, nil, Conflict(CodeInvalidState, fmt.Sprintf("sandbox %s has %s in progress; retry once it ends", r.ID, busy))
	}
	if err != nil {
		return db.Sandbox{}, nil, Internal("record sandbox "+string(op), err)
	}
	return row, s.track(ctx, r.ID, id), nil
}

// end stops the renewals and ends the operation if no status change has
// ended it already; best effort (an operation left recorded is settled by
// the reconciler once its lease expires).
func (o *operation) end(ctx context.Context) {
	o.stop()
	ectx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := o.s.q.EndSandboxOp(ectx, db.EndSandboxOpParams{ID: o.sandboxID, OpID: &o.id}); err != nil {
		o.s.log.WarnContext(ctx, "end sandbox operation; its lease expires by itself", "sandbox_id", o.sandboxID, "err", err)
	}
}
