package service

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/controlplane/auth"
	"github.com/wrenn-dev/wrenn/internal/controlplane/hosts"
	"github.com/wrenn-dev/wrenn/internal/controlplane/ids"
	"github.com/wrenn-dev/wrenn/internal/db"
	"github.com/wrenn-dev/wrenn/internal/names"
	"github.com/wrenn-dev/wrenn/internal/pgtx"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// Sandbox as shown by the API.
type Sandbox struct {
	ID           string            `json:"id"`
	TeamID       string            `json:"team_id"`
	HostID       *string           `json:"host_id"`
	Template     string            `json:"template"`
	Status       Status            `json:"status"`
	VCPUs        int32             `json:"vcpus"`
	MemoryMB     int32             `json:"memory_mb"`
	DiskMB       int32             `json:"disk_mb"`
	TimeoutSec   int32             `json:"timeout_sec"`
	Metadata     map[string]string `json:"metadata"`
	ErrorMessage string            `json:"error_message,omitempty"`
	CreatedBy    string            `json:"created_by"`
	CreatedAt    time.Time         `json:"created_at"`
	UpdatedAt    time.Time         `json:"updated_at"`
	StartedAt    *time.Time        `json:"started_at"`
	LastActiveAt *time.Time        `json:"last_active_at"`
	PausedAt     *time.Time        `json:"paused_at"`
	StoppedAt    *time.Time        `json:"stopped_at"`
	// EndAt is the end-of-life timer of a running sandbox (nil: none) and
	// PauseAtEnd what its end does; EnvdAccessToken is envd's token. Only
	// the E2B-compatible API shows them.
	EndAt           *time.Time `json:"-"`
	PauseAtEnd      bool       `json:"-"`
	EnvdAccessToken string     `json:"-"`
	// PublicPorts are reached through the sandbox HTTP proxy without
	// credentials; AutoResume resumes a paused sandbox on proxied traffic.
	PublicPorts []int32 `json:"public_ports"`
	AutoResume  bool    `json:"auto_resume"`
}

