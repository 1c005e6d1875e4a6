package builds

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/wrenn-dev/wrenn/internal/controlplane/auth"
	"github.com/wrenn-dev/wrenn/internal/controlplane/ids"
	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
	"github.com/wrenn-dev/wrenn/internal/db"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// tailBytes bounds each step's recorded stdout and stderr; the end is kept.
const tailBytes = 8 << 10

// maxAttempts: a build whose worker died is retried from the start once,
// then failed.
const maxAttempts = 2

var (
	errCancelled = errors.New("cancelled")
	errLeaseLost = errors.New("the worker lost its lease on the build")
)

// Run starts the workers and blocks until ctx ends; each takes one build at
// a time from the queue.
func (s *Service) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for i := range s.cfg.Workers {
		wg.Go(func() { s.work(ctx, fmt.Sprintf("%s/w%d", s.cfg.Replica, i)) })
	}
	wg.Wait()
}

func (s *Service) work(ctx context.Context, worker string) {
	for ctx.Err() == nil {
		res, err := s.rdb.BLPop(ctx, 5*time.Second, QueueKey).Result()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			if ctx.Err() == nil {
				s.log.WarnContext(ctx, "build queue", "worker", worker, "err", err)
				sleep(ctx, 2*time.Second)
			}
			continue
		}
		var b db.TemplateBuild
		err = s.inTx(ctx, func(q *db.Queries) error {
			var err error
			if b, err = q.ClaimBuild(ctx, db.ClaimBuildParams{ID: res[1], Worker: worker, TtlSeconds: s.cfg.LeaseTTL.Seconds()}); err != nil {
				return err
			}
			return s.audit.TemplateBuildStarted(ctx, q, service.ActorBuildWorker, b)
		})
		if errors.Is(err, pgx.ErrNoRows) {
			continue // taken by another worker, cancelled, or gone
		}
		if err != nil {
			s.log.WarnContext(ctx, "claim build", "build_id", res[1], "err", err)
			// Put it back for another try; the row is still queued.
			_ = s.rdb.RPush(context.WithoutCancel(ctx), QueueKey, res[1]).Err()
			sleep(ctx, 2*time.Second)
			continue
		}
		s.runBuild(ctx, worker, b)
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// builder is one build in progress on one worker.
type builder struct {
	s       *Service
	b       db.TemplateBuild
	worker  string
	a       auth.AuthContext
	steps   []Step
	results []StepResult
	sandbox string
	mu      sync.Mutex // results, sandbox
}

// actorOf is the submitter the build sandbox runs as: its team's limits
// and placement apply, and its actions are recorded under them.
func actorOf(b db.TemplateBuild) auth.AuthContext {
	return auth.AuthContext{Method: auth.MethodJWT, UserID: b.CreatedBy, TeamID: b.TeamID, Role: "owner", IsAdmin: true}
}

func (s *Service) runBuild(ctx context.Context, worker string, b db.TemplateBuild) {
	bl := &builder{s: s, b: b, worker: worker, a: actorOf(b)}
	_ = json.Unmarshal(b.Recipe, &bl.steps)
	bl.results = pendingResults(bl.steps)
	log := s.log.With("build_id", b.ID, "name", b.Name, "worker", worker, "attempt", b.Attempts)
	s.publish(ctx, b.ID, Event{Type: "step", Index: 0, Status: StatusRunning})

	bctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	renewDone := make(chan struct{})
	go func() { defer close(renewDone); bl.renew(bctx, cancel) }()

	tplID, err := bl.execute(bctx)
	cancel(nil)
	<-renewDone
	// The sandbox goes whatever happened, on a context of its own: the
	// build's may be cancelled already.
	bl.destroySandbox(ctx)
	if cause := context.Cause(bctx); errors.Is(cause, errLeaseLost) {
		log.WarnContext(ctx, "template build abandoned: lease lost; the reaper decides its fate")
		return
	}
	status, msg := StatusSucceeded, ""
	switch {
	case errors.Is(err, errCancelled) || errors.Is(context.Cause(bctx), errCancelled):
		status, msg = StatusCancelled, "cancelled"
	case err != nil:
		status, msg = StatusFailed, err.Error()
	}
	if ctx.Err() != nil && status != StatusSucceeded {
		// This control plane is stopping: leave the build to the reaper
		// (retried once) rather than fail it for our own shutdown.
		log.InfoContext(ctx, "template build interrupted by shutdown")
		return
	}
	var tpl *string
	if status == StatusSucceeded {
		tpl = &tplID
	}
	fctx, fcancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer fcancel()
	ferr := s.inTx(fctx, func(q *db.Queries) error {
		row, err := q.FinishBuild(fctx, db.FinishBuildParams{ID: b.ID, Worker: worker, Status: string(status), ErrorMessage: msg,
			TemplateID: tpl, Steps: bl.resultsJSON(), CurrentStep: bl.current()})
		if err != nil {
			return err
		}
		return s.recordEnd(fctx, q, row)
	})
	if ferr != nil {
		log.ErrorContext(ctx, "record build end", "status", status, "err", ferr)
		if tpl != nil {
			// Not recorded as succeeded: the template must not outlive it.
			bl.dropTemplate(fctx, b.Name)
		}
		return
	}
	if err := s.q.DeleteBuildArchive(fctx, b.ID); err != nil {
		log.WarnContext(ctx, "drop build archive", "err", err)
	}
	s.publish(fctx, b.ID, Event{Type: "end", Status: status})
}

// recordEnd writes the audit row of a build the worker ended.
func (s *Service) recordEnd(ctx context.Context, q *db.Queries, b db.TemplateBuild) error {
	switch Status(b.Status) {
	case StatusSucceeded:
		return s.audit.TemplateBuildSucceeded(ctx, q, service.ActorBuildWorker, b)
	case StatusCancelled:
		return s.audit.TemplateBuildCancelled(ctx, q, service.ActorBuildWorker, b)
	default:
		return s.audit.TemplateBuildFailed(ctx, q, service.ActorBuildWorker, b)
	}
}

// renew extends the worker's lease every third of its length; a cancel
// request or a lost lease cancels the build.
func (bl *builder) renew(ctx context.Context, cancel context.CancelCauseFunc) {
	every := bl.s.cfg.LeaseTTL / 3
	t := time.NewTicker(min(every, 2*time.Second))
	defer t.Stop()
	lastOK := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cancelled, err := bl.s.q.RenewBuildLease(ctx, db.RenewBuildLeaseParams{ID: bl.b.ID, Worker: bl.worker, TtlSeconds: bl.s.cfg.LeaseTTL.Seconds()})
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			cancel(errLeaseLost)
			return
		case err != nil:
			// Fence ourselves: past the lease's length without a renewal
			// another replica may take the build over.
			if time.Since(lastOK) > bl.s.cfg.LeaseTTL*2/3 {
				cancel(errLeaseLost)
				return
			}
		case cancelled:
			cancel(errCancelled)
			return
		default:
			lastOK = time.Now()
		}
	}
}

