package hosts_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/wrenn-dev/wrenn/internal/controlplane/hosts"
	"github.com/wrenn-dev/wrenn/internal/controlplane/ids"
	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
	"github.com/wrenn-dev/wrenn/internal/db"
	"github.com/wrenn-dev/wrenn/internal/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

// newFixture migrates a fresh database for one test.
func newFixture(t *testing.T) (fixture, *pgxpool.Pool) {
	t.Helper()
	pool, _ := testenv.MigratedPool(t)
	return fixture{t: t, q: db.New(pool), states: service.NewStates(pool, nil), ctx: context.Background()}, pool
}

func TestLeastLoaded(t *testing.T) {
	f, _ := newFixture(t)
	q, ctx := f.q, f.ctx
	team := f.team
	host := func(id string, teamID *string, status, addr string) string {
		if _, err := q.UpsertHost(ctx, db.UpsertHostParams{ID: id, TeamID: teamID, Name: id, Address: addr, Status: status}); err != nil {
			t.Fatal(err)
		}
		return id
	}
	sandboxes := func(teamID, hostID, status string, n int) {
		for range n {
			f.sandbox(q, teamID, hostID, status, 1, 256)
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

	s := hosts.NewLeastLoaded(hosts.Overcommit{})
	need := hosts.Need{VCPUs: 1, MemoryMB: 256, DiskMB: 1024}
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
			h, err := s.Place(ctx, q, c.team, need)
			if c.unavailable {
				if !errors.Is(err, hosts.ErrHostUnavailable) {
					t.Fatalf("Place = %s, %v; want ErrHostUnavailable", h.ID, err)
				}
				return
			}
			if err != nil || h.ID != c.want {
				t.Fatalf("Place = %s, %v; want %s", h.ID, err, c.want)
			}
		})
	}
	// One more running sandbox on sharedA makes sharedB the least loaded.
	sandboxes(plain, sharedA, "running", 1)
	if h, err := s.Place(ctx, q, plain, need); err != nil || h.ID != sharedB {
		t.Fatalf("Place after load change = %s, %v; want %s", h.ID, err, sharedB)
	}
	// Placing sandboxes one by one evens the load out: from A=3, B=2 the
	// next six go B, A (tie), B, A, B, A.
	counts := map[string]int{}
	for range 6 {
		h, err := s.Place(ctx, q, plain, need)
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

// fixture makes teams, hosts with reported resources, and sandboxes.
type fixture struct {
	t      *testing.T
	q      *db.Queries
	states *service.States
	ctx    context.Context
}

func (f fixture) team(byoc bool) string {
	f.t.Helper()
	tm, err := f.q.CreateTeam(f.ctx, db.CreateTeamParams{ID: ids.New(ids.Team), Name: "t"})
	if err != nil {
		f.t.Fatal(err)
	}
	if err := f.q.SetTeamBYOC(f.ctx, db.SetTeamBYOCParams{ID: tm.ID, ByocEnabled: byoc}); err != nil {
		f.t.Fatal(err)
	}
	return tm.ID
}

// res is what a host reports; zero fields are "not reported".
type res struct {
	maxVCPUs, maxMemMB, maxDiskMB, capVCPUs int32
	capMemMB                                int64
}

// host registers an online shared (teamID nil) or team host and sends one
// heartbeat with its resources, as an agent does.
func (f fixture) host(id string, teamID *string, r res) string {
	f.t.Helper()
	if _, err := f.q.UpsertHost(f.ctx, db.UpsertHostParams{ID: id, TeamID: teamID, Name: id, Address: "127.0.0.1:1", Status: "online"}); err != nil {
		f.t.Fatal(err)
	}
	zero32, zero64 := int32(0), int64(0)
	if _, err := f.q.HeartbeatHost(f.ctx, db.HeartbeatHostParams{ID: id, MaxVcpus: &r.maxVCPUs, MaxMemoryMb: &r.maxMemMB, MaxDiskMb: &r.maxDiskMB,
		CapacityVcpus: &r.capVCPUs, CapacityMemoryMb: &r.capMemMB, CommittedVcpus: &zero32, CommittedMemoryMb: &zero64}); err != nil {
		f.t.Fatal(err)
	}
	return id
}

func (f fixture) sandbox(q *db.Queries, teamID, hostID, status string, vcpus, memMB int32) string {
	f.t.Helper()
	sb, err := q.InsertSandbox(f.ctx, db.InsertSandboxParams{ID: ids.New(ids.Sandbox), TeamID: teamID, HostID: &hostID,
		Template: "minimal", Vcpus: vcpus, MemoryMb: memMB, DiskMb: 1024, Metadata: json.RawMessage(`{}`)})
	if err != nil {
		f.t.Fatal(err)
	}
	if status != "pending" {
		if _, ok, err := f.states.Change(f.ctx, service.Change{SandboxID: sb.ID, From: []service.Status{service.StatusPending},
			To: service.Status(status), Actor: service.ActorReconciler, Reason: "test set-up"}); err != nil || !ok {
			f.t.Fatal(ok, err)
		}
	}
	return sb.ID
}

// TestPlacement walks the admission rules: per-sandbox limits (400 in the
// API), capacity with committed resources (503 no_capacity) and which
// sandboxes count.
func TestPlacement(t *testing.T) {
	f, _ := newFixture(t)
	// Each case gets its own BYOC team and hosts, so cases do not see each other.
	type sb struct {
		status       string
		vcpus, memMB int32
	}
	cases := []struct {
		name     string
		hosts    []res
		held     [][]sb // per host
		oc       hosts.Overcommit
		need     hosts.Need
		wantHost int // index into hosts, or -1
		field    string
		limit    int
		short    []string
	}{
		{name: "fits", hosts: []res{{4, 4096, 20480, 8, 24576}}, need: hosts.Need{VCPUs: 2, MemoryMB: 2048, DiskMB: 1024}},
		{name: "16 vcpus on a 4-vcpu host", hosts: []res{{4, 4096, 20480, 8, 24576}}, need: hosts.Need{VCPUs: 16, MemoryMB: 256}, wantHost: -1, field: "vcpus", limit: 4},
		{name: "memory over every host's limit names the largest", hosts: []res{{4, 4096, 20480, 8, 24576}, {4, 8192, 20480, 8, 24576}},
			need: hosts.Need{VCPUs: 1, MemoryMB: 16384}, wantHost: -1, field: "memory_mb", limit: 8192},
		{name: "only the host whose limits take it", hosts: []res{{4, 4096, 20480, 8, 24576}, {8, 8192, 20480, 8, 24576}},
			need: hosts.Need{VCPUs: 8, MemoryMB: 8192}, wantHost: 1},
		{name: "disk", hosts: []res{{4, 4096, 2048, 8, 24576}}, need: hosts.Need{VCPUs: 1, MemoryMB: 256, DiskMB: 4096}, wantHost: -1, field: "disk_mb", limit: 2048},
		{name: "fields fit one by one, not together", hosts: []res{{8, 1024, 0, 0, 0}, {1, 8192, 0, 0, 0}},
			need: hosts.Need{VCPUs: 8, MemoryMB: 8192}, wantHost: -1, field: "vcpus", limit: 0},
		{name: "unreported limits and capacity bound nothing", hosts: []res{{}}, need: hosts.Need{VCPUs: 64, MemoryMB: 1 << 20}},
		{name: "the 7th 4 GiB sandbox on a 24 GiB host", hosts: []res{{4, 4096, 0, 64, 24576}},
			held: [][]sb{{{"running", 1, 4096}, {"running", 1, 4096}, {"running", 1, 4096}, {"pending", 1, 4096}, {"running", 1, 4096}, {"running", 1, 4096}}},
			need: hosts.Need{VCPUs: 1, MemoryMB: 4096}, wantHost: -1, short: []string{"memory"}},
		{name: "paused and stopped sandboxes hold nothing", hosts: []res{{4, 4096, 0, 64, 8192}},
			held: [][]sb{{{"paused", 1, 4096}, {"paused", 1, 4096}, {"stopped", 1, 4096}, {"running", 1, 4096}}},
			need: hosts.Need{VCPUs: 1, MemoryMB: 4096}},
		{name: "missing sandboxes may still run and count", hosts: []res{{4, 4096, 0, 64, 8192}},
			held: [][]sb{{{"missing", 1, 4096}, {"running", 1, 4096}}}, need: hosts.Need{VCPUs: 1, MemoryMB: 256}, wantHost: -1, short: []string{"memory"}},
		{name: "memory overcommit 1.5", hosts: []res{{4, 4096, 0, 64, 8192}}, oc: hosts.Overcommit{Memory: 1.5},
			held: [][]sb{{{"running", 1, 4096}, {"running", 1, 4096}}}, need: hosts.Need{VCPUs: 1, MemoryMB: 4096}},
		{name: "vcpus: default ratio 4 per host CPU", hosts: []res{{4, 4096, 0, 2, 0}},
			held: [][]sb{{{"running", 4, 256}, {"running", 3, 256}}}, need: hosts.Need{VCPUs: 1, MemoryMB: 256}},
		{name: "vcpus short past the ratio", hosts: []res{{4, 4096, 0, 2, 0}},
			held: [][]sb{{{"running", 4, 256}, {"running", 4, 256}}}, need: hosts.Need{VCPUs: 1, MemoryMB: 256}, wantHost: -1, short: []string{"vcpus"}},
		{name: "both short on different hosts", hosts: []res{{4, 4096, 0, 1, 0}, {4, 4096, 0, 0, 1024}},
			held: [][]sb{{{"running", 4, 256}}, {{"running", 1, 1024}}}, need: hosts.Need{VCPUs: 1, MemoryMB: 256}, wantHost: -1, short: []string{"memory", "vcpus"}},
		{name: "a full host is skipped for one with room", hosts: []res{{4, 4096, 0, 64, 4096}, {4, 4096, 0, 64, 4096}},
			held: [][]sb{{{"running", 1, 4096}}}, need: hosts.Need{VCPUs: 1, MemoryMB: 4096}, wantHost: 1},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			team := f.team(true)
			var hostIDs []string
			for j, r := range c.hosts {
				id := f.host(fmt.Sprintf("host-%02d%02dxxxxxxxxxxxxxxxx", i, j), &team, r)
				hostIDs = append(hostIDs, id)
				if j < len(c.held) {
					for _, s := range c.held[j] {
						f.sandbox(f.q, team, id, s.status, s.vcpus, s.memMB)
					}
				}
			}
			for _, sch := range []hosts.Scheduler{hosts.NewLeastLoaded(c.oc), hosts.NewRoundRobin(c.oc)} {
				h, err := sch.Place(f.ctx, f.q, team, c.need)
				var le *hosts.LimitError
				var ne *hosts.NoCapacityError
				switch {
				case c.field != "":
					if !errors.As(err, &le) || le.Field != c.field || le.Limit != c.limit {
						t.Fatalf("Place = %s, %v; want LimitError %s %d", h.ID, err, c.field, c.limit)
					}
				case c.short != nil:
					if !errors.As(err, &ne) || !slices.Equal(ne.Short, c.short) {
						t.Fatalf("Place = %s, %v; want NoCapacityError short of %v", h.ID, err, c.short)
					}
				default:
					if err != nil || h.ID != hostIDs[c.wantHost] {
						t.Fatalf("Place = %s, %v; want %s", h.ID, err, hostIDs[c.wantHost])
					}
				}
			}
		})
	}
}

