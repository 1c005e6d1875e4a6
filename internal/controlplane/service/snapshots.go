package service

import (
	"context"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/controlplane/auth"
	"github.com/wrenn-dev/wrenn/internal/controlplane/ids"
	"github.com/wrenn-dev/wrenn/internal/db"
	"github.com/wrenn-dev/wrenn/internal/names"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// Snapshot is a team's snapshot template.
type Snapshot struct {
	Name      string    `json:"name"`
	ID        string    `json:"id"`
	VCPUs     int32     `json:"vcpus"`
	MemoryMB  int32     `json:"memory_mb"`
	SizeBytes int64     `json:"size_bytes"`
	CreatedAt time.Time `json:"created_at"`
}

func toSnapshot(t db.Template) Snapshot {
	return Snapshot{Name: t.Name, ID: t.ID, VCPUs: t.Vcpus, MemoryMB: t.MemoryMb, SizeBytes: t.SizeBytes, CreatedAt: t.CreatedAt}
}

// SnapshotInput is POST /v1/snapshots.
type SnapshotInput struct {
	SandboxID string `json:"sandbox_id"`
	Name      string `json:"name"`
}

// CheckSnapshotName validates a snapshot name: the template-name rule the
// agent applies too.
func CheckSnapshotName(name string) error {
	if name == "" {
		return Invalid("name", "name is required")
	}
	if !names.ValidTemplate(name) {
		return Invalid("name", "name must be %s", names.TemplateRule)
	}
	return nil
}

// CreateSnapshot saves a running or paused sandbox as a template that new
// sandboxes can start from. The agent stores it under the template's ID.
func (s *Service) CreateSnapshot(ctx context.Context, a auth.AuthContext, in SnapshotInput) (Snapshot, error) {
	return s.CreateSnapshotAs(ctx, a, in, "")
}

// CreateSnapshotAs is CreateSnapshot under a template ID chosen before the
// call began (an idempotent request's; empty: a new one). A snapshot of
// the team with that ID already made is returned instead of a second one.
func (s *Service) CreateSnapshotAs(ctx context.Context, a auth.AuthContext, in SnapshotInput, tplID string) (Snapshot, error) {
	if in.SandboxID == "" {
		return Snapshot{}, Invalid("sandbox_id", "sandbox_id is required")
	}
	if err := CheckSnapshotName(in.Name); err != nil {
		return Snapshot{}, err
	}
	if tplID == "" {
		tplID = ids.New(ids.Template)
	} else if t, err := s.q.GetSnapshot(ctx, db.GetSnapshotParams{TeamID: &a.TeamID, Name: in.Name}); err == nil && t.ID == tplID {
		return toSnapshot(t), nil
	}
	sb, err := s.loadSandbox(ctx, a, in.SandboxID)
	if err != nil {
		return Snapshot{}, err
	}
	if st := Status(sb.Status); st != StatusRunning && st != StatusPaused {
		return Snapshot{}, wrongState(sb, StatusRunning, StatusPaused)
	}
	if _, err := s.q.GetTemplateByName(ctx, db.GetTemplateByNameParams{Name: in.Name, TeamID: &a.TeamID}); err == nil {
		return Snapshot{}, &Error{Kind: CodeNameTaken.Kind(), Code: CodeNameTaken, Field: "name", Message: "a template or snapshot with this name exists"}
	} else if !isNoRows(err) {
		return Snapshot{}, Internal("create snapshot", err)
	}
	c, err := s.client(ctx, sb)
	if err != nil {
		return Snapshot{}, err
	}
	lctx, cancel := s.lifecycleCtx(ctx)
	defer cancel()
	sb, op, err := s.claimOp(lctx, a, sb, OpSnapshot, []Status{StatusRunning, StatusPaused}, false)
	if err != nil {
		return Snapshot{}, err
	}
	defer op.end(lctx)
	resp, err := c.CreateSnapshot(lctx, connect.NewRequest(&pb.CreateSnapshotRequest{SandboxId: sb.ID, Name: tplID}))
	if err != nil {
		return Snapshot{}, FromAgent("snapshot the sandbox", err)
	}
	// The agent may have paused or stopped the sandbox to snapshot it.
	s.syncFromAgent(lctx, a, c, sb)
	vcpus, mem := sb.Vcpus, sb.MemoryMb
	if resp.Msg.GetVcpus() > 0 {
		vcpus, mem = int32(resp.Msg.GetVcpus()), int32(resp.Msg.GetMemoryMb())
	}
	var t db.Template
	err = s.inTx(lctx, func(q *db.Queries) error {
		t, err = q.InsertSnapshotTemplate(lctx, db.InsertSnapshotTemplateParams{ID: tplID, TeamID: &a.TeamID, Name: in.Name, Vcpus: vcpus, MemoryMb: mem, DiskMb: sb.DiskMb, SizeBytes: resp.Msg.GetSizeBytes(), HostID: sb.HostID})
		if err != nil {
			return err
		}
		return s.audit.SnapshotCreated(lctx, q, ActorOf(a), a.TeamID, t, sb.ID)
	})
	if err != nil {
		if _, derr := c.DeleteSnapshot(lctx, connect.NewRequest(&pb.DeleteSnapshotRequest{Name: tplID})); derr != nil {
			s.log.WarnContext(ctx, "drop unrecorded snapshot", "template_id", tplID, "err", derr)
		}
		if isUniqueViolation(err) {
			return Snapshot{}, &Error{Kind: CodeNameTaken.Kind(), Code: CodeNameTaken, Field: "name", Message: "a template or snapshot with this name exists"}
		}
		return Snapshot{}, Internal("record snapshot", err)
	}
	return toSnapshot(t), nil
}

// syncFromAgent records the state the agent reports for a sandbox, by the
// reconciler's mapping.
func (s *Service) syncFromAgent(ctx context.Context, a auth.AuthContext, c interface {
	GetSandbox(context.Context, *connect.Request[pb.GetSandboxRequest]) (*connect.Response[pb.GetSandboxResponse], error)
}, sb db.Sandbox) {
	resp, err := c.GetSandbox(ctx, connect.NewRequest(&pb.GetSandboxRequest{SandboxId: sb.ID}))
	var view AgentView
	switch {
	case connect.CodeOf(err) == connect.CodeNotFound:
	case err != nil:
		s.log.WarnContext(ctx, "read sandbox state after snapshot", "sandbox_id", sb.ID, "err", err)
		return
	default:
		view = Listed(resp.Msg.GetSandbox().GetState())
	}
	// The snapshot's own operation is ended by this change, not settled.
	d := Reconcile(RowOf(Status(sb.Status)), view)
	if d.To == "" {
		return
	}
	// The snapshot request made the agent change it.
	ch := d.Change(sb)
	ch.Actor, ch.Reason = ActorOf(a), "snapshot: "+d.Reason
	if _, _, err := s.states.Change(ctx, ch); err != nil {
		s.log.WarnContext(ctx, "record sandbox state after snapshot", "sandbox_id", sb.ID, "err", err)
	}
}

// ListSnapshots lists the team's snapshots, newest first.
func (s *Service) ListSnapshots(ctx context.Context, a auth.AuthContext) ([]Snapshot, error) {
	rows, err := s.q.ListSnapshots(ctx, &a.TeamID)
	if err != nil {
		return nil, Internal("list snapshots", err)
	}
	out := make([]Snapshot, 0, len(rows))
	for _, r := range rows {
		out = append(out, toSnapshot(r))
	}
	return out, nil
}

// DeleteSnapshot removes a snapshot from every online host and then from
// the database. A snapshot that live sandboxes were started from stays.
func (s *Service) DeleteSnapshot(ctx context.Context, a auth.AuthContext, name string) error {
	if err := CheckSnapshotName(name); err != nil {
		return NotFound(CodeSnapshotNotFound, "snapshot not found")
	}
	t, err := s.q.GetSnapshot(ctx, db.GetSnapshotParams{TeamID: &a.TeamID, Name: name})
	if isNoRows(err) {
		return NotFound(CodeSnapshotNotFound, "snapshot not found")
	}
	if err != nil {
		return Internal("delete snapshot", err)
	}
	n, err := s.q.CountTemplateUsers(ctx, db.CountTemplateUsersParams{TeamID: a.TeamID, Template: name})
	if err != nil {
		return Internal("delete snapshot", err)
	}
	if n > 0 {
		return Conflict(CodeSnapshotInUse, "sandboxes started from this snapshot still exist; destroy them first")
	}
	hs, err := s.q.ListAllOnlineHosts(ctx)
	if err != nil {
		return Internal("delete snapshot", err)
	}
	// Templates have no host: every online host is asked to drop it.
	for _, h := range hs {
		_, err := s.hosts.ForHost(h).DeleteSnapshot(ctx, connect.NewRequest(&pb.DeleteSnapshotRequest{Name: t.ID}))
		if err != nil && connect.CodeOf(err) != connect.CodeNotFound {
			return FromAgent("delete the snapshot on host "+h.ID, err)
		}
	}
	err = s.inTx(ctx, func(q *db.Queries) error {
		n, err := q.DeleteSnapshot(ctx, db.DeleteSnapshotParams{TeamID: &a.TeamID, Name: name})
		if err != nil || n == 0 {
			return err
		}
		return s.audit.SnapshotDeleted(ctx, q, ActorOf(a), a.TeamID, t)
	})
	if err != nil {
		return Internal("delete snapshot", err)
	}
	return nil
}
