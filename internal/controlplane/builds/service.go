package builds

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/wrenn-dev/wrenn/internal/controlplane/audit"
	"github.com/wrenn-dev/wrenn/internal/controlplane/auth"
	"github.com/wrenn-dev/wrenn/internal/controlplane/ids"
	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
	"github.com/wrenn-dev/wrenn/internal/db"
)

// Status of a build.
type Status string

const (
	StatusQueued    Status = "queued"
	StatusRunning   Status = "running"
	StatusSucceeded Status = "succeeded"
	StatusFailed    Status = "failed"
	StatusCancelled Status = "cancelled"
)

var allStatuses = []Status{StatusQueued, StatusRunning, StatusSucceeded, StatusFailed, StatusCancelled}

// Final reports whether a build in this status has ended.
func (s Status) Final() bool {
	return s == StatusSucceeded || s == StatusFailed || s == StatusCancelled
}

// Step statuses.
const (
	StepPending   = "pending"
	StepRunning   = "running"
	StepSucceeded = "succeeded"
	StepFailed    = "failed"
	StepSkipped   = "skipped"
)

// maxDiskMB bounds a build's disk_mb (1 TiB); what a host takes (its
// agent's WRENN_MAX_DISK_MB) is checked when the build sandbox is placed.
const maxDiskMB = 1 << 20

// QueueKey is the Redis list builds are pushed on; workers BLPOP it. The
// list only wakes workers: the template_builds row is the truth.
const QueueKey = "wrenn:builds:queue"

func logChannel(id string) string { return "wrenn:builds:" + id + ":events" }

// StepResult is one step's outcome, kept in the build row.
type StepResult struct {
	Index      int        `json:"index"`
	Line       int        `json:"line"`
	Cmd        string     `json:"cmd"`
	Status     string     `json:"status"`
	ExitCode   *int32     `json:"exit_code"`
	Stdout     string     `json:"stdout"`
	Stderr     string     `json:"stderr"`
	Error      string     `json:"error,omitempty"`
	StartedAt  *time.Time `json:"started_at"`
	DurationMS int64      `json:"duration_ms"`
}

// Progress is steps done out of all.
type Progress struct {
	Done  int `json:"done"`
	Total int `json:"total"`
}

// Build as shown by the API.
type Build struct {
	ID           string       `json:"id"`
	Name         string       `json:"name"`
	BaseTemplate string       `json:"base_template"`
	Status       Status       `json:"status"`
	Kind         string       `json:"kind"`
	Recipe       []string     `json:"recipe"`
	Healthcheck  *Healthcheck `json:"healthcheck"`
	VCPUs        int32        `json:"vcpus"`
	MemoryMB     int32        `json:"memory_mb"`
	DiskMB       int32        `json:"disk_mb"`
	CurrentStep  int32        `json:"current_step"`
	Progress     Progress     `json:"progress"`
	Steps        []StepResult `json:"steps"`
	Error        string       `json:"error,omitempty"`
	TemplateID   *string      `json:"template_id"`
	SandboxID    *string      `json:"sandbox_id"`
	Attempts     int32        `json:"attempts"`
	CreatedBy    string       `json:"created_by"`
	CreatedAt    time.Time    `json:"created_at"`
	StartedAt    *time.Time   `json:"started_at"`
	FinishedAt   *time.Time   `json:"finished_at"`
}

func toBuild(r db.TemplateBuild) Build {
	var steps []Step
	_ = json.Unmarshal(r.Recipe, &steps)
	var results []StepResult
	_ = json.Unmarshal(r.Steps, &results)
	if len(results) == 0 {
		results = pendingResults(steps)
	}
	b := Build{ID: r.ID, Name: r.Name, BaseTemplate: r.BaseTemplate, Status: Status(r.Status), Kind: "image",
		VCPUs: r.Vcpus, MemoryMB: r.MemoryMb, DiskMB: r.DiskMb, CurrentStep: r.CurrentStep, Steps: results,
		Error: r.ErrorMessage, TemplateID: r.TemplateID, SandboxID: r.SandboxID, Attempts: r.Attempts, CreatedBy: r.CreatedBy,
		CreatedAt: r.CreatedAt, StartedAt: r.StartedAt, FinishedAt: r.FinishedAt, Recipe: make([]string, 0, len(steps))}
	for _, st := range steps {
		b.Recipe = append(b.Recipe, st.Text())
	}
	if len(r.Healthcheck) > 0 && string(r.Healthcheck) != "null" {
		var h Healthcheck
		if json.Unmarshal(r.Healthcheck, &h) == nil {
			b.Healthcheck, b.Kind = &h, "snapshot"
		}
	}
	b.Progress.Total = len(results)
	for _, s := range results {
		if s.Status == StepSucceeded {
			b.Progress.Done++
		}
	}
	return b
}