// TestRoundRobinSkipsFullHosts: turns go only to hosts with room.
func TestRoundRobinSkipsFullHosts(t *testing.T) {
	f, _ := newFixture(t)
	team := f.team(false)
	a := f.host("host-aaaaaaaaaaaaaaaaaaaa", nil, res{4, 4096, 0, 64, 8192})
	b := f.host("host-bbbbbbbbbbbbbbbbbbbb", nil, res{4, 4096, 0, 64, 8192})
	c := f.host("host-cccccccccccccccccccc", nil, res{4, 4096, 0, 64, 1024})
	f.sandbox(f.q, team, c, "running", 1, 1024) // c is full
	rr := hosts.NewRoundRobin(hosts.Overcommit{})
	counts := map[string]int{}
	for range 6 {
		h, err := rr.Place(f.ctx, f.q, team, hosts.Need{VCPUs: 1, MemoryMB: 512})
		if err != nil {
			t.Fatal(err)
		}
		counts[h.ID]++
	}
	if counts[a] != 3 || counts[b] != 3 || counts[c] != 0 {
		t.Fatalf("placements = %v; want 3 on each of %s and %s, none on the full %s", counts, a, b, c)
	}
	// PlaceOn checks one host's room the same way.
	if _, err := rr.PlaceOn(f.ctx, f.q, c, hosts.Need{VCPUs: 1, MemoryMB: 512}, false); !errors.As(err, new(*hosts.NoCapacityError)) {
		t.Fatalf("PlaceOn full host = %v; want NoCapacityError", err)
	}
	if _, err := rr.PlaceOn(f.ctx, f.q, "host-zzzzzzzzzzzzzzzzzzzz", hosts.Need{VCPUs: 1}, false); !errors.Is(err, hosts.ErrHostUnavailable) {
		t.Fatalf("PlaceOn unknown host = %v; want ErrHostUnavailable", err)
	}
}

