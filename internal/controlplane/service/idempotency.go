package service

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/wrenn-dev/wrenn/internal/controlplane/auth"
	"github.com/wrenn-dev/wrenn/internal/db"
)

// Idempotency-Key rules: how long a key's first result is replayed, and
// the longest key.
const (
	IdempotencyWindow = 24 * time.Hour
	MaxIdempotencyKey = 255
)

// IdempotentCall is one request that carries an Idempotency-Key.
type IdempotentCall struct {
	// Route names what the request does and on what (one sandbox's pause
	// is not another's), so a key is scoped per team, route and key.
	Route string
	Key   string
	// Body is the request body as sent; a retry must send the same.
	Body []byte
	// NewResourceID names what the first call makes (a sandbox or
	// snapshot ID), chosen before it starts so a retry finds it.
	NewResourceID func() string
}

// Response is an HTTP answer as stored for replay.
type Response struct {
	Status int
	Body   []byte
	// Replayed says it is the first call's answer, sent again.
	Replayed bool
}

// CheckIdempotencyKey validates the header's value.
func CheckIdempotencyKey(key string) error {
	if key == "" || len(key) > MaxIdempotencyKey {
		return Invalid("Idempotency-Key", "the Idempotency-Key header must be 1-%d bytes", MaxIdempotencyKey)
	}
	for i := 0; i < len(key); i++ {
		if key[i] < 0x20 || key[i] > 0x7e {
			return Invalid("Idempotency-Key", "the Idempotency-Key header must be printable ASCII")
		}
	}
	return nil
}

// Idempotent runs the call once per team, route and key within
// IdempotencyWindow: a retry with the same body gets the first answer
// (also when another replica gave it), one with another body 422
// idempotency_key_reused, one while the first still runs 409
// idempotency_key_in_progress. A call in progress is leased to its replica
// (renewed while run runs); if that replica dies, a retry after the lease
// expired takes the call over and runs it again with the same resource ID,
// so it finds what the first attempt made. Answers of 500 and above are
// not kept: a retry runs the call again.
//
// run learns the resource ID and whether it takes over a call that a dead
// replica began (which may have finished its work).
func (s *Service) Idempotent(ctx context.Context, a auth.AuthContext, call IdempotentCall, run func(ctx context.Context, resourceID string, takenOver bool) Response) (Response, error) {
	if err := CheckIdempotencyKey(call.Key); err != nil {
		return Response{}, err
	}
	sum := sha256.Sum256(call.Body)
	hash := hex.EncodeToString(sum[:])
	attempt := newOpID()
	ttl := s.limits.OperationLease.Seconds()
	var (
		entry     db.IdempotencyKey
		takenOver bool
	)
	// A few rounds: the entry may be removed or taken between two reads.
	for round := 0; ; round++ {
		if round == 3 {
			return Response{}, Errorf(CodeIdempotencyKeyInProgress, "a request with this Idempotency-Key is in progress; retry later")
		}
		e, err := s.q.BeginIdempotencyKey(ctx, db.BeginIdempotencyKeyParams{TeamID: a.TeamID, Route: call.Route, Key: call.Key,
			RequestHash: hash, ResourceID: call.NewResourceID(), Owner: s.replica, Attempt: attempt, TtlSeconds: ttl,
			WindowSeconds: IdempotencyWindow.Seconds()})
		if err == nil {
			entry = e
			break
		}
		if !isNoRows(err) {
			return Response{}, Internal("record idempotency key", err)
		}
		cur, err := s.q.GetIdempotencyKey(ctx, db.GetIdempotencyKeyParams{TeamID: a.TeamID, Route: call.Route, Key: call.Key})
		if isNoRows(err) {
			continue
		}
		if err != nil {
			return Response{}, Internal("load idempotency key", err)
		}
		switch {
		case cur.RequestHash != hash:
			return Response{}, Errorf(CodeIdempotencyKeyReused, "this Idempotency-Key was used with another request body in the last %s", IdempotencyWindow)
		case cur.StatusCode != nil:
			return Response{Status: int(*cur.StatusCode), Body: cur.Response, Replayed: true}, nil
		case !cur.LeaseExpired:
			return Response{}, Errorf(CodeIdempotencyKeyInProgress, "a request with this Idempotency-Key is in progress; retry later")
		}
		e, err = s.q.TakeOverIdempotencyKey(ctx, db.TakeOverIdempotencyKeyParams{Owner: s.replica, Attempt: attempt, TtlSeconds: ttl,
			TeamID: a.TeamID, Route: call.Route, Key: call.Key, SeenAttempt: cur.Attempt})
		if err == nil {
			s.log.InfoContext(ctx, "idempotent request taken over from a replica that stopped", "route", call.Route,
				"resource_id", e.ResourceID, "previous_owner", cur.Owner)
			entry, takenOver = e, true
			break
		}
		if !isNoRows(err) {
			return Response{}, Internal("take over idempotency key", err)
		}
	}

	// The answer is recorded even when the client hung up meanwhile.
	dctx := context.WithoutCancel(ctx)
	key := db.RenewIdempotencyKeyParams{TeamID: a.TeamID, Route: call.Route, Key: call.Key, Attempt: attempt}
	stop := s.keepAlive(dctx, "idempotency key", func(ctx context.Context, ttl time.Duration) (bool, error) {
		p := key
		p.TtlSeconds = ttl.Seconds()
		n, err := s.q.RenewIdempotencyKey(ctx, p)
		return n == 1, err
	})
	res := run(ctx, entry.ResourceID, takenOver)
	stop()
	fctx, cancel := context.WithTimeout(dctx, 5*time.Second)
	defer cancel()
	if res.Status >= 500 {
		if err := s.q.ReleaseIdempotencyKey(fctx, db.ReleaseIdempotencyKeyParams{TeamID: a.TeamID, Route: call.Route, Key: call.Key, Attempt: attempt}); err != nil {
			s.log.WarnContext(ctx, "release idempotency key; it is taken over once its lease expires", "route", call.Route, "err", err)
		}
		return res, nil
	}
	n, err := s.q.FinishIdempotencyKey(fctx, db.FinishIdempotencyKeyParams{StatusCode: new(int32(res.Status)), Response: res.Body,
		TeamID: a.TeamID, Route: call.Route, Key: call.Key, Attempt: attempt})
	if err != nil {
		s.log.WarnContext(ctx, "record idempotent answer; a retry runs the call again", "route", call.Route, "err", err)
	} else if n == 0 {
		s.log.WarnContext(ctx, "idempotent answer not recorded: another attempt took the key over", "route", call.Route)
	}
	return res, nil
}

// DeleteOldIdempotencyKeys forgets keys older than the window.
func (s *Service) DeleteOldIdempotencyKeys(ctx context.Context) (int64, error) {
	n, err := s.q.DeleteOldIdempotencyKeys(ctx, IdempotencyWindow.Seconds())
	if err != nil {
		return 0, fmt.Errorf("delete old idempotency keys: %w", err)
	}
	return n, nil
}

// AlreadyIn answers a taken-over pause or resume (an idempotent retry whose
// first call's replica died): if the call failed only because the sandbox
// is already in the state the first call was to reach, that call did its
// work, and the sandbox is the answer. Any other outcome stands.
func (s *Service) AlreadyIn(ctx context.Context, a auth.AuthContext, id string, want Status, sb Sandbox, err error) (Sandbox, error) {
	se, ok := AsError(err)
	if !ok || se.Code != CodeInvalidState {
		return sb, err
	}
	now, gerr := s.GetSandbox(ctx, a, id)
	if gerr != nil || now.Status != want {
		return sb, err
	}
	return now, nil
}