func toSandbox(r db.Sandbox) Sandbox {
	md := map[string]string{}
	_ = json.Unmarshal(r.Metadata, &md)
	return Sandbox{ID: r.ID, TeamID: r.TeamID, HostID: r.HostID, Template: r.Template, Status: Status(r.Status),
		VCPUs: r.Vcpus, MemoryMB: r.MemoryMb, DiskMB: r.DiskMb, TimeoutSec: r.TimeoutSec, Metadata: md,
		ErrorMessage: r.ErrorMessage, CreatedBy: r.CreatedBy, CreatedAt: r.CreatedAt, UpdatedAt: r.UpdatedAt,
		StartedAt: r.StartedAt, LastActiveAt: r.LastActiveAt, PausedAt: r.PausedAt, StoppedAt: r.StoppedAt,
		EndAt: r.EndAt, PauseAtEnd: r.OnEnd == onEndPause, EnvdAccessToken: deref(r.EnvdAccessToken),
		PublicPorts: publicPorts(r.PublicPorts), AutoResume: r.AutoResume}
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// CreateSandboxInput is POST /v1/sandboxes.
type CreateSandboxInput struct {
	Template       string            `json:"template"`
	VCPUs          *int              `json:"vcpus"`
	MemoryMB       *int              `json:"memory_mb"`
	TimeoutSec     *int              `json:"timeout_sec"`
	Metadata       map[string]string `json:"metadata"`
	EnvVars        map[string]string `json:"env_vars"`
	InternetAccess *bool             `json:"internet_access"`
	// Lifetime, when set, starts the end-of-life timer (the E2B API's
	// timeout); Wrenn's own API has only the idle timeout.
	Lifetime *Lifetime `json:"-"`
	// PublicPorts and AutoResume: see Sandbox (both off by default).
	PublicPorts []int `json:"public_ports"`
	AutoResume  bool  `json:"auto_resume"`
	// Build is set by the template build worker for its own sandbox, never
	// from a request body.
	Build *BuildPlacement `json:"-"`
}

// BuildPlacement marks a template build's sandbox: its build, how many
// builds one host may run at once, and its disk when larger than its
// template's (the guest grows its filesystem to fill it at boot).
type BuildPlacement struct {
	BuildID string
	PerHost int
	DiskMB  int
}

const (
	maxMetadataKeys = 50
	maxMetadataKey  = 64
	maxMetadataVal  = 512
)

func checkStringMap(field string, m map[string]string, maxKeys int) error {
	if len(m) > maxKeys {
		return Invalid(field, "%s may have at most %d entries", field, maxKeys)
	}
	for k, v := range m {
		if k == "" || len(k) > maxMetadataKey {
			return Invalid(field, "%s keys must be 1-%d bytes", field, maxMetadataKey)
		}
		if len(v) > maxMetadataVal {
			return Invalid(field, "%s[%q] must be at most %d bytes", field, k, maxMetadataVal)
		}
		if !utf8.ValidString(k) || !utf8.ValidString(v) || strings.ContainsRune(k+v, 0) {
			return Invalid(field, "%s must be valid UTF-8 text without NUL", field)
		}
	}
	return nil
}

func (s *Service) checkTimeout(field string, v *int) error {
	if v != nil && (*v < 0 || *v > s.limits.MaxTimeoutSec) {
		return Invalid(field, "%s must be between 0 and %d", field, s.limits.MaxTimeoutSec)
	}
	return nil
}

// CheckCreate validates what can be checked without the database.
func (s *Service) CheckCreate(in CreateSandboxInput) error {
	if in.Template != "" && !names.ValidTemplate(in.Template) {
		return Invalid("template", "template must be %s", names.TemplateRule)
	}
	if in.VCPUs != nil && (*in.VCPUs < 1 || *in.VCPUs > s.limits.MaxVCPUs) {
		return Invalid("vcpus", "vcpus must be between 1 and %d", s.limits.MaxVCPUs)
	}
	if in.MemoryMB != nil && (*in.MemoryMB < 128 || *in.MemoryMB > s.limits.MaxMemoryMB) {
		return Invalid("memory_mb", "memory_mb must be between 128 and %d", s.limits.MaxMemoryMB)
	}
	if err := checkStringMap("metadata", in.Metadata, maxMetadataKeys); err != nil {
		return err
	}
	if err := checkStringMap("env_vars", in.EnvVars, 200); err != nil {
		return err
	}
	if in.Lifetime != nil {
		if err := s.checkLifetime(in.Lifetime.Seconds); err != nil {
			return err
		}
	}
	if _, err := checkPublicPorts("public_ports", in.PublicPorts); err != nil {
		return err
	}
	return s.checkTimeout("timeout_sec", in.TimeoutSec)
}

// onOneHost: snapshots and built templates exist only on the host that
// made them; built-in images are on every host.
func onOneHost(t db.Template) bool { return t.Kind == "snapshot" || t.BuildID != nil }

// agentTemplate is the name the agent knows a template by: built-in images
// by name, templates made on a host by their ID (names are only unique
// within a team, and a deleted name may be reused).
func agentTemplate(t db.Template) string {
	if onOneHost(t) {
		return t.ID
	}
	return t.Name
}

// templateEnv is the template's ENV defaults overridden by the request's.
func templateEnv(t db.Template, req map[string]string) map[string]string {
	env := map[string]string{}
	_ = json.Unmarshal(t.Env, &env)
	if len(env) == 0 {
		return req
	}
	maps.Copy(env, req)
	return env
}

// CreateOptions say how a create runs.
type CreateOptions struct {
	// ID, when set, is the new sandbox's ID, chosen before the call began
	// (an idempotent request's); a sandbox of the team with this ID
	// already made is returned instead of a second one.
	ID string
	// Async answers with the pending sandbox at once; the boot goes on in
	// the background under the create's operation lease.
	Async bool
}

// CreateSandbox schedules a host, records the sandbox as pending, asks the
// agent to boot it and records the outcome. It answers once the sandbox runs.
func (s *Service) CreateSandbox(ctx context.Context, a auth.AuthContext, in CreateSandboxInput) (Sandbox, error) {
	return s.StartSandbox(ctx, a, in, CreateOptions{})
}

// StartSandbox is CreateSandbox with options. The pending row records the
// create operation, leased to this replica while the boot runs, so that if
// the replica dies the reconciler settles the row from the agent's truth.
func (s *Service) StartSandbox(ctx context.Context, a auth.AuthContext, in CreateSandboxInput, opts CreateOptions) (Sandbox, error) {
	if in.Template == "" {
		in.Template = "minimal"
	}
	if err := s.CheckCreate(in); err != nil {
		return Sandbox{}, err
	}
	id := opts.ID
	if id == "" {
		id = ids.New(ids.Sandbox)
	} else if made, err := s.q.GetSandbox(ctx, db.GetSandboxParams{ID: id, TeamID: a.TeamID}); err == nil {
		return s.awaitCreated(ctx, a, made, opts.Async)
	} else if !isNoRows(err) {
		return Sandbox{}, Internal("load sandbox", err)
	}
	tpl, err := s.q.GetTemplateByName(ctx, db.GetTemplateByNameParams{Name: in.Template, TeamID: &a.TeamID})
	if isNoRows(err) {
		return Sandbox{}, &Error{Kind: CodeUnknownTemplate.Kind(), Code: CodeUnknownTemplate, Field: "template", Message: fmt.Sprintf("no template named %q", in.Template)}
	}
	if err != nil {
		return Sandbox{}, Internal("load template", err)
	}
	vcpus, mem := int(tpl.Vcpus), int(tpl.MemoryMb)
	if in.VCPUs != nil {
		vcpus = *in.VCPUs
	}
	if in.MemoryMB != nil {
		mem = *in.MemoryMB
	}
	if tpl.Kind == "snapshot" && (vcpus != int(tpl.Vcpus) || mem != int(tpl.MemoryMb)) {
		return Sandbox{}, Invalid("vcpus", "a sandbox from snapshot %q keeps its %d vCPUs and %d MB", tpl.Name, tpl.Vcpus, tpl.MemoryMb)
	}
	disk := tpl.DiskMb
	if in.Build != nil && in.Build.DiskMB > int(disk) {
		if tpl.Kind == "snapshot" {
			return Sandbox{}, Invalid("disk_mb", "a sandbox from snapshot %q keeps its %d MiB disk", tpl.Name, tpl.DiskMb)
		}
		disk = int32(in.Build.DiskMB)
	}
	timeout := 0
	if in.TimeoutSec != nil {
		timeout = *in.TimeoutSec
	}
	md := in.Metadata
	if md == nil {
		md = map[string]string{}
	}
	mdJSON, _ := json.Marshal(md)
	endAfter, onEnd := in.Lifetime.params()
	envdToken := newEnvdToken()

	var (
		row  db.Sandbox
		host db.Host
	)
	opID := newOpID()
	err = pgtx.Run(ctx, s.pool, func(tx *pgtx.Tx) error {
		q := tx.Q
		if err := q.LockTeamSandboxes(ctx, a.TeamID); err != nil {
			return err
		}
		// Placement locks the hosts it considers until this transaction
		// commits the pending row, which then counts against the host.
		var err error
		need := hosts.Need{VCPUs: vcpus, MemoryMB: mem, DiskMB: int(disk)}
		var buildID *string
		if in.Build != nil {
			need.BuildsPerHost, buildID = max(in.Build.PerHost, 1), &in.Build.BuildID
		}
		host, err = s.placeSandbox(ctx, q, a, tpl, need)
		if err != nil {
			return err
		}
		// A build's sandbox is outside the team's limit (and not counted
		// in it): builds are bounded by the workers and per host instead.
		if in.Build == nil {
			n, err := q.CountActiveSandboxes(ctx, a.TeamID)
			if err != nil {
				return err
			}
			if n >= int64(s.limits.MaxRunningPerTeam) {
				return &Error{Kind: CodeSandboxLimit.Kind(), Code: CodeSandboxLimit, Message: fmt.Sprintf("the team already runs %d sandboxes, the most allowed", n)}
			}
		}
		row, err = q.InsertSandbox(ctx, db.InsertSandboxParams{ID: id, TeamID: a.TeamID, HostID: &host.ID,
			Template: tpl.Name, Vcpus: int32(vcpus), MemoryMb: int32(mem), DiskMb: disk, TimeoutSec: int32(timeout),
			Metadata: mdJSON, CreatedBy: a.Actor(), OpID: opID, OpOwner: s.replica, OpTtlSeconds: s.limits.OperationLease.Seconds(), BuildID: buildID,
			EndAfterSec: endAfter, OnEnd: onEnd, EnvdAccessToken: &envdToken, PublicPorts: ports32(in.PublicPorts), AutoResume: in.AutoResume})
		if err != nil {
			return err
		}
		return s.audit.SandboxCreated(ctx, tx.Tail, ActorOf(a), row)
	})
	if isUniqueViolation(err) && opts.ID != "" {
		// The same ID made concurrently (by a retry that took over).
		return Sandbox{}, Conflict(CodeInvalidState, "the sandbox is being created by another request")
	}
	if err != nil {
		return Sandbox{}, wrapDB("create sandbox", err)
	}

	lctx, cancel := s.lifecycleCtx(ctx)
	op := s.track(lctx, row.ID, opID)
	req := &pb.CreateSandboxRequest{
		SandboxId: row.ID, Template: agentTemplate(tpl), Vcpus: uint32(vcpus), MemoryMb: uint32(mem),
		DiskMb: uint32(disk), TimeoutSec: int64(timeout), EnvVars: templateEnv(tpl, in.EnvVars), Metadata: md, InternetAccess: in.InternetAccess,
		DefaultUser: tpl.DefaultUser, DefaultWorkdir: tpl.Workdir, EnvdAccessToken: envdToken,
	}
	boot := func() (Sandbox, error) {
		defer cancel()
		defer op.end(lctx)
		return s.boot(ctx, lctx, a, host, tpl, req)
	}
	if !opts.Async {
		return boot()
	}
	s.background.Go(func() {
		if _, err := boot(); err != nil {
			s.log.WarnContext(lctx, "background sandbox boot failed", "sandbox_id", row.ID, "err", err)
		}
	})
	return toSandbox(row), nil
}

// boot asks the agent to boot the pending sandbox and records the outcome.
func (s *Service) boot(ctx, lctx context.Context, a auth.AuthContext, host db.Host, tpl db.Template, req *pb.CreateSandboxRequest) (Sandbox, error) {
	client := s.hosts.ForHost(host)
	id := req.GetSandboxId()
	_, agentErr := client.CreateSandbox(lctx, connect.NewRequest(req))
	if agentErr != nil {
		se := FromAgent("create the sandbox", agentErr)
		msg := se.Message
		if _, _, err := s.states.Change(lctx, Change{SandboxID: id, TeamID: a.TeamID, From: []Status{StatusPending}, To: StatusError,
			Actor: ActorOf(a), Reason: "the host agent could not create it", ErrorMessage: &msg}); err != nil {
			s.log.ErrorContext(ctx, "record sandbox error", "sandbox_id", id, "err", err)
		}
		s.log.WarnContext(ctx, "create sandbox failed", "sandbox_id", id, "host_id", host.ID, "err", agentErr)
		if se.Kind == KindNotFound {
			se = &Error{Kind: CodeTemplateUnavailable.Kind(), Code: CodeTemplateUnavailable, Message: fmt.Sprintf("host %s does not have template %q", host.ID, tpl.Name), Err: agentErr}
		}
		return Sandbox{}, se
	}
	started, ok, err := s.states.Change(lctx, Change{SandboxID: id, TeamID: a.TeamID, From: []Status{StatusPending}, To: StatusRunning,
		Actor: ActorOf(a), Reason: "created"})
	if err != nil {
		return Sandbox{}, Internal("record sandbox running", err)
	}
	if !ok {
		now, err := s.q.GetSandbox(lctx, db.GetSandboxParams{ID: id, TeamID: a.TeamID})
		if err == nil && Status(now.Status) == StatusRunning {
			// This call outlived its lease and the reconciler recorded
			// the VM it made as running: the create succeeded.
			return toSandbox(now), nil
		}
		// Destroyed while booting, or settled as failed: do not leave the
		// VM behind.
		if _, derr := client.DestroySandbox(lctx, connect.NewRequest(&pb.DestroySandboxRequest{SandboxId: id})); derr != nil {
			s.log.WarnContext(ctx, "destroy sandbox deleted while starting", "sandbox_id", id, "err", derr)
		}
		return Sandbox{}, Conflict(CodeInvalidState, "the sandbox was destroyed while it was starting")
	}
	s.log.InfoContext(ctx, "sandbox created", "sandbox_id", id, "team_id", a.TeamID, "host_id", host.ID, "actor", a.Actor())
	return toSandbox(started.Sandbox), nil
}

// awaitCreated answers a create whose sandbox an earlier call already made
// (an idempotent retry): at once when async, else once it left pending,
// which its own call or the reconciler ensures within the lifecycle
// timeout plus one operation lease.
func (s *Service) awaitCreated(ctx context.Context, a auth.AuthContext, r db.Sandbox, async bool) (Sandbox, error) {
	wctx, cancel := context.WithTimeout(ctx, s.limits.LifecycleTimeout+s.limits.OperationLease)
	defer cancel()
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for !async && Status(r.Status) == StatusPending {
		select {
		case <-wctx.Done():
			return toSandbox(r), nil
		case <-t.C:
		}
		var err error
		if r, err = s.loadSandbox(wctx, a, r.ID); err != nil {
			return Sandbox{}, err
		}
	}
	return toSandbox(r), nil
}

// loadSandbox returns the team's sandbox or 404.
func (s *Service) loadSandbox(ctx context.Context, a auth.AuthContext, id string) (db.Sandbox, error) {
	if !ids.Valid(ids.Sandbox, id) {
		return db.Sandbox{}, errSandboxNotFound
	}
	r, err := s.q.GetSandbox(ctx, db.GetSandboxParams{ID: id, TeamID: a.TeamID})
	if isNoRows(err) {
		return r, errSandboxNotFound
	}
	if err != nil {
		return r, Internal("load sandbox", err)
	}
	return r, nil
}

func wrongState(r db.Sandbox, want ...Status) *Error {
	return &Error{Kind: CodeInvalidState.Kind(), Code: CodeInvalidState, Message: fmt.Sprintf("sandbox %s is %s; it must be %s", r.ID, r.Status, strings.Join(StatusStrings(want), " or "))}
}

// placeSandbox picks the host for a new sandbox inside the create's
// transaction: a snapshot's or built template's own host (its files live
// there), else the scheduler's choice; either must accept the size and
// have room for it.
func (s *Service) placeSandbox(ctx context.Context, q *db.Queries, a auth.AuthContext, tpl db.Template, need hosts.Need) (db.Host, error) {
	if onOneHost(tpl) {
		if tpl.HostID == nil {
			return db.Host{}, &Error{Kind: CodeSnapshotUnavailable.Kind(), Code: CodeSnapshotUnavailable, Field: "template",
				Message: fmt.Sprintf("the host that held template %q was deleted; the template cannot start sandboxes", tpl.Name)}
		}
		h, err := s.scheduler.PlaceOn(ctx, q, *tpl.HostID, need, true)
		if errors.Is(err, hosts.ErrHostUnavailable) {
			return db.Host{}, &Error{Kind: CodeAgentUnavailable.Kind(), Code: CodeAgentUnavailable,
				Message: fmt.Sprintf("the host holding template %q is not online", tpl.Name), Err: err}
		}
		return h, placementError(err, tpl)
	}
	h, err := s.scheduler.Place(ctx, q, a.TeamID, need)
	if errors.Is(err, hosts.ErrHostUnavailable) {
		return db.Host{}, &Error{Kind: CodeAgentUnavailable.Kind(), Code: CodeAgentUnavailable, Message: "no host is available to run the sandbox", Err: err}
	}
	return h, placementError(err, tpl)
}

// placementError maps the scheduler's refusals: a size no eligible host
// accepts is the request's fault (400 naming the field), a full platform
// is not (503 no_capacity naming what is short).
func placementError(err error, tpl db.Template) error {
	var (
		limit *hosts.LimitError
		full  *hosts.NoCapacityError
	)
	switch {
	case err == nil:
		return nil
	case errors.As(err, &limit) && limit.Field == "disk_mb":
		return Invalid("template", "template %q needs a %d MiB disk; no host this team can use takes more than %d MiB", tpl.Name, limit.Need.DiskMB, limit.Limit)
	case errors.As(err, &limit):
		return Invalid(limit.Field, "%s", limit.Error())
	case errors.As(err, &full):
		e := Errorf(CodeNoCapacity, "%s", full.Error())
		e.Err = err
		return e
	default:
		return Internal("schedule sandbox", err)
	}
}

func (s *Service) client(ctx context.Context, r db.Sandbox) (hosts.Client, error) {
	if r.HostID == nil {
		return nil, &Error{Kind: CodeAgentUnavailable.Kind(), Code: CodeAgentUnavailable, Message: "the sandbox has no host"}
	}
	c, err := s.hosts.Get(ctx, *r.HostID)
	if errors.Is(err, hosts.ErrHostUnavailable) {
		return nil, &Error{Kind: CodeAgentUnavailable.Kind(), Code: CodeAgentUnavailable, Message: "the sandbox's host is not online", Err: err}
	}
	if err != nil {
		return nil, Internal("reach host", err)
	}
	return c, nil
}

// runningSandbox loads a sandbox that must be running, and its agent.
func (s *Service) runningSandbox(ctx context.Context, a auth.AuthContext, id string) (db.Sandbox, hosts.Client, error) {
	r, err := s.loadSandbox(ctx, a, id)
	if err != nil {
		return r, nil, err
	}
	if Status(r.Status) != StatusRunning {
		return r, nil, wrongState(r, StatusRunning)
	}
	c, err := s.client(ctx, r)
	return r, c, err
}

// GetSandbox returns one sandbox.
func (s *Service) GetSandbox(ctx context.Context, a auth.AuthContext, id string) (Sandbox, error) {
	r, err := s.loadSandbox(ctx, a, id)
	if err != nil {
		return Sandbox{}, err
	}
	return toSandbox(r), nil
}

// ListSandboxesInput filters GET /v1/sandboxes.
type ListSandboxesInput struct {
	Statuses []Status
	Metadata map[string]string
	Limit    int
	Cursor   string
}

// SandboxPage is one page of sandboxes, newest first.
type SandboxPage struct {
	Sandboxes  []Sandbox `json:"sandboxes"`
	NextCursor string    `json:"next_cursor,omitempty"`
}

// MaxPageSize bounds list pages.
const MaxPageSize = 200

// EncodeCursor is the page cursor after the row (created_at, id); list
// pages of every kind use it.
func EncodeCursor(t time.Time, id string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(t.UnixMicro(), 10) + "|" + id))
}