func pendingResults(steps []Step) []StepResult {
	out := make([]StepResult, len(steps))
	for i, st := range steps {
		out[i] = StepResult{Index: i, Line: st.Line, Cmd: st.Text(), Status: StepPending}
	}
	return out
}

// Config bounds builds.
type Config struct {
	// Workers per control plane (WRENN_BUILD_WORKERS); 0 runs none here.
	Workers int
	// PerHost is the most builds one host runs at once (default 1).
	PerHost int
	// MaxArchiveBytes bounds an upload (default 64 MiB).
	MaxArchiveBytes int64
	// LeaseTTL is how long a worker's claim lasts without renewal (default
	// 15 s); it renews every third of it.
	LeaseTTL time.Duration
	// Replica names this process's workers in the build rows.
	Replica string
}

func (c Config) withDefaults() Config {
	if c.PerHost <= 0 {
		c.PerHost = 1
	}
	if c.MaxArchiveBytes <= 0 {
		c.MaxArchiveBytes = 64 << 20
	}
	if c.LeaseTTL <= 0 {
		c.LeaseTTL = 15 * time.Second
	}
	if c.Replica == "" {
		c.Replica = "cp-" + ids.New("")[:12]
	}
	return c
}

// Service is the build API's rules and the worker pool's shared state.
type Service struct {
	pool  *pgxpool.Pool
	q     *db.Queries
	rdb   redis.UniversalClient
	svc   *service.Service
	audit *audit.Logger
	cfg   Config
	log   *slog.Logger
}

// New builds the service.
func New(pool *pgxpool.Pool, rdb redis.UniversalClient, svc *service.Service, al *audit.Logger, cfg Config, logger *slog.Logger) *Service {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Service{pool: pool, q: db.New(pool), rdb: rdb, svc: svc, audit: al, cfg: cfg.withDefaults(), log: logger}
}

// inTx runs fn on the queries of one transaction: a change and its audit
// row commit together.
func (s *Service) inTx(ctx context.Context, fn func(q *db.Queries) error) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error { return fn(s.q.WithTx(tx)) })
}

// MaxArchiveBytes is the upload limit.
func (s *Service) MaxArchiveBytes() int64 { return s.cfg.MaxArchiveBytes }

// Workers is the number of workers Run starts.
func (s *Service) Workers() int { return s.cfg.Workers }

// SubmitInput is POST /v1/admin/builds (JSON, or the multipart config part).
type SubmitInput struct {
	Name         string       `json:"name"`
	BaseTemplate string       `json:"base_template"`
	Recipe       []string     `json:"recipe"`
	RecipeText   *string      `json:"recipe_text"`
	Healthcheck  *Healthcheck `json:"healthcheck"`
	VCPUs        *int         `json:"vcpus"`
	MemoryMB     *int         `json:"memory_mb"`
	DiskMB       *int         `json:"disk_mb"`
}

func nameTaken(name string) error {
	return &service.Error{Kind: service.CodeNameTaken.Kind(), Code: service.CodeNameTaken, Field: "name",
		Message: fmt.Sprintf("a platform template or a live build named %q exists", name)}
}

// parseRecipe reads recipe or recipe_text (exactly one).
func parseRecipe(in SubmitInput) ([]Step, error) {
	var (
		steps []Step
		err   error
	)
	switch {
	case in.RecipeText != nil && in.Recipe != nil:
		return nil, service.Invalid("recipe", "give recipe or recipe_text, not both")
	case in.RecipeText != nil:
		steps, err = ParseText(*in.RecipeText)
	case in.Recipe != nil:
		steps, err = ParseLines(in.Recipe)
	default:
		return nil, service.Invalid("recipe", "recipe (a list of steps) or recipe_text is required")
	}
	if err != nil {
		return nil, service.Invalid("recipe", "recipe: %v", err)
	}
	return steps, nil
}

