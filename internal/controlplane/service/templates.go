package service

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/controlplane/auth"
	"github.com/wrenn-dev/wrenn/internal/db"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// Template is a template a team may start sandboxes from.
type Template struct {
	Name string `json:"name"`
	// Kind: image boots a root filesystem, snapshot restores memory and disk.
	Kind string `json:"kind"`
	// Scope: builtin (every host has it), platform (built by an admin's
	// build) or team (the team's own snapshot).
	Scope     string    `json:"scope"`
	VCPUs     int32     `json:"vcpus"`
	MemoryMB  int32     `json:"memory_mb"`
	DiskMB    int32     `json:"disk_mb"`
	SizeBytes int64     `json:"size_bytes"`
	BuildID   *string   `json:"build_id"`
	CreatedAt time.Time `json:"created_at"`
	// Defaults for new sandboxes and their execs (a build's ENV, WORKDIR
	// and USER); env shows names only.
	EnvNames []string `json:"env_names"`
	Workdir  string   `json:"workdir"`
	User     string   `json:"user"`
}

func toTemplate(t db.Template) Template {
	env := map[string]string{}
	_ = json.Unmarshal(t.Env, &env)
	names := make([]string, 0, len(env))
	for k := range env {
		names = append(names, k)
	}
	slices.Sort(names)
	scope := "builtin"
	switch {
	case t.TeamID != nil:
		scope = "team"
	case t.BuildID != nil:
		scope = "platform"
	}
	return Template{Name: t.Name, Kind: t.Kind, Scope: scope, VCPUs: t.Vcpus, MemoryMB: t.MemoryMb, DiskMB: t.DiskMb,
		SizeBytes: t.SizeBytes, BuildID: t.BuildID, CreatedAt: t.CreatedAt, EnvNames: names, Workdir: t.Workdir, User: t.DefaultUser}
}

// ListTemplates lists what the caller's team may start: built-in and
// platform-built templates and its own snapshots (a team's template
// shadows a platform one of the same name, as in CreateSandbox).
func (s *Service) ListTemplates(ctx context.Context, a auth.AuthContext) ([]Template, error) {
	rows, err := s.q.ListTemplates(ctx, &a.TeamID)
	if err != nil {
		return nil, Internal("list templates", err)
	}
	own := map[string]bool{}
	for _, r := range rows {
		if r.TeamID != nil {
			own[r.Name] = true
		}
	}
	out := make([]Template, 0, len(rows))
	for _, r := range rows {
		if r.TeamID == nil && own[r.Name] {
			continue
		}
		out = append(out, toTemplate(r))
	}
	return out, nil
}

// RequireAdmin refuses callers that are not platform admins.
func RequireAdmin(a auth.AuthContext) error {
	if !a.IsAdmin {
		return Forbidden(CodeAdminRequired, "only platform admins may do this")
	}
	return nil
}

// DeleteTemplate removes a platform-built template from its host and the
// database; refused while live sandboxes use it, and for built-in images
// (those belong to `wrenn images`).
func (s *Service) DeleteTemplate(ctx context.Context, a auth.AuthContext, name string) (Template, error) {
	if err := RequireAdmin(a); err != nil {
		return Template{}, err
	}
	notFound := NotFound(CodeTemplateNotFound, "template not found")
	if CheckSnapshotName(name) != nil {
		return Template{}, notFound
	}
	t, err := s.q.GetPlatformTemplate(ctx, name)
	if isNoRows(err) {
		return Template{}, notFound
	}
	if err != nil {
		return Template{}, Internal("delete template", err)
	}
	if t.BuildID == nil {
		return Template{}, Conflict(CodeTemplateBuiltin, fmt.Sprintf("%q is a built-in image; it is managed with `wrenn images`", name))
	}
	n, err := s.q.CountPlatformTemplateUsers(ctx, name)
	if err != nil {
		return Template{}, Internal("delete template", err)
	}
	if n > 0 {
		return Template{}, Conflict(CodeTemplateInUse, fmt.Sprintf("%d sandboxes started from template %q still exist; destroy them first", n, name))
	}
	if err := s.dropOnHost(ctx, t); err != nil {
		return Template{}, err
	}
	err = s.inTx(ctx, func(q *db.Queries) error {
		if _, err := q.DeletePlatformTemplate(ctx, name); err != nil {
			return err
		}
		return s.audit.TemplateDeleted(ctx, q, ActorOf(a), t)
	})
	if err != nil {
		return Template{}, Internal("delete template", err)
	}
	return toTemplate(t), nil
}