// pageOf cuts rows read with limit+1 to one page and returns the cursor of
// the next page, "" when this is the last.
func pageOf[R any](rows []R, limit int, key func(R) (time.Time, string)) ([]R, string) {
	if len(rows) <= limit {
		return rows, ""
	}
	rows = rows[:limit]
	return rows, EncodeCursor(key(rows[len(rows)-1]))
}

// DecodeCursor reads a cursor EncodeCursor made for an ID with prefix.
func DecodeCursor(c, prefix string) (time.Time, string, error) {
	raw, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil {
		return time.Time{}, "", err
	}
	ts, id, ok := strings.Cut(string(raw), "|")
	if !ok || !ids.Valid(prefix, id) {
		return time.Time{}, "", errors.New("bad cursor")
	}
	us, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return time.Time{}, "", err
	}
	return time.UnixMicro(us), id, nil
}

// ListSandboxes pages through the team's sandboxes.
func (s *Service) ListSandboxes(ctx context.Context, a auth.AuthContext, in ListSandboxesInput) (SandboxPage, error) {
	if in.Limit == 0 {
		in.Limit = 50
	}
	if in.Limit < 1 || in.Limit > MaxPageSize {
		return SandboxPage{}, Invalid("limit", "limit must be between 1 and %d", MaxPageSize)
	}
	for _, st := range in.Statuses {
		if !slices.Contains(AllStatuses(), st) {
			return SandboxPage{}, Invalid("status", "unknown status %q; use %s", st, strings.Join(StatusStrings(AllStatuses()), ", "))
		}
	}
	if err := checkStringMap("metadata", in.Metadata, maxMetadataKeys); err != nil {
		return SandboxPage{}, err
	}
	md := in.Metadata
	if md == nil {
		md = map[string]string{}
	}
	mdJSON, _ := json.Marshal(md)
	p := db.ListSandboxesParams{TeamID: a.TeamID, Statuses: StatusStrings(in.Statuses), Metadata: mdJSON, Lim: int32(in.Limit + 1)}
	if in.Cursor != "" {
		t, id, err := DecodeCursor(in.Cursor, ids.Sandbox)
		if err != nil {
			return SandboxPage{}, Invalid("cursor", "cursor is not one this API returned")
		}
		p.CursorCreatedAt, p.CursorID = &t, id
	}
	rows, err := s.q.ListSandboxes(ctx, p)
	if err != nil {
		return SandboxPage{}, Internal("list sandboxes", err)
	}
	page := SandboxPage{}
	rows, page.NextCursor = pageOf(rows, in.Limit, func(r db.Sandbox) (time.Time, string) { return r.CreatedAt, r.ID })
	page.Sandboxes = make([]Sandbox, 0, len(rows))
	for _, r := range rows {
		page.Sandboxes = append(page.Sandboxes, toSandbox(r))
	}
	return page, nil
}