// TestConcurrentPlacement: placements racing for the last room on a host
// (each in its own transaction that inserts the pending row, as the
// service does) admit exactly the capacity: 6 x 4 GiB on a 24 GiB host.
func TestConcurrentPlacement(t *testing.T) {
	f, pool := newFixture(t)
	q, ctx := f.q, f.ctx
	host := f.host("host-aaaaaaaaaaaaaaaaaaaa", nil, res{4, 4096, 0, 64, 24576})
	for _, sch := range []hosts.Scheduler{hosts.NewLeastLoaded(hosts.Overcommit{}), hosts.NewRoundRobin(hosts.Overcommit{})} {
		team := f.team(false) // placements of different teams do not share the team lock
		const tries = 12
		var ok, full atomic.Int32
		var wg sync.WaitGroup
		start := make(chan struct{})
		for range tries {
			wg.Go(func() {
				<-start
				err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
					tq := q.WithTx(tx)
					h, err := sch.Place(ctx, tq, team, hosts.Need{VCPUs: 1, MemoryMB: 4096})
					if err != nil {
						return err
					}
					f.sandbox(tq, team, h.ID, "pending", 1, 4096)
					return nil
				})
				switch {
				case err == nil:
					ok.Add(1)
				case errors.As(err, new(*hosts.NoCapacityError)):
					full.Add(1)
				default:
					t.Errorf("place: %v", err)
				}
			})
		}
		close(start)
		wg.Wait()
		if ok.Load() != 6 || full.Load() != tries-6 {
			t.Fatalf("%d placed, %d refused; want 6 and %d", ok.Load(), full.Load(), tries-6)
		}
		// Free the host for the next scheduler.
		if _, err := pool.Exec(ctx, `UPDATE sandboxes SET status = 'stopped' WHERE host_id = $1`, host); err != nil {
			t.Fatal(err)
		}
	}
}

