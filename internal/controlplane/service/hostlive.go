package service

import (
	"context"

	"github.com/wrenn-dev/wrenn/internal/controlplane/hosts"
	"github.com/wrenn-dev/wrenn/internal/db"
)

// HostAnswered records that a host's agent answered (its heartbeat, or the
// reconciler reaching it): the host is online, and if it was unreachable
// the audit trail says it is marked up, once, whichever path saw it first.
// back reports that change. pgx.ErrNoRows: the host is gone or pending.
func (tx *StateTx) HostAnswered(ctx context.Context, p db.HeartbeatHostParams, a Actor) (h db.Host, back bool, err error) {
	prev, err := tx.Q.LockHostStatus(ctx, p.ID)
	if err != nil {
		return db.Host{}, false, err
	}
	if h, err = tx.Q.HeartbeatHost(ctx, p); err != nil {
		return db.Host{}, false, err
	}
	if prev != hosts.StatusUnreachable {
		return h, false, nil
	}
	return h, true, tx.Audit.HostMarkedUp(ctx, tx.Tail, a, h)
}