// DestroySandbox stops a sandbox for good. Destroying a stopped sandbox is a
// no-op, so retries are safe. When its host is away (not online, or its
// agent unavailable) a sandbox whose VM may still run is left stopping (the
// answer shows it): the reconciler destroys the VM when the host answers and
// only then records stopped. A sandbox in error, or with no host, has
// nothing left to run and is stopped at once.
func (s *Service) DestroySandbox(ctx context.Context, a auth.AuthContext, id string) (Sandbox, error) {
	r, err := s.loadSandbox(ctx, a, id)
	if err != nil {
		return Sandbox{}, err
	}
	if Status(r.Status) == StatusStopped {
		return toSandbox(r), nil
	}
	notStopped := []Status{StatusPending, StatusRunning, StatusPaused, StatusError, StatusMissing, StatusStopping}
	lctx, cancel := s.lifecycleCtx(ctx)
	defer cancel()
	// A destroy takes the row over from any operation in flight: that
	// operation's own change then fails, and a create destroys its VM.
	r, op, err := s.claimOp(lctx, a, r, OpDestroy, notStopped, true)
	if err != nil {
		var se *Error
		if errors.As(err, &se) && se.Code == CodeInvalidState { // stopped meanwhile
			return s.GetSandbox(ctx, a, id)
		}
		return Sandbox{}, err
	}
	defer op.end(lctx)
	status := Status(r.Status)
	away, err := s.destroyOnHost(ctx, lctx, r)
	if err != nil {
		return Sandbox{}, err
	}
	to, reason := StatusStopped, "destroyed"
	if away && status != StatusError {
		if status == StatusStopping {
			return toSandbox(r), nil
		}
		to, reason = StatusStopping, "destroyed while its host is away"
	}
	c := Change{SandboxID: r.ID, TeamID: a.TeamID, From: notStopped, To: to, Actor: ActorOf(a), Reason: reason}
	t, ok, err := s.states.Change(lctx, c)
	if err != nil {
		return Sandbox{}, Internal("record sandbox "+string(to), err)
	}
	if !ok { // stopped by another call meanwhile, or seen stopped by the reconciler
		if _, _, err := s.states.ConfirmChange(lctx, c); err != nil {
			return Sandbox{}, Internal("record sandbox "+string(to), err)
		}
		return s.GetSandbox(ctx, a, id)
	}
	s.log.InfoContext(ctx, "sandbox destroyed", "sandbox_id", r.ID, "status", to, "actor", a.Actor())
	return toSandbox(t.Sandbox), nil
}

