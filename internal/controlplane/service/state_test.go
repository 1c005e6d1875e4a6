package service

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/controlplane/auth"
	"github.com/wrenn-dev/wrenn/internal/controlplane/ids"
	"github.com/wrenn-dev/wrenn/internal/db"
	"github.com/wrenn-dev/wrenn/internal/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

// The seam's conditional update: the from set, the seen updated_at and the
// team all gate it; a change reports the state the row really left and sets
// the timestamps of the state it enters.
func TestStateChange(t *testing.T) {
	pool, _ := testenv.MigratedPool(t)
	ctx := context.Background()
	q := db.New(pool)
	st := NewStates(pool, nil)
	team, err := q.CreateTeam(ctx, db.CreateTeamParams{ID: ids.New(ids.Team), Name: "t"})
	if err != nil {
		t.Fatal(err)
	}
	newRow := func() db.Sandbox {
		r, err := q.InsertSandbox(ctx, db.InsertSandboxParams{ID: ids.New(ids.Sandbox), TeamID: team.ID, Template: "minimal",
			Vcpus: 1, MemoryMb: 256, DiskMb: 1024, Metadata: json.RawMessage(`{}`)})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	user := ActorOf(auth.AuthContext{Method: auth.MethodJWT, UserID: "usr-1", UserEmail: "a@example.com", TeamID: team.ID})
	if user != (Actor{Type: ActorUser, ID: "usr-1", Name: "a@example.com"}) {
		t.Fatalf("user actor = %+v", user)
	}
	key := ActorOf(auth.AuthContext{Method: auth.MethodAPIKey, UserID: "usr-1", APIKeyID: "key-1", APIKeyName: "ci", TeamID: team.ID})
	if key != (Actor{Type: ActorAPIKey, ID: "key-1", Name: "ci"}) {
		t.Fatalf("API key actor = %+v", key)
	}

	r := newRow()
	tr, ok, err := st.Change(ctx, Change{SandboxID: r.ID, TeamID: team.ID, From: []Status{StatusPending, StatusPaused}, To: StatusRunning, Actor: user, Reason: "created"})
	if err != nil || !ok {
		t.Fatalf("pending -> running: %v %v", ok, err)
	}
	if tr.From != StatusPending || tr.To != StatusRunning || tr.TeamID != team.ID || tr.Actor != user || tr.Reason != "created" ||
		tr.Sandbox.StartedAt == nil || tr.Sandbox.LastActiveAt == nil || tr.Sandbox.Status != string(StatusRunning) {
		t.Fatalf("transition = %+v", tr)
	}
	seen := tr.Sandbox.UpdatedAt
	msg := "the sandbox VM exited unexpectedly"
	other := "team-" + "nottheteam00000000000"
	tests := []struct {
		name string
		c    Change
		ok   bool
	}{
		{"not in the from set", Change{From: []Status{StatusPaused}, To: StatusStopped}, false},
		{"another team", Change{TeamID: other, From: []Status{StatusRunning}, To: StatusStopped}, false},
		{"changed since seen", Change{From: []Status{StatusRunning}, SeenUpdatedAt: new(seen.Add(-time.Second)), To: StatusError}, false},
		{"unchanged since seen", Change{From: []Status{StatusRunning}, SeenUpdatedAt: &seen, To: StatusError, ErrorMessage: &msg}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.c.SandboxID, tt.c.Actor, tt.c.Reason = r.ID, ActorReconciler, "test"
			tr, ok, err := st.Change(ctx, tt.c)
			if err != nil || ok != tt.ok {
				t.Fatalf("applied = %v (%v), want %v", ok, err, tt.ok)
			}
			now, err := q.GetSandbox(ctx, db.GetSandboxParams{ID: r.ID, TeamID: team.ID})
			if err != nil {
				t.Fatal(err)
			}
			want := StatusRunning
			if tt.ok {
				want = tt.c.To
				if tr.From != StatusRunning || now.ErrorMessage != msg {
					t.Fatalf("transition %+v, error message %q", tr, now.ErrorMessage)
				}
			}
			if Status(now.Status) != want {
				t.Fatalf("row is %s, want %s", now.Status, want)
			}
		})
	}

	// A change without an actor or reason is a programming error.
	if _, _, err := st.Change(ctx, Change{SandboxID: r.ID, From: []Status{StatusError}, To: StatusStopped}); err == nil {
		t.Fatal("a change without actor and reason was accepted")
	}

	// Changes made in a transaction that rolls back leave nothing.
	r2 := newRow()
	boom := errors.New("boom")
	err = st.InTx(ctx, func(tx *StateTx) error {
		if _, ok, err := tx.Change(ctx, Change{SandboxID: r2.ID, From: []Status{StatusPending}, To: StatusRunning, Actor: ActorReconciler, Reason: "test"}); err != nil || !ok {
			t.Fatalf("change in tx: %v %v", ok, err)
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("InTx = %v", err)
	}
	if now, _ := q.GetSandbox(ctx, db.GetSandboxParams{ID: r2.ID, TeamID: team.ID}); Status(now.Status) != StatusPending {
		t.Fatalf("rolled back change left the row %s", now.Status)
	}
	// Entering paused and stopped stamps their times.
	for _, to := range []Status{StatusPaused, StatusStopped} {
		from := StatusPending
		if to == StatusStopped {
			from = StatusPaused
		}
		tr, ok, err := st.Change(ctx, Change{SandboxID: r2.ID, From: []Status{from}, To: to, Actor: ActorReconciler, Reason: "test"})
		if err != nil || !ok {
			t.Fatalf("-> %s: %v %v", to, ok, err)
		}
		if (to == StatusPaused && tr.Sandbox.PausedAt == nil) || (to == StatusStopped && tr.Sandbox.StoppedAt == nil) {
			t.Fatalf("-> %s did not stamp its time: %+v", to, tr.Sandbox)
		}
	}
}