func (bl *builder) resultsJSON() []byte {
	bl.mu.Lock()
	defer bl.mu.Unlock()
	b, _ := json.Marshal(bl.results)
	return b
}

func (bl *builder) current() int32 {
	bl.mu.Lock()
	defer bl.mu.Unlock()
	for i, r := range bl.results {
		if r.Status != StepSucceeded {
			return int32(i)
		}
	}
	return int32(len(bl.results))
}

func (bl *builder) record(ctx context.Context) {
	bl.mu.Lock()
	sb := bl.sandbox
	bl.mu.Unlock()
	var sbp *string
	if sb != "" {
		sbp = &sb
	}
	if _, err := bl.s.q.RecordBuildProgress(ctx, db.RecordBuildProgressParams{ID: bl.b.ID, Worker: bl.worker, Steps: bl.resultsJSON(),
		CurrentStep: bl.current(), SandboxID: sbp}); err != nil {
		bl.s.log.WarnContext(ctx, "record build progress", "build_id", bl.b.ID, "err", err)
	}
}

// setStep changes step i's result and tells followers.
func (bl *builder) setStep(ctx context.Context, i int, f func(*StepResult)) {
	bl.mu.Lock()
	f(&bl.results[i])
	r := bl.results[i]
	bl.mu.Unlock()
	bl.record(ctx)
	bl.s.publish(ctx, bl.b.ID, Event{Type: "step", Index: i, Step: &r})
}