// destroyOnHost destroys r's VM; away reports that its host could not be
// asked (not online, or the agent unavailable), so the VM may still run.
func (s *Service) destroyOnHost(ctx, lctx context.Context, r db.Sandbox) (away bool, err error) {
	if r.HostID == nil {
		return false, nil // never placed, or its host was deleted
	}
	c, err := s.client(ctx, r)
	if err != nil {
		var se *Error
		if errors.As(err, &se) && se.Kind == KindUnavailable {
			return true, nil
		}
		return false, err
	}
	_, aerr := c.DestroySandbox(lctx, connect.NewRequest(&pb.DestroySandboxRequest{SandboxId: r.ID}))
	if aerr == nil || connect.CodeOf(aerr) == connect.CodeNotFound {
		return false, nil
	}
	se := FromAgent("destroy the sandbox", aerr)
	if se.Kind == KindUnavailable {
		return true, nil
	}
	return false, se
}

// PauseSandbox snapshots a running sandbox's memory and stops its VM.
func (s *Service) PauseSandbox(ctx context.Context, a auth.AuthContext, id string) (Sandbox, error) {
	r, c, err := s.runningSandbox(ctx, a, id)
	if err != nil {
		return Sandbox{}, err
	}
	lctx, cancel := s.lifecycleCtx(ctx)
	defer cancel()
	r, op, err := s.claimOp(lctx, a, r, OpPause, []Status{StatusRunning}, false)
	if err != nil {
		return Sandbox{}, err
	}
	defer op.end(lctx)
	if _, err := c.PauseSandbox(lctx, connect.NewRequest(&pb.PauseSandboxRequest{SandboxId: r.ID})); err != nil {
		return Sandbox{}, FromAgent("pause the sandbox", err)
	}
	return s.transition(lctx, a, Change{SandboxID: r.ID, TeamID: a.TeamID, From: []Status{StatusRunning}, To: StatusPaused, Actor: ActorOf(a), Reason: "paused"})
}