// Submit checks a build request and queues it. archive may be nil.
func (s *Service) Submit(ctx context.Context, a auth.AuthContext, in SubmitInput, archive []byte) (Build, error) {
	if err := service.RequireAdmin(a); err != nil {
		return Build{}, err
	}
	if err := service.CheckSnapshotName(in.Name); err != nil {
		return Build{}, err
	}
	steps, err := parseRecipe(in)
	if err != nil {
		return Build{}, err
	}
	var hc []byte
	if in.Healthcheck != nil {
		if field, err := in.Healthcheck.Normalize(); err != nil {
			return Build{}, service.Invalid(field, "%v", err)
		}
		hc, _ = json.Marshal(in.Healthcheck)
	}
	var format string
	if len(archive) > 0 {
		if int64(len(archive)) > s.cfg.MaxArchiveBytes {
			return Build{}, &service.Error{Kind: service.CodeTooLarge.Kind(), Code: service.CodeTooLarge, Field: "archive",
				Message: fmt.Sprintf("the archive is larger than %d bytes", s.cfg.MaxArchiveBytes)}
		}
		if format, err = DetectFormat(archive); err == nil {
			var files []ArchiveFile
			if files, err = Files(format, archive); err == nil {
				err = checkCopies(steps, files)
			}
		}
		if err != nil {
			return Build{}, service.Invalid("archive", "%v", err)
		}
	} else if i := slices.IndexFunc(steps, func(st Step) bool { return st.Op == OpCopy }); i >= 0 {
		return Build{}, service.Invalid("archive", "line %d: COPY needs an uploaded archive (multipart part \"archive\")", steps[i].Line)
	}
	if in.BaseTemplate == "" {
		in.BaseTemplate = "minimal"
	}
	var base db.Template
	err = pgx.ErrNoRows
	if isName(in.BaseTemplate) {
		base, err = s.q.GetTemplateByName(ctx, db.GetTemplateByNameParams{Name: in.BaseTemplate, TeamID: &a.TeamID})
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return Build{}, &service.Error{Kind: service.CodeUnknownTemplate.Kind(), Code: service.CodeUnknownTemplate, Field: "base_template",
			Message: fmt.Sprintf("no template named %q", in.BaseTemplate)}
	}
	if err != nil {
		return Build{}, service.Internal("load base template", err)
	}
	vcpus, mem := int(base.Vcpus), int(base.MemoryMb)
	if in.VCPUs != nil {
		vcpus = *in.VCPUs
	}
	if in.MemoryMB != nil {
		mem = *in.MemoryMB
	}
	if err := s.svc.CheckCreate(service.CreateSandboxInput{Template: in.BaseTemplate, VCPUs: &vcpus, MemoryMB: &mem}); err != nil {
		return Build{}, err
	}
	if base.Kind == "snapshot" && (vcpus != int(base.Vcpus) || mem != int(base.MemoryMb)) {
		return Build{}, service.Invalid("vcpus", "a build from snapshot %q keeps its %d vCPUs and %d MB", base.Name, base.Vcpus, base.MemoryMb)
	}
	disk := base.DiskMb
	if in.DiskMB != nil && *in.DiskMB != int(disk) {
		switch {
		case base.Kind == "snapshot":
			return Build{}, service.Invalid("disk_mb", "a build from snapshot %q keeps its %d MiB disk", base.Name, base.DiskMb)
		case *in.DiskMB < int(base.DiskMb) || *in.DiskMB > maxDiskMB:
			return Build{}, service.Invalid("disk_mb", "disk_mb must be between the base template's %d and %d MiB (disks grow, never shrink)", base.DiskMb, maxDiskMB)
		}
		disk = int32(*in.DiskMB)
	}
	if _, err := s.q.GetPlatformTemplate(ctx, in.Name); err == nil {
		return Build{}, nameTaken(in.Name)
	} else if !errors.Is(err, pgx.ErrNoRows) {
		return Build{}, service.Internal("check template name", err)
	}
	recipe, _ := json.Marshal(steps)
	results, _ := json.Marshal(pendingResults(steps))
	var row db.TemplateBuild
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		q := s.q.WithTx(tx)
		var err error
		row, err = q.InsertBuild(ctx, db.InsertBuildParams{ID: ids.New(ids.Build), Name: in.Name, BaseTemplate: base.Name, Recipe: recipe,
			Healthcheck: hc, Steps: results, Vcpus: int32(vcpus), MemoryMb: int32(mem), DiskMb: disk, TeamID: a.TeamID, CreatedBy: a.UserID,
			HasArchive: len(archive) > 0})
		if err != nil {
			return err
		}
		if len(archive) > 0 {
			return q.InsertBuildArchive(ctx, db.InsertBuildArchiveParams{BuildID: row.ID, Format: format, Data: archive})
		}
		return nil
	})
	if isUniqueViolation(err) {
		return Build{}, nameTaken(in.Name)
	}
	if err != nil {
		return Build{}, service.Internal("record build", err)
	}
	// A lost push is repaired by the reaper, which pushes stale queued builds again.
	if err := s.rdb.RPush(ctx, QueueKey, row.ID).Err(); err != nil {
		s.log.WarnContext(ctx, "queue build", "build_id", row.ID, "err", err)
	}
	s.log.InfoContext(ctx, "template build queued", "build_id", row.ID, "name", row.Name, "actor", a.Actor())
	return toBuild(row), nil
}