// dropOnHost removes a built template's files from its host (gone already
// is fine; a host that was deleted took them along).
func (s *Service) dropOnHost(ctx context.Context, t db.Template) error {
	if t.HostID == nil {
		return nil
	}
	c, err := s.hosts.Get(ctx, *t.HostID)
	if err != nil {
		return &Error{Kind: CodeAgentUnavailable.Kind(), Code: CodeAgentUnavailable, Message: "the template's host is not online", Err: err}
	}
	_, err = c.DeleteSnapshot(ctx, connect.NewRequest(&pb.DeleteSnapshotRequest{Name: t.ID}))
	if err != nil && connect.CodeOf(err) != connect.CodeNotFound {
		return FromAgent("delete the template on its host", err)
	}
	return nil
}

// PublishInput makes a build's sandbox into a platform template.
type PublishInput struct {
	SandboxID string
	Name      string
	BuildID   string
	// Snapshot keeps memory and disk (processes keep running); otherwise
	// the disk is flattened into an image template.
	Snapshot bool
	Env      map[string]string
	Workdir  string
	User     string
}

// PublishTemplate turns a build's running sandbox into a platform template
// on its host and records it. On any failure nothing is left: files the
// agent wrote are dropped.
func (s *Service) PublishTemplate(ctx context.Context, a auth.AuthContext, tplID string, in PublishInput) (Template, error) {
	sb, c, err := s.runningSandbox(ctx, a, in.SandboxID)
	if err != nil {
		return Template{}, err
	}
	kind := "image"
	var size int64
	vcpus, mem := sb.Vcpus, sb.MemoryMb
	if in.Snapshot {
		kind = "snapshot"
		resp, err := c.CreateSnapshot(ctx, connect.NewRequest(&pb.CreateSnapshotRequest{SandboxId: sb.ID, Name: tplID}))
		if err != nil {
			return Template{}, FromAgent("snapshot the build sandbox", err)
		}
		size = resp.Msg.GetSizeBytes()
		if resp.Msg.GetVcpus() > 0 {
			vcpus, mem = int32(resp.Msg.GetVcpus()), int32(resp.Msg.GetMemoryMb())
		}
	} else {
		resp, err := c.FlattenRootfs(ctx, connect.NewRequest(&pb.FlattenRootfsRequest{SandboxId: sb.ID, Name: tplID}))
		if err != nil {
			return Template{}, FromAgent("flatten the build sandbox's disk", err)
		}
		size = resp.Msg.GetSizeBytes()
	}
	env, _ := json.Marshal(in.Env)
	if in.Env == nil {
		env = []byte("{}")
	}
	buildID := in.BuildID
	t, err := s.q.InsertBuiltTemplate(context.WithoutCancel(ctx), db.InsertBuiltTemplateParams{ID: tplID, Name: in.Name, Kind: kind,
		Vcpus: vcpus, MemoryMb: mem, DiskMb: sb.DiskMb, SizeBytes: size, HostID: sb.HostID, BuildID: &buildID,
		Env: env, Workdir: in.Workdir, DefaultUser: in.User})
	if err != nil {
		if _, derr := c.DeleteSnapshot(context.WithoutCancel(ctx), connect.NewRequest(&pb.DeleteSnapshotRequest{Name: tplID})); derr != nil {
			s.log.WarnContext(ctx, "drop unrecorded template", "template_id", tplID, "err", derr)
		}
		if isUniqueViolation(err) {
			return Template{}, &Error{Kind: CodeNameTaken.Kind(), Code: CodeNameTaken, Field: "name", Message: fmt.Sprintf("a template named %q exists", in.Name)}
		}
		return Template{}, Internal("record template", err)
	}
	return toTemplate(t), nil
}