// ResumeInput is POST /v1/sandboxes/{id}/resume.
type ResumeInput struct {
	TimeoutSec *int `json:"timeout_sec"`
	// EndAfterSec, when set, restarts the end-of-life timer (the E2B
	// API's connect); a resume without it leaves the sandbox no end.
	EndAfterSec *int `json:"-"`
}

// ResumeSandbox restores a paused sandbox on its host.
func (s *Service) ResumeSandbox(ctx context.Context, a auth.AuthContext, id string, in ResumeInput) (Sandbox, error) {
	return s.resume(ctx, a, ActorOf(a), id, in)
}

// resume is ResumeSandbox on behalf of actor.
func (s *Service) resume(ctx context.Context, a auth.AuthContext, actor Actor, id string, in ResumeInput) (Sandbox, error) {
	if err := s.checkTimeout("timeout_sec", in.TimeoutSec); err != nil {
		return Sandbox{}, err
	}
	if in.EndAfterSec != nil {
		if err := s.checkLifetime(*in.EndAfterSec); err != nil {
			return Sandbox{}, err
		}
	}
	r, err := s.loadSandbox(ctx, a, id)
	if err != nil {
		return Sandbox{}, err
	}
	if Status(r.Status) != StatusPaused {
		return Sandbox{}, wrongState(r, StatusPaused)
	}
	c, err := s.client(ctx, r)
	if err != nil {
		return Sandbox{}, err
	}
	lctx, cancel := s.lifecycleCtx(ctx)
	defer cancel()
	r, op, err := s.claimOp(lctx, a, r, OpResume, []Status{StatusPaused}, false)
	if err != nil {
		return Sandbox{}, err
	}
	defer op.end(lctx)
	release, err := s.reserveResume(ctx, r)
	if err != nil {
		return Sandbox{}, err
	}
	defer release()
	timeout := int64(r.TimeoutSec)
	var newTimeout *int32
	if in.TimeoutSec != nil {
		timeout = int64(*in.TimeoutSec)
		t := int32(*in.TimeoutSec)
		newTimeout = &t
	}
	if _, err := c.ResumeSandbox(lctx, connect.NewRequest(&pb.ResumeSandboxRequest{SandboxId: r.ID, TimeoutSec: &timeout})); err != nil {
		return Sandbox{}, FromAgent("resume the sandbox", err)
	}
	ch := Change{SandboxID: r.ID, TeamID: a.TeamID, From: []Status{StatusPaused}, To: StatusRunning, Actor: actor, Reason: "resumed", TimeoutSec: newTimeout}
	if in.EndAfterSec != nil {
		ch.EndAfterSec = new(int32(*in.EndAfterSec))
	}
	return s.transition(lctx, a, ch)
}