// TestResumeReservation: a paused sandbox counts only while a resume
// reserves its room, and never against its own resume.
func TestResumeReservation(t *testing.T) {
	f, _ := newFixture(t)
	team := f.team(false)
	h := f.host("host-aaaaaaaaaaaaaaaaaaaa", nil, res{4, 4096, 0, 64, 8192})
	f.sandbox(f.q, team, h, "running", 1, 4096)
	paused := f.sandbox(f.q, team, h, "paused", 1, 4096)
	sch := hosts.NewLeastLoaded(hosts.Overcommit{})
	need := hosts.Need{VCPUs: 1, MemoryMB: 4096}
	if _, err := sch.Place(f.ctx, f.q, team, need); err != nil {
		t.Fatalf("paused sandbox without a reservation held room: %v", err)
	}
	until := time.Now().Add(time.Minute)
	if n, err := f.q.ReserveResume(f.ctx, db.ReserveResumeParams{ID: paused, Until: &until}); err != nil || n != 1 {
		t.Fatalf("reserve = %d, %v", n, err)
	}
	if _, err := sch.Place(f.ctx, f.q, team, need); !errors.As(err, new(*hosts.NoCapacityError)) {
		t.Fatalf("place beside a reserved resume = %v; want NoCapacityError", err)
	}
	own := need
	own.Excluding = paused
	if _, err := sch.PlaceOn(f.ctx, f.q, h, own, false); err != nil {
		t.Fatalf("the resuming sandbox's own check counted its reservation: %v", err)
	}
	past := time.Now().Add(-time.Second)
	if _, err := f.q.ReserveResume(f.ctx, db.ReserveResumeParams{ID: paused, Until: &past}); err != nil {
		t.Fatal(err)
	}
	if _, err := sch.Place(f.ctx, f.q, team, need); err != nil {
		t.Fatalf("a lapsed reservation still held room: %v", err)
	}
}