func isUniqueViolation(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505"
}

func isName(n string) bool { return service.CheckSnapshotName(n) == nil }

// checkCopies makes sure every COPY source is in the archive.
func checkCopies(steps []Step, files []ArchiveFile) error {
	for _, st := range steps {
		if st.Op != OpCopy {
			continue
		}
		if _, err := Select(files, st.Src, st.Path); err != nil {
			return fmt.Errorf("line %d: %w", st.Line, err)
		}
	}
	return nil
}

// Get returns one build.
func (s *Service) Get(ctx context.Context, a auth.AuthContext, id string) (Build, error) {
	if err := service.RequireAdmin(a); err != nil {
		return Build{}, err
	}
	r, err := s.load(ctx, id)
	if err != nil {
		return Build{}, err
	}
	return toBuild(r), nil
}

func (s *Service) load(ctx context.Context, id string) (db.TemplateBuild, error) {
	notFound := service.NotFound(service.CodeBuildNotFound, "build not found")
	if !ids.Valid(ids.Build, id) {
		return db.TemplateBuild{}, notFound
	}
	r, err := s.q.GetBuild(ctx, id)
	if errors.Is(err, pgx.ErrNoRows) {
		return r, notFound
	}
	if err != nil {
		return r, service.Internal("load build", err)
	}
	return r, nil
}

// ListInput filters GET /v1/admin/builds.
type ListInput struct {
	Statuses []Status
	Name     string
	Limit    int
	Cursor   string
}

// Page is one page of builds, newest first.
type Page struct {
	Builds     []Build `json:"builds"`
	NextCursor string  `json:"next_cursor,omitempty"`
}

// List pages through builds.
func (s *Service) List(ctx context.Context, a auth.AuthContext, in ListInput) (Page, error) {
	if err := service.RequireAdmin(a); err != nil {
		return Page{}, err
	}
	if in.Limit == 0 {
		in.Limit = 50
	}
	if in.Limit < 1 || in.Limit > service.MaxPageSize {
		return Page{}, service.Invalid("limit", "limit must be between 1 and %d", service.MaxPageSize)
	}
	st := make([]string, 0, len(in.Statuses))
	for _, v := range in.Statuses {
		if !slices.Contains(allStatuses, v) {
			return Page{}, service.Invalid("status", "unknown status %q; use queued, running, succeeded, failed or cancelled", v)
		}
		st = append(st, string(v))
	}
	if in.Name != "" && !isName(in.Name) {
		return Page{}, service.Invalid("name", "name is not a template name")
	}
	p := db.ListBuildsParams{Statuses: st, Name: in.Name, Lim: int32(in.Limit + 1)}
	if in.Cursor != "" {
		t, id, err := service.DecodeCursor(in.Cursor, ids.Build)
		if err != nil {
			return Page{}, service.Invalid("cursor", "cursor is not one this API returned")
		}
		p.CursorCreatedAt, p.CursorID = &t, id
	}
	rows, err := s.q.ListBuilds(ctx, p)
	if err != nil {
		return Page{}, service.Internal("list builds", err)
	}
	page := Page{Builds: make([]Build, 0, len(rows))}
	if len(rows) > in.Limit {
		rows = rows[:in.Limit]
		last := rows[len(rows)-1]
		page.NextCursor = service.EncodeCursor(last.CreatedAt, last.ID)
	}
	for _, r := range rows {
		page.Builds = append(page.Builds, toBuild(r))
	}
	return page, nil
}