// reserveResume checks that a paused sandbox's host has room for it again
// (paused sandboxes hold none) and reserves that room while the agent
// resumes it, so concurrent creates cannot take it meanwhile. release ends
// the reservation; it also lapses after the lifecycle timeout.
func (s *Service) reserveResume(ctx context.Context, r db.Sandbox) (release func(), err error) {
	err = s.inTx(ctx, func(q *db.Queries) error {
		_, err := s.scheduler.PlaceOn(ctx, q, *r.HostID, hosts.Need{VCPUs: int(r.Vcpus), MemoryMB: int(r.MemoryMb), DiskMB: int(r.DiskMb), Excluding: r.ID}, false)
		if errors.Is(err, hosts.ErrHostUnavailable) {
			return &Error{Kind: CodeAgentUnavailable.Kind(), Code: CodeAgentUnavailable, Message: "the sandbox's host is not online", Err: err}
		}
		if err != nil {
			return placementError(err, db.Template{Name: r.Template})
		}
		until := time.Now().Add(s.limits.LifecycleTimeout)
		_, err = q.ReserveResume(ctx, db.ReserveResumeParams{ID: r.ID, Until: &until})
		return err
	})
	if err != nil {
		return nil, wrapDB("reserve host room", err)
	}
	return func() {
		rctx, cancel := s.lifecycleCtx(ctx)
		defer cancel()
		if err := s.q.ReleaseResume(rctx, r.ID); err != nil {
			s.log.WarnContext(ctx, "release resume reservation", "sandbox_id", r.ID, "err", err)
		}
	}, nil
}

