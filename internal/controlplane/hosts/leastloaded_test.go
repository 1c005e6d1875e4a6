package hosts_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/controlplane/hosts"
	"github.com/wrenn-dev/wrenn/internal/controlplane/ids"
	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
	"github.com/wrenn-dev/wrenn/internal/db"
	"github.com/wrenn-dev/wrenn/internal/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

func TestLeastLoaded(t *testing.T) {
	pool, _ := testenv.MigratedPool(t)
	q, states := db.New(pool), service.NewStates(pool, nil)
	ctx := context.Background()
	team := func(byoc bool) string {
		tm, err := q.CreateTeam(ctx, db.CreateTeamParams{ID: ids.New(ids.Team), Name: "t"})
		if err != nil {
			t.Fatal(err)
		}
		if err := q.SetTeamBYOC(ctx, db.SetTeamBYOCParams{ID: tm.ID, ByocEnabled: byoc}); err != nil {
			t.Fatal(err)
		}
		return tm.ID
	}
	host := func(id string, teamID *string, status, addr string) string {
		if _, err := q.UpsertHost(ctx, db.UpsertHostParams{ID: id, TeamID: teamID, Name: id, Address: addr, Status: status}); err != nil {
			t.Fatal(err)
		}
		return id
	}
	sandboxes := func(teamID, hostID, status string, n int) {
		for range n {
			sb, err := q.InsertSandbox(ctx, db.InsertSandboxParams{ID: ids.New(ids.Sandbox), TeamID: teamID, HostID: &hostID,
				Template: "minimal", Vcpus: 1, MemoryMb: 256, DiskMb: 1024, Metadata: json.RawMessage(`{}`)})
			if err != nil {
				t.Fatal(err)
			}
			if status != "pending" {
				if _, ok, err := states.Change(ctx, service.Change{SandboxID: sb.ID, From: []service.Status{service.StatusPending},
					To: service.Status(status), Actor: service.ActorReconciler, Reason: "test set-up"}); err != nil || !ok {
					t.Fatal(ok, err)
				}
			}
		}
	}
	plain, byoc, byocNoHost := team(false), team(true), team(true)
	sharedA := host("host-aaaaaaaaaaaaaaaaaaaa", nil, "online", "127.0.0.1:1")
	sharedB := host("host-bbbbbbbbbbbbbbbbbbbb", nil, "online", "127.0.0.1:2")
	host("host-cccccccccccccccccccc", nil, "unreachable", "127.0.0.1:3") // idle but not online
	host("host-dddddddddddddddddddd", nil, "online", "")                 // online without address
	ownA := host("host-eeeeeeeeeeeeeeeeeeee", &byoc, "online", "127.0.0.1:5")
	ownB := host("host-ffffffffffffffffffff", &byoc, "online", "127.0.0.1:6")
	// sharedA: 2 running + 3 stopped (stopped do not count); sharedB: 1 running + 1 pending.
	sandboxes(plain, sharedA, "running", 2)
	sandboxes(plain, sharedA, "stopped", 3)
	sandboxes(plain, sharedB, "running", 1)
	sandboxes(plain, sharedB, "pending", 1)
	sandboxes(byoc, ownA, "running", 1)

	s := hosts.NewLeastLoaded(q)
	cases := []struct {
		name, team, want string
		unavailable      bool
	}{
		{"tie goes to lowest id", plain, sharedA, false},
		{"byoc team uses its own least loaded host", byoc, ownB, false},
		{"byoc team without hosts never uses shared ones", byocNoHost, "", true},
		{"unknown team", "team-zzzzzzzzzzzzzzzzzzzz", "", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h, err := s.Pick(ctx, c.team)
			if c.unavailable {
				if !errors.Is(err, hosts.ErrHostUnavailable) {
					t.Fatalf("Pick = %s, %v; want ErrHostUnavailable", h.ID, err)
				}
				return
			}
			if err != nil || h.ID != c.want {
				t.Fatalf("Pick = %s, %v; want %s", h.ID, err, c.want)
			}
		})
	}
	// One more running sandbox on sharedA makes sharedB the least loaded.
	sandboxes(plain, sharedA, "running", 1)
	if h, err := s.Pick(ctx, plain); err != nil || h.ID != sharedB {
		t.Fatalf("Pick after load change = %s, %v; want %s", h.ID, err, sharedB)
	}
	// Placing sandboxes one by one evens the load out: from A=3, B=2 the
	// next six go B, A (tie), B, A, B, A.
	counts := map[string]int{}
	for range 6 {
		h, err := s.Pick(ctx, plain)
		if err != nil {
			t.Fatal(err)
		}
		counts[h.ID]++
		sandboxes(plain, h.ID, "running", 1)
	}
	if counts[sharedA] != 3 || counts[sharedB] != 3 {
		t.Fatalf("placements = %v, want 3 on each", counts)
	}
}