// execute runs the build; it returns the new template's ID.
func (bl *builder) execute(ctx context.Context) (string, error) {
	var files []ArchiveFile
	if bl.b.HasArchive {
		ar, err := bl.s.q.GetBuildArchive(ctx, bl.b.ID)
		if err != nil {
			return "", fmt.Errorf("read the build's archive: %w", err)
		}
		if files, err = Files(ar.Format, ar.Data); err != nil {
			return "", err
		}
	}
	if err := bl.createSandbox(ctx); err != nil {
		return "", err
	}
	env := map[string]string{}
	var workdir, user string
	for i, st := range bl.steps {
		if err := ctx.Err(); err != nil {
			return "", context.Cause(ctx)
		}
		started := time.Now()
		bl.setStep(ctx, i, func(r *StepResult) { r.Status, r.StartedAt = StepRunning, &started })
		code, err := bl.runStep(ctx, i, st, env, &workdir, &user, files)
		bl.setStep(ctx, i, func(r *StepResult) {
			r.DurationMS = time.Since(started).Milliseconds()
			r.ExitCode = code
			r.Status = StepSucceeded
			if err != nil {
				r.Status, r.Error = StepFailed, err.Error()
			}
		})
		if err != nil {
			if c := context.Cause(ctx); c != nil {
				return "", c
			}
			bl.skipRest(i + 1)
			return "", fmt.Errorf("step %d (line %d, %s) failed: %w", i+1, st.Line, st.Text(), err)
		}
	}
	var hc *Healthcheck
	if len(bl.b.Healthcheck) > 0 && string(bl.b.Healthcheck) != "null" {
		hc = &Healthcheck{}
		_ = json.Unmarshal(bl.b.Healthcheck, hc)
		if err := bl.healthcheck(ctx, *hc, env, workdir, user); err != nil {
			return "", err
		}
	}
	tplID := ids.New(ids.Template)
	_, err := bl.s.svc.PublishTemplate(ctx, bl.a, tplID, service.PublishInput{SandboxID: bl.sandboxID(), Name: bl.b.Name, BuildID: bl.b.ID,
		Snapshot: hc != nil, Env: env, Workdir: workdir, User: user})
	if err != nil {
		if c := context.Cause(ctx); c != nil {
			return "", c
		}
		return "", fmt.Errorf("make the template: %w", err)
	}
	return tplID, nil
}

func (bl *builder) skipRest(from int) {
	bl.mu.Lock()
	for i := from; i < len(bl.results); i++ {
		bl.results[i].Status = StepSkipped
	}
	bl.mu.Unlock()
}

func (bl *builder) sandboxID() string {
	bl.mu.Lock()
	defer bl.mu.Unlock()
	return bl.sandbox
}

// createSandbox starts the build's sandbox from the base template, waiting
// while every host already runs its share of builds.
func (bl *builder) createSandbox(ctx context.Context) error {
	vcpus, mem := int(bl.b.Vcpus), int(bl.b.MemoryMb)
	in := service.CreateSandboxInput{Template: bl.b.BaseTemplate, VCPUs: &vcpus, MemoryMB: &mem,
		Metadata: map[string]string{"wrenn.build": bl.b.ID}, InternetAccess: new(true),
		Build: &service.BuildPlacement{BuildID: bl.b.ID, PerHost: bl.s.cfg.PerHost, DiskMB: int(bl.b.DiskMb)}}
	for {
		sb, err := bl.s.svc.CreateSandbox(ctx, bl.a, in)
		if err == nil {
			bl.mu.Lock()
			bl.sandbox = sb.ID
			bl.mu.Unlock()
			bl.record(ctx)
			return nil
		}
		if c := context.Cause(ctx); c != nil {
			return c
		}
		var se *service.Error
		if !errors.As(err, &se) || se.Code != service.CodeNoCapacity {
			return fmt.Errorf("start the build sandbox: %w", err)
		}
		bl.s.log.InfoContext(ctx, "build waits for host room", "build_id", bl.b.ID, "reason", se.Message)
		sleep(ctx, 3*time.Second)
	}
}