// transition records the state change an agent call just made. If the row
// already shows the new state, another writer recorded the same outcome
// first (the reconciler reads the agent's state and may see a pause before
// this call returns): that is success. Losing the race to a different
// transition is a 409 naming the state the sandbox is in now.
func (s *Service) transition(ctx context.Context, a auth.AuthContext, c Change) (Sandbox, error) {
	t, ok, err := s.states.Change(ctx, c)
	if err != nil {
		return Sandbox{}, Internal("record sandbox state", err)
	}
	if ok {
		return toSandbox(t.Sandbox), nil
	}
	now, same, err := s.states.ConfirmChange(ctx, c)
	if isNoRows(err) {
		return Sandbox{}, errSandboxNotFound
	}
	if err != nil {
		return Sandbox{}, Internal("record sandbox state", err)
	}
	if !same {
		return Sandbox{}, &Error{Kind: CodeInvalidState.Kind(), Code: CodeInvalidState, Message: fmt.Sprintf("sandbox %s changed state concurrently; it is now %s", c.SandboxID, now.Status)}
	}
	// Same state already recorded; what the change also set still has to be.
	if c.TimeoutSec != nil {
		now, err = s.q.SetSandboxTimeout(ctx, db.SetSandboxTimeoutParams{ID: c.SandboxID, TeamID: a.TeamID, Status: string(c.To), TimeoutSec: *c.TimeoutSec})
		if isNoRows(err) {
			return Sandbox{}, &Error{Kind: CodeInvalidState.Kind(), Code: CodeInvalidState, Message: fmt.Sprintf("sandbox %s changed state concurrently", c.SandboxID)}
		}
		if err != nil {
			return Sandbox{}, Internal("record sandbox timeout", err)
		}
	}
	if c.EndAfterSec != nil {
		return s.SetSandboxEnd(ctx, a, c.SandboxID, int(*c.EndAfterSec), false)
	}
	return toSandbox(now), nil
}

// PingResult is POST /v1/sandboxes/{id}/ping.
type PingResult struct {
	LastActiveAt time.Time `json:"last_active_at"`
}

// PingSandbox resets the idle timer on the agent and in the database.
func (s *Service) PingSandbox(ctx context.Context, a auth.AuthContext, id string) (PingResult, error) {
	r, c, err := s.runningSandbox(ctx, a, id)
	if err != nil {
		return PingResult{}, err
	}
	if _, err := c.PingSandbox(ctx, connect.NewRequest(&pb.PingSandboxRequest{SandboxId: r.ID})); err != nil {
		return PingResult{}, FromAgent("ping the sandbox", err)
	}
	at, err := s.q.TouchSandbox(ctx, db.TouchSandboxParams{ID: r.ID, TeamID: a.TeamID})
	if isNoRows(err) {
		return PingResult{}, Conflict(CodeInvalidState, "the sandbox stopped running")
	}
	if err != nil || at == nil {
		return PingResult{}, Internal("touch sandbox", err)
	}
	return PingResult{LastActiveAt: *at}, nil
}

// Metrics is GET /v1/sandboxes/{id}/metrics.
type Metrics struct {
	Current *MetricSample  `json:"current"`
	History []MetricSample `json:"history"`
}

// MetricSample is one resource sample.
type MetricSample struct {
	SampledAt        time.Time `json:"sampled_at"`
	CPUPercent       float64   `json:"cpu_percent"`
	HostCPUPercent   float64   `json:"host_cpu_percent"`
	MemoryUsedBytes  uint64    `json:"memory_used_bytes"`
	MemoryTotalBytes uint64    `json:"memory_total_bytes"`
	DiskUsedBytes    uint64    `json:"disk_used_bytes"`
	DiskTotalBytes   uint64    `json:"disk_total_bytes"`
}

func toSample(m *pb.SandboxMetrics) MetricSample {
	out := MetricSample{CPUPercent: m.GetCpuPercent(), HostCPUPercent: m.GetHostCpuPercent(), MemoryUsedBytes: m.GetMemoryUsedBytes(), MemoryTotalBytes: m.GetMemoryTotalBytes(),
		DiskUsedBytes: m.GetDiskUsedBytes(), DiskTotalBytes: m.GetDiskTotalBytes()}
	if m.GetSampledAt() != nil {
		out.SampledAt = m.GetSampledAt().AsTime()
	}
	return out
}

// SandboxMetrics reads the agent's current and recent samples.
func (s *Service) SandboxMetrics(ctx context.Context, a auth.AuthContext, id string) (Metrics, error) {
	r, c, err := s.runningSandbox(ctx, a, id)
	if err != nil {
		return Metrics{}, err
	}
	resp, err := c.GetSandboxMetrics(ctx, connect.NewRequest(&pb.GetSandboxMetricsRequest{SandboxId: r.ID}))
	if err != nil {
		return Metrics{}, FromAgent("read metrics", err)
	}
	out := Metrics{History: make([]MetricSample, 0, len(resp.Msg.GetHistory()))}
	if cur := resp.Msg.GetCurrent(); cur != nil {
		c := toSample(cur)
		out.Current = &c
	}
	for _, h := range resp.Msg.GetHistory() {
		out.History = append(out.History, toSample(h))
	}
	return out, nil
}
