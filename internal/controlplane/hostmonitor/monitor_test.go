package hostmonitor_test

import (
	"context"
	"encoding/json"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/wrenn-dev/wrenn/internal/controlplane/agenttest"
	"github.com/wrenn-dev/wrenn/internal/controlplane/hostmonitor"
	"github.com/wrenn-dev/wrenn/internal/controlplane/hosts"
	"github.com/wrenn-dev/wrenn/internal/controlplane/ids"
	"github.com/wrenn-dev/wrenn/internal/db"
	"github.com/wrenn-dev/wrenn/internal/testenv"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

func newDB(t *testing.T) (*pgxpool.Pool, *db.Queries) {
	t.Helper()
	pool, _ := testenv.MigratedPool(t)
	return pool, db.New(pool)
}

func addSandbox(t *testing.T, q *db.Queries, teamID, hostID, status string) string {
	t.Helper()
	ctx := context.Background()
	sb, err := q.InsertSandbox(ctx, db.InsertSandboxParams{ID: ids.New(ids.Sandbox), TeamID: teamID, HostID: &hostID,
		Template: "minimal", Vcpus: 1, MemoryMb: 256, DiskMb: 1024, Metadata: json.RawMessage(`{}`)})
	if err != nil {
		t.Fatal(err)
	}
	if status != "pending" {
		if _, err := q.TransitionSandbox(ctx, db.TransitionSandboxParams{ID: sb.ID, TeamID: teamID, ToStatus: status, FromStatuses: []string{"pending"}}); err != nil {
			t.Fatalf("set %s %s: %v", sb.ID, status, err)
		}
	}
	return sb.ID
}

func status(t *testing.T, q *db.Queries, teamID, id string) string {
	t.Helper()
	sb, err := q.GetSandbox(context.Background(), db.GetSandboxParams{ID: id, TeamID: teamID})
	if err != nil {
		t.Fatal(err)
	}
	return sb.Status
}

func hostStatus(t *testing.T, q *db.Queries, id string) string {
	t.Helper()
	h, err := q.GetHost(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return h.Status
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > within {
			t.Fatalf("%s did not happen within %s", what, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start)
}

// The full cycle against a real Connect agent on loopback: orphans are
// destroyed, a silent host becomes unreachable with its sandboxes missing
// within the threshold, and a heartbeat brings it back and reconciles them.
func TestMonitorCycle(t *testing.T) {
	pool, q := newDB(t)
	ctx := t.Context()
	agent := agenttest.Serve(t)
	team, err := q.CreateTeam(ctx, db.CreateTeamParams{ID: ids.New(ids.Team), Name: "t"})
	if err != nil {
		t.Fatal(err)
	}
	hostID := ids.New(ids.Host)
	if _, err := q.UpsertHost(ctx, db.UpsertHostParams{ID: hostID, Name: "h", Address: agent.Address(), Status: "online"}); err != nil {
		t.Fatal(err)
	}
	heartbeat := func() {
		t.Helper()
		if _, err := q.HeartbeatHost(ctx, hostID); err != nil {
			t.Fatalf("heartbeat: %v", err)
		}
	}
	heartbeat()

	alive := addSandbox(t, q, team.ID, hostID, "running")   // will come back running
	paused := addSandbox(t, q, team.ID, hostID, "running")  // will come back paused
	lost := addSandbox(t, q, team.ID, hostID, "running")    // gone when the host returns
	stopped := addSandbox(t, q, team.ID, hostID, "stopped") // still on the host: orphan
	pending := addSandbox(t, q, team.ID, hostID, "pending") // being created: not an orphan
	agent.Put(alive, pb.SandboxState_SANDBOX_STATE_RUNNING)
	agent.Put(paused, pb.SandboxState_SANDBOX_STATE_RUNNING)
	agent.Put(lost, pb.SandboxState_SANDBOX_STATE_RUNNING)
	agent.Put(stopped, pb.SandboxState_SANDBOX_STATE_RUNNING)
	agent.Put(pending, pb.SandboxState_SANDBOX_STATE_STARTING)
	unknown := ids.New(ids.Sandbox)
	agent.Put(unknown, pb.SandboxState_SANDBOX_STATE_RUNNING)

	const threshold = time.Second
	mon := hostmonitor.New(pool, hosts.NewPool(q, nil), hostmonitor.Config{Interval: 100 * time.Millisecond, UnreachableAfter: threshold}, nil)
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); mon.Run(runCtx) }()
	t.Cleanup(func() { stop(); <-done })

	waitFor(t, 2*time.Second, "orphans destroyed", func() bool { return len(agent.Destroyed()) == 2 })
	if got, want := agent.Destroyed(), sortedIDs(stopped, unknown); !slices.Equal(got, want) {
		t.Fatalf("destroyed = %v, want %v", got, want)
	}
	if !agent.Has(pending) || !agent.Has(alive) {
		t.Fatal("a sandbox the database knows as active was destroyed")
	}

	// Silence: the last heartbeat was at the start; within threshold +
	// interval (+ slack) the host is unreachable and running sandboxes missing.
	lastBeat := time.Now()
	heartbeat()
	waitFor(t, threshold+time.Second, "host unreachable", func() bool { return hostStatus(t, q, hostID) == "unreachable" })
	took := time.Since(lastBeat)
	if took < threshold {
		t.Fatalf("host marked unreachable after %s, before the %s threshold", took, threshold)
	}
	t.Logf("host marked unreachable %s after its last heartbeat (threshold %s)", took.Round(time.Millisecond), threshold)
	for _, id := range []string{alive, paused, lost} {
		if s := status(t, q, team.ID, id); s != "missing" {
			t.Fatalf("sandbox %s = %s, want missing", id, s)
		}
	}
	if s := status(t, q, team.ID, pending); s != "pending" {
		t.Fatalf("pending sandbox became %s", s)
	}

	// While it is unreachable nothing is reconciled.
	time.Sleep(300 * time.Millisecond)
	if s := status(t, q, team.ID, alive); s != "missing" {
		t.Fatalf("sandbox of an unreachable host reconciled to %s", s)
	}

	// The host comes back with one sandbox paused and one gone.
	agent.Put(paused, pb.SandboxState_SANDBOX_STATE_AUTO_PAUSED)
	agent.Forget(lost)
	heartbeat()
	waitFor(t, 2*time.Second, "sandboxes reconciled", func() bool {
		return status(t, q, team.ID, alive) == "running" && status(t, q, team.ID, paused) == "paused" && status(t, q, team.ID, lost) == "stopped"
	})
	if s := hostStatus(t, q, hostID); s != "online" {
		t.Fatalf("host = %s after heartbeat", s)
	}
}

func sortedIDs(ids ...string) []string {
	slices.Sort(ids)
	return ids
}

// An agent that does not answer is skipped, not marked: host health comes
// from heartbeats alone.
func TestPassSkipsUnansweringAgent(t *testing.T) {
	pool, q := newDB(t)
	ctx := t.Context()
	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	hostID := ids.New(ids.Host)
	if _, err := q.UpsertHost(ctx, db.UpsertHostParams{ID: hostID, Name: "h", Address: "127.0.0.1:" + strconv.Itoa(port), Status: "online"}); err != nil {
		t.Fatal(err)
	}
	if _, err := q.HeartbeatHost(ctx, hostID); err != nil {
		t.Fatal(err)
	}
	mon := hostmonitor.New(pool, hosts.NewPool(q, nil), hostmonitor.Config{UnreachableAfter: time.Minute, RPCTimeout: time.Second}, nil)
	res := mon.Pass(ctx)
	if res.HostsFailed != 1 || len(res.Unreachable) != 0 {
		t.Fatalf("pass = %+v, want one failed host and none unreachable", res)
	}
	if s := hostStatus(t, q, hostID); s != "online" {
		t.Fatalf("host = %s", s)
	}
}

// After a control plane restart hosts get one threshold to send a
// heartbeat before they are marked unreachable.
func TestRunGivesHostsGraceAfterStart(t *testing.T) {
	pool, q := newDB(t)
	ctx := t.Context()
	hostID := ids.New(ids.Host)
	if _, err := q.UpsertHost(ctx, db.UpsertHostParams{ID: hostID, Name: "h", Address: "127.0.0.1:1", Status: "online"}); err != nil {
		t.Fatal(err)
	}
	// Its last heartbeat is an hour old: the control plane was down.
	if _, err := pool.Exec(ctx, "UPDATE hosts SET last_heartbeat_at = now() - interval '1 hour' WHERE id = $1", hostID); err != nil {
		t.Fatal(err)
	}
	const threshold = time.Second
	mon := hostmonitor.New(pool, hosts.NewPool(q, nil), hostmonitor.Config{Interval: 50 * time.Millisecond, UnreachableAfter: threshold, RPCTimeout: 100 * time.Millisecond}, nil)
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	start := time.Now()
	go func() { defer close(done); mon.Run(runCtx) }()
	t.Cleanup(func() { stop(); <-done })
	time.Sleep(threshold / 2)
	if s := hostStatus(t, q, hostID); s != "online" {
		t.Fatalf("host marked %s %s after the monitor started, within the grace", s, time.Since(start))
	}
	waitFor(t, 2*threshold, "host unreachable after the grace", func() bool { return hostStatus(t, q, hostID) == "unreachable" })
	if d := time.Since(start); d < threshold {
		t.Fatalf("marked after %s, before the grace ended", d)
	}
}