// destroySandbox removes the build sandbox through the sandbox service.
func (bl *builder) destroySandbox(ctx context.Context) {
	id := bl.sandboxID()
	if id == "" {
		return
	}
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	if _, err := bl.s.svc.DestroySandbox(dctx, bl.a, id); err != nil {
		bl.s.log.WarnContext(ctx, "destroy build sandbox", "build_id", bl.b.ID, "sandbox_id", id, "err", err)
	}
}

// dropTemplate removes a template whose build could not be recorded.
func (bl *builder) dropTemplate(ctx context.Context, name string) {
	if _, err := bl.s.svc.DeleteTemplate(ctx, bl.a, name); err != nil {
		bl.s.log.ErrorContext(ctx, "drop template of unrecorded build", "build_id", bl.b.ID, "template", name, "err", err)
	}
}

// tail keeps the last tailBytes of b, on a UTF-8 boundary.
func tail(b []byte) string {
	if len(b) > tailBytes {
		b = b[len(b)-tailBytes:]
		for len(b) > 0 && b[0]&0xc0 == 0x80 {
			b = b[1:]
		}
	}
	return strings.ToValidUTF8(string(b), "\uFFFD")
}

// runStep runs one step; code is the exit code of commands.
func (bl *builder) runStep(ctx context.Context, i int, st Step, env map[string]string, workdir, user *string, files []ArchiveFile) (*int32, error) {
	switch st.Op {
	case OpEnv:
		env[st.Key] = st.Value
		return nil, nil
	case OpUser:
		*user = st.User
		// Fail here, not in every later step, when the user does not exist.
		return bl.exec(ctx, i, []string{"id", st.User}, nil, "", "", time.Minute)
	case OpWorkdir:
		code, err := bl.exec(ctx, i, []string{"mkdir", "-p", st.Path}, nil, "", "", time.Minute)
		if err == nil {
			*workdir = st.Path
		}
		return code, err
	case OpCopy:
		sel, err := Select(files, st.Src, st.Path)
		if err != nil {
			return nil, err
		}
		for dst, f := range sel {
			if err := bl.copyFile(ctx, dst, *workdir, f); err != nil {
				return nil, err
			}
		}
		return nil, nil
	case OpStart:
		t := 0
		in := service.ExecInput{Cmd: "/bin/sh", Args: []string{"-c", st.Cmd}, Env: maps.Clone(env), Cwd: *workdir, User: *user,
			Background: true, Tag: fmt.Sprintf("build-start-%d", i), TimeoutSec: &t}
		if _, _, err := bl.s.svc.Exec(ctx, bl.a, bl.sandboxID(), in); err != nil {
			return nil, fmt.Errorf("start: %w", err)
		}
		return nil, nil
	default:
		return bl.exec(ctx, i, []string{"/bin/sh", "-c", st.Cmd}, env, *workdir, *user, time.Duration(st.Timeout))
	}
}

func (bl *builder) copyFile(ctx context.Context, dst, workdir string, f ArchiveFile) error {
	if !path.IsAbs(dst) {
		dst = path.Join(workdir, dst)
	}
	r, err := f.Open()
	if err != nil {
		return fmt.Errorf("COPY %s: %w", f.Path, err)
	}
	defer r.Close()
	if _, err := bl.s.svc.WriteFile(ctx, bl.a, bl.sandboxID(), dst, uint32(f.Mode), r); err != nil {
		return fmt.Errorf("COPY %s to %s: %w", f.Path, dst, err)
	}
	return nil
}

