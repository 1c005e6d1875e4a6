package service

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"time"

	"github.com/wrenn-dev/wrenn/internal/controlplane/auth"
	"github.com/wrenn-dev/wrenn/internal/controlplane/ids"
	"github.com/wrenn-dev/wrenn/internal/db"
)

// Lifetime is a sandbox's end-of-life timer: after Seconds of running the
// sandbox is destroyed, or paused when PauseAtEnd. It is E2B's timeout;
// unlike the idle timeout, activity does not move it (SetSandboxEnd does).
type Lifetime struct {
	Seconds    int
	PauseAtEnd bool
}

// What a sandbox's end does (the on_end column).
const (
	onEndDestroy = "destroy"
	onEndPause   = "pause"
)

// params are l's insert parameters; nil: no end.
func (l *Lifetime) params() (endAfter *int32, onEnd *string) {
	if l == nil {
		return nil, nil
	}
	onEnd = new(onEndDestroy)
	if l.PauseAtEnd {
		onEnd = new(onEndPause)
	}
	return new(int32(l.Seconds)), onEnd
}

func (s *Service) checkLifetime(sec int) error {
	if sec < 1 || sec > s.limits.MaxTimeoutSec {
		return Invalid("timeout", "timeout must be between 1 and %d seconds", s.limits.MaxTimeoutSec)
	}
	return nil
}

// newEnvdToken mints a sandbox's envd access token: 32 random bytes, hex
// (what the agent accepts: letters and digits, 16-128 of them).
func newEnvdToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	return hex.EncodeToString(b)
}

// SetSandboxEnd moves a running sandbox's end-of-life timer to sec seconds
// from now; onlyLater keeps an end already set later than that.
func (s *Service) SetSandboxEnd(ctx context.Context, a auth.AuthContext, id string, sec int, onlyLater bool) (Sandbox, error) {
	if err := s.checkLifetime(sec); err != nil {
		return Sandbox{}, err
	}
	r, err := s.loadSandbox(ctx, a, id)
	if err != nil {
		return Sandbox{}, err
	}
	if Status(r.Status) != StatusRunning {
		return Sandbox{}, wrongState(r, StatusRunning)
	}
	row, err := s.q.SetSandboxEndAt(ctx, db.SetSandboxEndAtParams{ID: id, TeamID: a.TeamID, EndAfterSec: int32(sec), OnlyLater: onlyLater})
	if isNoRows(err) {
		return Sandbox{}, Conflict(CodeInvalidState, "the sandbox stopped running")
	}
	if err != nil {
		return Sandbox{}, Internal("set sandbox end", err)
	}
	return toSandbox(row), nil
}

// endBatch bounds the sandboxes one EndSandboxes pass ends.
const endBatch = 50

// EndSandboxes ends the running sandboxes whose end-of-life timer passed,
// through the same pause and destroy as a user's (the one state seam), as
// the actor ActorSandboxEnd. It returns how many it ended.
func (s *Service) EndSandboxes(ctx context.Context) (int, error) {
	rows, err := s.q.ListEndedSandboxes(ctx, endBatch)
	if err != nil {
		return 0, Internal("list ended sandboxes", err)
	}
	n := 0
	for _, r := range rows {
		a := auth.AuthContext{Method: auth.MethodSystem, SystemActor: ActorSandboxEnd.ID, TeamID: r.TeamID}
		if r.OnEnd == onEndPause {
			_, err = s.PauseSandbox(ctx, a, r.ID)
		} else {
			_, err = s.DestroySandbox(ctx, a, r.ID)
		}
		var se *Error
		switch {
		case err == nil:
			n++
		case errors.As(err, &se) && (se.Kind == KindConflict || se.Kind == KindNotFound):
			// Paused, destroyed or busy meanwhile: the next pass sees it again if it still runs.
		default:
			s.log.WarnContext(ctx, "end sandbox", "sandbox_id", r.ID, "on_end", r.OnEnd, "err", err)
		}
	}
	return n, nil
}

// RunSandboxEnds runs EndSandboxes every interval until ctx ends (under a
// singleton lease: see app).
func (s *Service) RunSandboxEnds(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if _, err := s.EndSandboxes(ctx); err != nil && ctx.Err() == nil {
			s.log.WarnContext(ctx, "end sandboxes", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// AuthorizeEnvd returns the team of sandbox id when token is its envd
// access token (compared in constant time); anything else, including a
// sandbox that is stopped or has no token, is a 401 that says nothing
// about whether the sandbox exists.
func (s *Service) AuthorizeEnvd(ctx context.Context, id, token string) (string, error) {
	bad := Unauthorized(CodeInvalidToken, "the envd access token (X-Access-Token) is not this sandbox's")
	if token == "" || !ids.Valid(ids.Sandbox, id) {
		return "", bad
	}
	r, err := s.q.GetSandboxByID(ctx, id)
	if isNoRows(err) {
		return "", bad
	}
	if err != nil {
		return "", Internal("load sandbox", err)
	}
	if r.EnvdAccessToken == nil || subtle.ConstantTimeCompare([]byte(*r.EnvdAccessToken), []byte(token)) != 1 {
		return "", bad
	}
	return r.TeamID, nil
}
