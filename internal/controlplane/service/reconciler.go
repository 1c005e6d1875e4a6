package service

import (
	"context"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/db"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// RunReconciler compares the database with every online host's live list
// each interval until ctx ends.
func (s *Service) RunReconciler(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.ReconcileOnce(ctx)
		}
	}
}

// ReconcileResult counts what one pass changed.
type ReconcileResult struct {
	Paused, Stopped, Running, Errored int
	HostsFailed                       int
}

// ReconcileOnce runs one pass. For each online host it reads the database
// rows first and the agent's list second; every fix is conditional on the
// row being unchanged since it was read, so a transition that happened in
// between is never undone.
func (s *Service) ReconcileOnce(ctx context.Context) ReconcileResult {
	var res ReconcileResult
	hs, err := s.q.ListAllOnlineHosts(ctx)
	if err != nil {
		s.log.WarnContext(ctx, "reconcile: list hosts", "err", err)
		return res
	}
	for _, h := range hs {
		rows, err := s.q.ListHostSandboxes(ctx, &h.ID)
		if err != nil {
			s.log.WarnContext(ctx, "reconcile: list sandboxes", "host_id", h.ID, "err", err)
			continue
		}
		if len(rows) == 0 {
			continue
		}
		callCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		resp, err := s.hosts.ForHost(h).ListSandboxes(callCtx, connect.NewRequest(&pb.ListSandboxesRequest{}))
		cancel()
		if err != nil {
			// Host health is the host monitor's job; skip this host.
			s.log.WarnContext(ctx, "reconcile: list agent sandboxes", "host_id", h.ID, "err", err)
			res.HostsFailed++
			continue
		}
		live := map[string]pb.SandboxState{}
		active := map[string]time.Time{}
		for _, sb := range resp.Msg.GetSandboxes() {
			live[sb.GetSandboxId()] = sb.GetState()
			if sb.GetLastActiveAt() != nil {
				active[sb.GetSandboxId()] = sb.GetLastActiveAt().AsTime()
			}
		}
		for _, id := range resp.Msg.GetAutoPausedSandboxIds() {
			live[id] = pb.SandboxState_SANDBOX_STATE_AUTO_PAUSED
		}
		for _, r := range rows {
			to := reconcileTarget(r.Status, live, r.ID)
			if to == "" {
				s.syncActivity(ctx, r, active)
				continue
			}
			n, err := s.q.ReconcileSandbox(ctx, db.ReconcileSandboxParams{ID: r.ID, FromStatus: r.Status, ToStatus: to, SeenUpdatedAt: r.UpdatedAt})
			if err != nil {
				s.log.WarnContext(ctx, "reconcile: update sandbox", "sandbox_id", r.ID, "err", err)
				continue
			}
			if n == 0 {
				continue
			}
			s.log.InfoContext(ctx, "reconciled sandbox", "sandbox_id", r.ID, "from", r.Status, "to", to, "host_id", h.ID)
			switch to {
			case StatusPaused:
				res.Paused++
			case StatusStopped:
				res.Stopped++
			case StatusRunning:
				res.Running++
			case StatusError:
				res.Errored++
			}
		}
	}
	return res
}

// reconcileTarget is the state a row should move to given the agent's view,
// or "" to leave it.
func reconcileTarget(status string, live map[string]pb.SandboxState, id string) string {
	st, ok := live[id]
	if !ok {
		return StatusStopped // gone from its host
	}
	switch st {
	case pb.SandboxState_SANDBOX_STATE_AUTO_PAUSED, pb.SandboxState_SANDBOX_STATE_PAUSED:
		if status == StatusRunning || status == StatusMissing {
			return StatusPaused
		}
	case pb.SandboxState_SANDBOX_STATE_RUNNING:
		if status == StatusMissing {
			return StatusRunning
		}
	case pb.SandboxState_SANDBOX_STATE_DEAD:
		if status != StatusError {
			return StatusError
		}
	case pb.SandboxState_SANDBOX_STATE_STOPPED:
		return StatusStopped
	}
	return ""
}

// syncActivity copies the agent's last-activity time of a running sandbox
// into its row when it is newer.
func (s *Service) syncActivity(ctx context.Context, r db.Sandbox, active map[string]time.Time) {
	at, ok := active[r.ID]
	if !ok || r.Status != StatusRunning || (r.LastActiveAt != nil && !at.After(*r.LastActiveAt)) {
		return
	}
	if _, err := s.q.SyncSandboxActivity(ctx, db.SyncSandboxActivityParams{ID: r.ID, LastActiveAt: &at}); err != nil {
		s.log.WarnContext(ctx, "reconcile: record activity", "sandbox_id", r.ID, "err", err)
	}
}