// Cancel ends a queued build at once, or asks a running build's worker to
// stop (it sees the request at its next lease renewal, within seconds, and
// destroys the build sandbox).
func (s *Service) Cancel(ctx context.Context, a auth.AuthContext, id string) (Build, error) {
	if err := service.RequireAdmin(a); err != nil {
		return Build{}, err
	}
	r, err := s.load(ctx, id)
	if err != nil {
		return Build{}, err
	}
	var row db.TemplateBuild
	err = s.inTx(ctx, func(q *db.Queries) error {
		var err error
		if row, err = q.CancelQueuedBuild(ctx, r.ID); err != nil {
			return err
		}
		return s.audit.TemplateBuildCancelled(ctx, q, service.ActorOf(a), row)
	})
	switch {
	case err == nil:
		s.publish(ctx, r.ID, Event{Type: "end", Status: StatusCancelled})
		return toBuild(row), nil
	case !errors.Is(err, pgx.ErrNoRows):
		return Build{}, service.Internal("cancel build", err)
	}
	row, err = s.q.RequestBuildCancel(ctx, r.ID)
	if errors.Is(err, pgx.ErrNoRows) {
		now, lerr := s.load(ctx, id)
		if lerr != nil {
			return Build{}, lerr
		}
		return Build{}, service.Conflict(service.CodeBuildFinished, fmt.Sprintf("build %s already %s", id, now.Status))
	}
	if err != nil {
		return Build{}, service.Internal("cancel build", err)
	}
	return toBuild(row), nil
}

// Event is one live message of a build's log stream.
type Event struct {
	// Type: step (a step changed status), output (a chunk of a step's
	// output), end (the build ended; Status is its final status).
	Type   string      `json:"type"`
	Index  int         `json:"index"`
	Stream string      `json:"stream,omitempty"`
	Data   string      `json:"data,omitempty"`
	Step   *StepResult `json:"step,omitempty"`
	Status Status      `json:"status,omitempty"`
}

func (s *Service) publish(ctx context.Context, id string, ev Event) {
	b, _ := json.Marshal(ev)
	if err := s.rdb.Publish(context.WithoutCancel(ctx), logChannel(id), b).Err(); err != nil {
		s.log.DebugContext(ctx, "publish build event", "build_id", id, "err", err)
	}
}

// Follow streams a build's live events to send: first the build as it is
// recorded, then what its worker publishes (on any replica), until the
// build ends or ctx does. Redis carries the live part; a reader that joins
// late gets the recorded step tails from the first message.
func (s *Service) Follow(ctx context.Context, a auth.AuthContext, id string, first func(Build) error, send func(Event) error) error {
	if err := service.RequireAdmin(a); err != nil {
		return err
	}
	if _, err := s.load(ctx, id); err != nil {
		return err
	}
	sub := s.rdb.Subscribe(ctx, logChannel(id))
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		return &service.Error{Kind: service.CodeServiceUnavailable.Kind(), Code: service.CodeServiceUnavailable, Message: "live build logs need Redis", Err: err}
	}
	// Read after subscribing, so nothing falls between the two.
	r, err := s.load(ctx, id)
	if err != nil {
		return err
	}
	if err := first(toBuild(r)); err != nil {
		return err
	}
	if Status(r.Status).Final() {
		return send(Event{Type: "end", Status: Status(r.Status)})
	}
	ch := sub.Channel()
	// The row is checked now and then: an end published while Redis was
	// away must not leave the stream open for ever.
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case m, ok := <-ch:
			if !ok {
				return nil
			}
			var ev Event
			if json.Unmarshal([]byte(m.Payload), &ev) != nil {
				continue
			}
			if err := send(ev); err != nil {
				return err
			}
			if ev.Type == "end" {
				return nil
			}
		case <-tick.C:
			r, err := s.q.GetBuild(ctx, id)
			if err == nil && Status(r.Status).Final() {
				return send(Event{Type: "end", Status: Status(r.Status)})
			}
		}
	}
}