// exec runs argv through the exec stream, publishing its output as it
// comes and keeping its tails; a non-zero exit or a timeout is an error.
func (bl *builder) exec(ctx context.Context, i int, argv []string, env map[string]string, cwd, user string, timeout time.Duration) (*int32, error) {
	secs := int(timeout.Seconds())
	in := service.ExecInput{Cmd: argv[0], Args: argv[1:], Env: maps.Clone(env), Cwd: cwd, User: user, TimeoutSec: &secs}
	// The agent kills the process at the timeout; our own deadline, a
	// little later, covers a stream that never ends.
	sctx, cancel := context.WithTimeout(ctx, timeout+15*time.Second)
	defer cancel()
	start := time.Now()
	st, err := bl.s.svc.ExecStream(sctx, bl.a, bl.sandboxID(), in)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	var stdout, stderr []byte
	keep := func(buf []byte, p []byte) []byte {
		buf = append(buf, p...)
		if len(buf) > 2*tailBytes {
			buf = buf[len(buf)-tailBytes:]
		}
		return buf
	}
	var end *pb.ExecStreamResponse_End
	for st.Receive() {
		m := st.Msg()
		switch {
		case m.GetStdout() != nil:
			stdout = keep(stdout, m.GetStdout())
			bl.s.publish(ctx, bl.b.ID, Event{Type: "output", Index: i, Stream: "stdout", Data: strings.ToValidUTF8(string(m.GetStdout()), "\uFFFD")})
		case m.GetStderr() != nil:
			stderr = keep(stderr, m.GetStderr())
			bl.s.publish(ctx, bl.b.ID, Event{Type: "output", Index: i, Stream: "stderr", Data: strings.ToValidUTF8(string(m.GetStderr()), "\uFFFD")})
		case m.GetEnd() != nil:
			end = m.GetEnd()
		}
	}
	bl.mu.Lock()
	bl.results[i].Stdout, bl.results[i].Stderr = tail(stdout), tail(stderr)
	bl.mu.Unlock()
	if c := context.Cause(ctx); c != nil {
		return nil, c
	}
	if end == nil {
		if time.Since(start) >= timeout {
			return nil, fmt.Errorf("timed out after %s", timeout)
		}
		if err := st.Err(); err != nil {
			return nil, fmt.Errorf("exec stream: %w", err)
		}
		return nil, errors.New("the command's stream ended without an exit status")
	}
	code := end.GetExitCode()
	if time.Since(start) >= timeout && (code != 0 || !end.GetExited()) {
		return &code, fmt.Errorf("timed out after %s and was killed", timeout)
	}
	if code != 0 || !end.GetExited() {
		msg := fmt.Sprintf("exit code %d", code)
		if e := strings.TrimSpace(tail(stderr)); e != "" {
			msg += ": " + lastLines(e, 5)
		}
		return &code, errors.New(msg)
	}
	return &code, nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// healthcheck runs hc until it passes; its output goes to the log stream
// under the index after the last step.
func (bl *builder) healthcheck(ctx context.Context, hc Healthcheck, env map[string]string, workdir, user string) error {
	sleep(ctx, time.Duration(hc.StartPeriod))
	var last error
	for try := 1; try <= hc.Retries; try++ {
		if c := context.Cause(ctx); c != nil {
			return c
		}
		t0 := time.Now()
		code, err := bl.probe(ctx, hc, env, workdir, user)
		if err == nil && code == 0 {
			bl.s.publish(ctx, bl.b.ID, Event{Type: "output", Index: len(bl.steps), Stream: "stdout", Data: fmt.Sprintf("healthcheck passed on try %d\n", try)})
			return nil
		}
		last = err
		if err == nil {
			last = fmt.Errorf("exit code %d", code)
		}
		sleep(ctx, time.Duration(hc.Interval)-time.Since(t0))
	}
	return fmt.Errorf("the healthcheck did not pass in %d tries: %w", hc.Retries, last)
}

func (bl *builder) probe(ctx context.Context, hc Healthcheck, env map[string]string, workdir, user string) (int32, error) {
	secs := max(int(time.Duration(hc.Timeout).Seconds()), 1)
	in := service.ExecInput{Cmd: "/bin/sh", Args: []string{"-c", hc.Cmd}, Env: maps.Clone(env), Cwd: workdir, User: user, TimeoutSec: &secs}
	res, _, err := bl.s.svc.Exec(ctx, bl.a, bl.sandboxID(), in)
	if err != nil {
		return -1, err
	}
	if res.TimedOut {
		return -1, fmt.Errorf("timed out after %s", time.Duration(hc.Timeout))
	}
	return res.ExitCode, nil
}
