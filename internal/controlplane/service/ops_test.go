package service

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/controlplane/auth"
	"github.com/wrenn-dev/wrenn/internal/controlplane/ids"
	"github.com/wrenn-dev/wrenn/internal/db"
	"github.com/wrenn-dev/wrenn/internal/testenv"
)

// Operation claims on real rows: one operation at a time per sandbox (a
// second is 409 invalid_state), destroy takes over, the owner's renewals
// keep the lease alive, an expired one may be claimed again, and ending an
// operation never ends another's.
func TestOperationClaims(t *testing.T) {
	pool, _ := testenv.MigratedPool(t)
	ctx := context.Background()
	tokens, err := auth.NewTokens("test-secret-test-secret-test-secret!", time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Deps{Pool: pool, Tokens: tokens, Passwords: auth.Passwords{Cost: 4}, Replica: "cp-test",
		Limits: Limits{OperationLease: 600 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	q := db.New(pool)
	team, err := q.CreateTeam(ctx, db.CreateTeamParams{ID: ids.New(ids.Team), Name: "t"})
	if err != nil {
		t.Fatal(err)
	}
	a := auth.AuthContext{Method: auth.MethodJWT, UserID: "usr-1", TeamID: team.ID}
	row, err := q.InsertSandbox(ctx, db.InsertSandboxParams{ID: ids.New(ids.Sandbox), TeamID: team.ID, Template: "minimal",
		Vcpus: 1, MemoryMb: 256, DiskMb: 1024, Metadata: json.RawMessage(`{}`), OpID: newOpID(), OpOwner: "cp-test", OpTtlSeconds: 60})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok, err := s.states.Change(ctx, Change{SandboxID: row.ID, From: []Status{StatusPending}, To: StatusRunning, Actor: ActorReconciler, Reason: "test"}); !ok || err != nil {
		t.Fatalf("to running: %v %v", ok, err)
	}
	opOf := func() (op, owner *string, live bool) {
		t.Helper()
		if err := pool.QueryRow(ctx, "SELECT op, op_owner, COALESCE(op_expires_at > now(), false) FROM sandboxes WHERE id = $1", row.ID).Scan(&op, &owner, &live); err != nil {
			t.Fatal(err)
		}
		return op, owner, live
	}
	if op, _, _ := opOf(); op != nil {
		t.Fatalf("a status change left op %q", *op)
	}
	running := []Status{StatusRunning}
	_, pause, err := s.claimOp(ctx, a, row, OpPause, running, false)
	if err != nil {
		t.Fatal(err)
	}
	if op, owner, live := opOf(); op == nil || *op != "pause" || *owner != "cp-test" || !live {
		t.Fatalf("claimed: op %v owner %v live %v", op, owner, live)
	}
	cases := []struct {
		name     string
		op       Op
		from     []Status
		takeOver bool
		wantErr  string // "" = claimed
	}{
		{"a second operation waits", OpSnapshot, []Status{StatusRunning, StatusPaused}, false, "has a pause in progress"},
		{"the wrong state", OpResume, []Status{StatusPaused}, false, "it must be paused"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := s.claimOp(ctx, a, row, tc.op, tc.from, tc.takeOver)
			var se *Error
			if !errors.As(err, &se) || se.Code != CodeInvalidState || !strings.Contains(se.Message, tc.wantErr) {
				t.Fatalf("claim = %v, want invalid_state %q", err, tc.wantErr)
			}
		})
	}
	// Renewals (every third of the lease) keep it past its first TTL.
	time.Sleep(time.Second)
	if _, _, live := opOf(); !live {
		t.Fatal("the renewed lease expired")
	}
	// Destroy takes over; the pause ending then leaves the destroy alone.
	_, destroy, err := s.claimOp(ctx, a, row, OpDestroy, running, true)
	if err != nil {
		t.Fatal(err)
	}
	pause.end(ctx)
	if op, _, _ := opOf(); op == nil || *op != "destroy" {
		t.Fatalf("after the taken-over pause ended: op %v", op)
	}
	// Without renewals the lease expires, and a new operation may claim.
	destroy.stop()
	time.Sleep(700 * time.Millisecond)
	if _, _, live := opOf(); live {
		t.Fatal("an unrenewed lease is still live")
	}
	_, again, err := s.claimOp(ctx, a, row, OpPause, running, false)
	if err != nil {
		t.Fatalf("claim over an expired lease: %v", err)
	}
	again.end(ctx)
	destroy.end(ctx)
	if op, _, _ := opOf(); op != nil {
		t.Fatalf("after both ended: op %q", *op)
	}
}
