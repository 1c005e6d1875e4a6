package reconciler_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/wrenn-dev/wrenn/internal/controlplane/agenttest"
	"github.com/wrenn-dev/wrenn/internal/controlplane/hosts"
	"github.com/wrenn-dev/wrenn/internal/controlplane/ids"
	"github.com/wrenn-dev/wrenn/internal/controlplane/reconciler"
	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
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

func addSandbox(t *testing.T, pool *pgxpool.Pool, teamID, hostID, status string) string {
	t.Helper()
	ctx := context.Background()
	sb, err := db.New(pool).InsertSandbox(ctx, creating(ids.New(ids.Sandbox), teamID, hostID))
	if err != nil {
		t.Fatal(err)
	}
	if status != "pending" {
		if _, ok, err := service.NewStates(pool, nil).Change(ctx, service.Change{SandboxID: sb.ID, From: []service.Status{service.StatusPending},
			To: service.Status(status), Actor: service.ActorReconciler, Reason: "test set-up"}); err != nil || !ok {
			t.Fatalf("set %s %s: %v %v", sb.ID, status, ok, err)
		}
	}
	return sb.ID
}

// creating is a new row as a create in flight inserts it: pending, under a
// live create lease.
func creating(id, teamID, hostID string) db.InsertSandboxParams {
	return db.InsertSandboxParams{ID: id, TeamID: teamID, HostID: &hostID, Template: "minimal", Vcpus: 1, MemoryMb: 256, DiskMb: 1024,
		Metadata: json.RawMessage(`{}`), OpID: ids.New(ids.Operation), OpOwner: "cp-test", OpTtlSeconds: 60}
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
// destroyed, a host that neither heartbeats nor answers becomes unreachable
// with its sandboxes missing within the threshold, and when its agent
// answers again (no heartbeat needed) it is online and they are reconciled.
func TestMonitorCycle(t *testing.T) {
	pool, q, agent, team, hostID := onlineHost(t)
	ctx := t.Context()
	heartbeat := func() {
		t.Helper()
		if _, err := q.HeartbeatHost(ctx, db.HeartbeatHostParams{ID: hostID}); err != nil {
			t.Fatalf("heartbeat: %v", err)
		}
	}

	alive := addSandbox(t, pool, team.ID, hostID, "running")   // will come back running
	paused := addSandbox(t, pool, team.ID, hostID, "running")  // will come back paused
	lost := addSandbox(t, pool, team.ID, hostID, "running")    // gone when the host returns
	stopped := addSandbox(t, pool, team.ID, hostID, "stopped") // still on the host: orphan
	pending := addSandbox(t, pool, team.ID, hostID, "pending") // being created: not an orphan
	agent.Put(alive, pb.SandboxState_SANDBOX_STATE_RUNNING)
	agent.Put(paused, pb.SandboxState_SANDBOX_STATE_RUNNING)
	agent.Put(lost, pb.SandboxState_SANDBOX_STATE_RUNNING)
	agent.Put(stopped, pb.SandboxState_SANDBOX_STATE_RUNNING)
	agent.Put(pending, pb.SandboxState_SANDBOX_STATE_STARTING)
	unknown := ids.New(ids.Sandbox)
	agent.Put(unknown, pb.SandboxState_SANDBOX_STATE_RUNNING)

	const threshold = time.Second
	mon := reconciler.New(pool, nil, hosts.NewPool(q, nil), reconciler.Config{Interval: 100 * time.Millisecond, UnreachableAfter: threshold}, nil)
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

	// Silence: no heartbeat and no answer; within threshold + interval (+
	// slack) the host is unreachable and running sandboxes missing.
	agent.SetReachable(false)
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

	// The host comes back with one sandbox paused and one gone; it sends
	// no heartbeat, but the reconciler, still probing it, reaches it.
	agent.Put(paused, pb.SandboxState_SANDBOX_STATE_AUTO_PAUSED)
	agent.Forget(lost)
	agent.SetReachable(true)
	waitFor(t, 2*time.Second, "sandboxes reconciled", func() bool {
		return status(t, q, team.ID, alive) == "running" && status(t, q, team.ID, paused) == "paused" && status(t, q, team.ID, lost) == "stopped"
	})
	if s := hostStatus(t, q, hostID); s != "online" {
		t.Fatalf("host = %s after its agent answered again", s)
	}
}

// An answer to the reconciler is the host's heartbeat: a host whose own
// heartbeats stopped (it sends them to a dead replica) but whose agent this
// replica reaches stays online with its sandboxes, and an unreachable host
// that answers is online again with its missing sandboxes reconciled.
func TestAnswerKeepsHostOnline(t *testing.T) {
	cases := []struct {
		name      string
		hostState string
		rowState  string
		wantBack  int
	}{
		{"online host with stale heartbeat", "online", "running", 0},
		{"unreachable host answers again", "unreachable", "missing", 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			pool, q, agent, team, hostID := onlineHost(t)
			ctx := t.Context()
			sb := addSandbox(t, pool, team.ID, hostID, c.rowState)
			agent.Put(sb, pb.SandboxState_SANDBOX_STATE_RUNNING)
			if _, err := pool.Exec(ctx, "UPDATE hosts SET status = $2, last_heartbeat_at = now() - interval '1 hour' WHERE id = $1", hostID, c.hostState); err != nil {
				t.Fatal(err)
			}
			rec := reconciler.New(pool, nil, hosts.NewPool(q, nil), reconciler.Config{UnreachableAfter: time.Second}, nil)
			res := rec.Pass(ctx)
			if res.Unreachable != 0 || res.Missing != 0 || res.HostsFailed != 0 || res.HostsBack != c.wantBack {
				t.Fatalf("pass = %+v", res)
			}
			h, err := q.GetHost(ctx, hostID)
			if err != nil {
				t.Fatal(err)
			}
			if h.Status != "online" || h.LastHeartbeatAt == nil || time.Since(*h.LastHeartbeatAt) > time.Minute {
				t.Fatalf("host %s, last heartbeat %v: the answer was not recorded as liveness", h.Status, h.LastHeartbeatAt)
			}
			if s := status(t, q, team.ID, sb); s != "running" {
				t.Fatalf("sandbox = %s, want running", s)
			}
			// Cut off: the same stale host is now marked, as before.
			agent.SetReachable(false)
			if _, err := pool.Exec(ctx, "UPDATE hosts SET last_heartbeat_at = now() - interval '1 hour' WHERE id = $1", hostID); err != nil {
				t.Fatal(err)
			}
			if res := rec.Pass(ctx); res.Unreachable != 1 || res.Missing != 1 || res.HostsFailed != 1 {
				t.Fatalf("pass over the silent host = %+v", res)
			}
		})
	}
}

func sortedIDs(ids ...string) []string {
	slices.Sort(ids)
	return ids
}

// An agent that does not answer, on a host whose heartbeat is recent, is
// skipped, not marked.
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
	if _, err := q.HeartbeatHost(ctx, db.HeartbeatHostParams{ID: hostID}); err != nil {
		t.Fatal(err)
	}
	mon := reconciler.New(pool, nil, hosts.NewPool(q, nil), reconciler.Config{UnreachableAfter: time.Minute, RPCTimeout: time.Second}, nil)
	res := mon.Pass(ctx)
	if res.HostsFailed != 1 || res.Unreachable != 0 {
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
	mon := reconciler.New(pool, nil, hosts.NewPool(q, nil), reconciler.Config{Interval: 50 * time.Millisecond, UnreachableAfter: threshold, RPCTimeout: 100 * time.Millisecond}, nil)
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

// onlineHost is a database with a team and an online host (heartbeat just
// sent) served by a stub agent.
func onlineHost(t *testing.T) (*pgxpool.Pool, *db.Queries, *agenttest.Agent, db.Team, string) {
	t.Helper()
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
	if _, err := q.HeartbeatHost(ctx, db.HeartbeatHostParams{ID: hostID}); err != nil {
		t.Fatal(err)
	}
	return pool, q, agent, team, hostID
}

// One pass over a host applies service.Reconcile to real rows and a real
// agent list: the pairs that change something, and the ones that must not.
func TestPassAppliesTheMapping(t *testing.T) {
	pool, q, agent, team, hostID := onlineHost(t)
	ctx := t.Context()
	const absent = pb.SandboxState(-1)
	cases := []struct {
		row       string // "" = no row
		agent     pb.SandboxState
		want      string
		destroyed bool
	}{
		{"running", absent, "stopped", false},
		{"running", pb.SandboxState_SANDBOX_STATE_AUTO_PAUSED, "paused", false},
		{"running", pb.SandboxState_SANDBOX_STATE_DEAD, "error", false},
		{"running", pb.SandboxState_SANDBOX_STATE_STARTING, "running", false},
		{"paused", pb.SandboxState_SANDBOX_STATE_RUNNING, "running", false},
		{"paused", pb.SandboxState_SANDBOX_STATE_PAUSED, "paused", false},
		{"missing", pb.SandboxState_SANDBOX_STATE_DEAD, "error", false},
		{"missing", pb.SandboxState_SANDBOX_STATE_RUNNING, "running", false},
		{"missing", absent, "stopped", false},
		{"pending", pb.SandboxState_SANDBOX_STATE_STARTING, "pending", false},
		{"pending", absent, "pending", false},
		{"stopped", pb.SandboxState_SANDBOX_STATE_RUNNING, "stopped", true},
		{"error", pb.SandboxState_SANDBOX_STATE_DEAD, "error", true},
		{"stopped", pb.SandboxState_SANDBOX_STATE_STOPPED, "stopped", false},
		{"", pb.SandboxState_SANDBOX_STATE_PAUSED, "", true},
		{"", pb.SandboxState_SANDBOX_STATE_STOPPED, "", false},
		{"stopping", absent, "stopped", false},
		{"stopping", pb.SandboxState_SANDBOX_STATE_RUNNING, "stopped", true},
		{"stopping", pb.SandboxState_SANDBOX_STATE_PAUSED, "stopped", true},
		{"stopping", pb.SandboxState_SANDBOX_STATE_STOPPED, "stopped", true},
	}
	sbIDs := make([]string, len(cases))
	var wantDestroyed []string
	stoppingDestroyed := 0
	for i, c := range cases {
		id := ids.New(ids.Sandbox)
		if c.row != "" {
			id = addSandbox(t, pool, team.ID, hostID, c.row)
		}
		if c.agent != absent {
			agent.Put(id, c.agent)
		}
		if c.destroyed {
			wantDestroyed = append(wantDestroyed, id)
			if c.row == "stopping" {
				stoppingDestroyed++
			}
		}
		sbIDs[i] = id
	}
	rec := reconciler.New(pool, nil, hosts.NewPool(q, nil), reconciler.Config{}, nil)
	res := rec.Pass(ctx)
	if res.HostsFailed != 0 || res.Unreachable != 0 || res.OrphansDestroyed != len(wantDestroyed)-stoppingDestroyed || res.StoppingDestroyed != stoppingDestroyed {
		t.Fatalf("pass = %+v", res)
	}
	for i, c := range cases {
		if c.row == "" {
			continue
		}
		if got := status(t, q, team.ID, sbIDs[i]); got != c.want {
			t.Errorf("row %s, agent %v: row is %s, want %s", c.row, c.agent, got, c.want)
		}
	}
	if got := agent.Destroyed(); !slices.Equal(got, sortedIDs(wantDestroyed...)) {
		t.Errorf("destroyed %v, want %v", got, sortedIDs(wantDestroyed...))
	}
	// The next pass destroys the dead VMs of the rows that became error
	// (now rows without a live sandbox); then nothing changes.
	if res := rec.Pass(ctx); res != (reconciler.PassResult{OrphansDestroyed: 2}) {
		t.Fatalf("second pass = %+v", res)
	}
	if res := rec.Pass(ctx); res != (reconciler.PassResult{}) {
		t.Fatalf("third pass = %+v", res)
	}
}

// hookAgents runs beforeList just before each ListSandboxes call reaches
// the real agent, to make things happen between the reconciler's reads.
type hookAgents struct {
	reconciler.Agents
	beforeList func()
}

func (h hookAgents) ForHost(host db.Host) hosts.Client {
	return hookClient{Client: h.Agents.ForHost(host), beforeList: h.beforeList}
}

type hookClient struct {
	hosts.Client
	beforeList func()
}

func (c hookClient) ListSandboxes(ctx context.Context, req *connect.Request[pb.ListSandboxesRequest]) (*connect.Response[pb.ListSandboxesResponse], error) {
	c.beforeList()
	return c.Client.ListSandboxes(ctx, req)
}

// What happens while the agent is asked: a sandbox created then is not
// taken for an orphan, and a row changed then is not overwritten by a
// decision made on the older read.
func TestPassRacesWithOtherWriters(t *testing.T) {
	pool, q, agent, team, hostID := onlineHost(t)
	ctx := t.Context()
	states := service.NewStates(pool, nil)
	change := func(id string, from, to service.Status) {
		t.Helper()
		if _, ok, err := states.Change(ctx, service.Change{SandboxID: id, From: []service.Status{from}, To: to, Actor: service.ActorReconciler, Reason: "test"}); err != nil || !ok {
			t.Fatalf("%s -> %s: %v %v", from, to, ok, err)
		}
	}
	dead := addSandbox(t, pool, team.ID, hostID, "running")
	agent.Put(dead, pb.SandboxState_SANDBOX_STATE_DEAD)
	created := ids.New(ids.Sandbox)
	hooked := true
	hook := func() {
		if !hooked {
			return
		}
		// A user paused and resumed: same state, newer row.
		change(dead, service.StatusRunning, service.StatusPaused)
		change(dead, service.StatusPaused, service.StatusRunning)
		// A create started: row first, then the agent's VM.
		if _, err := q.InsertSandbox(ctx, creating(created, team.ID, hostID)); err != nil {
			t.Fatal(err)
		}
		agent.Put(created, pb.SandboxState_SANDBOX_STATE_STARTING)
	}
	rec := reconciler.New(pool, states, hookAgents{Agents: hosts.NewPool(q, nil), beforeList: hook}, reconciler.Config{}, nil)
	if res := rec.Pass(ctx); res.OrphansDestroyed != 0 || res.Errored != 0 {
		t.Fatalf("racing pass = %+v", res)
	}
	if !agent.Has(created) || len(agent.Destroyed()) != 0 {
		t.Fatal("a sandbox created during the pass was destroyed as an orphan")
	}
	if s := status(t, q, team.ID, dead); s != "running" {
		t.Fatalf("a row changed during the pass was overwritten: %s", s)
	}
	// Without the race the same pair is applied.
	hooked = false
	if res := rec.Pass(ctx); res.Errored != 1 {
		t.Fatalf("pass = %+v", res)
	}
	if s := status(t, q, team.ID, dead); s != "error" {
		t.Fatalf("dead sandbox is %s, want error", s)
	}
}

// settles says whether a row's operation ends in the pass: all expired
// ones but a create whose VM still starts (it stays pending).
func settles(live bool, want string) bool { return !live && want != "pending" }

// Operations whose lease expired (their replica died) are settled from the
// agent's truth in one pass, by service.Reconcile; operations whose lease
// is live keep their rows and VMs; quota counts only what still runs.
func TestPassSettlesInterruptedOperations(t *testing.T) {
	pool, q, agent, team, hostID := onlineHost(t)
	ctx := t.Context()
	const absent = pb.SandboxState(-1)
	cases := []struct {
		row       string
		op        service.Op
		live      bool
		agent     pb.SandboxState
		want      string
		errText   string // part of the error message users see
		destroyed bool
	}{
		{"pending", service.OpCreate, false, absent, "error", "create was interrupted", false},
		{"pending", service.OpCreate, false, pb.SandboxState_SANDBOX_STATE_RUNNING, "running", "", false},
		{"pending", service.OpCreate, false, pb.SandboxState_SANDBOX_STATE_STARTING, "pending", "", false},
		{"pending", service.OpCreate, false, pb.SandboxState_SANDBOX_STATE_DEAD, "error", "exited unexpectedly", false},
		{"pending", service.OpCreate, true, absent, "pending", "", false},
		{"pending", service.OpCreate, true, pb.SandboxState_SANDBOX_STATE_RUNNING, "pending", "", false},
		{"running", service.OpPause, false, pb.SandboxState_SANDBOX_STATE_PAUSED, "paused", "", false},
		{"running", service.OpPause, false, pb.SandboxState_SANDBOX_STATE_RUNNING, "running", "", false},
		{"running", service.OpPause, true, absent, "running", "", false},
		{"paused", service.OpResume, false, pb.SandboxState_SANDBOX_STATE_RUNNING, "running", "", false},
		{"paused", service.OpResume, false, absent, "error", "resume was interrupted", false},
		{"paused", service.OpSnapshot, false, pb.SandboxState_SANDBOX_STATE_PAUSED, "paused", "", false},
		{"running", service.OpDestroy, false, pb.SandboxState_SANDBOX_STATE_RUNNING, "stopped", "", true},
		{"pending", service.OpDestroy, false, absent, "stopped", "", false},
	}
	sbIDs := make([]string, len(cases))
	var wantDestroyed []string
	wantActive, wantSettled := 0, 0
	for i, c := range cases {
		id := addSandbox(t, pool, team.ID, hostID, c.row)
		ttl := 0.0
		if c.live {
			ttl = 60
		}
		if _, err := q.ClaimSandboxOp(ctx, db.ClaimSandboxOpParams{Op: string(c.op), OpID: ids.New(ids.Operation), OpOwner: "cp-dead",
			OpTtlSeconds: ttl, ID: id, TeamID: team.ID, FromStatuses: []string{c.row}, TakeOver: true}); err != nil {
			t.Fatal(err)
		}
		if c.agent != absent {
			agent.Put(id, c.agent)
		}
		if c.destroyed {
			wantDestroyed = append(wantDestroyed, id)
		}
		if c.want == "pending" || c.want == "running" {
			wantActive++
		}
		if settles(c.live, c.want) {
			wantSettled++
		}
		sbIDs[i] = id
	}
	rec := reconciler.New(pool, nil, hosts.NewPool(q, nil), reconciler.Config{}, nil)
	res := rec.Pass(ctx)
	if res.HostsFailed != 0 || res.Settled != wantSettled || res.OrphansDestroyed != 0 {
		t.Fatalf("pass = %+v, want %d settled", res, wantSettled)
	}
	for i, c := range cases {
		t.Run(fmt.Sprintf("%s %s live=%v agent %v", c.row, c.op, c.live, c.agent), func(t *testing.T) {
			r, err := q.GetSandbox(ctx, db.GetSandboxParams{ID: sbIDs[i], TeamID: team.ID})
			if err != nil {
				t.Fatal(err)
			}
			if r.Status != c.want || !strings.Contains(r.ErrorMessage, c.errText) {
				t.Fatalf("row is %s (%q), want %s (%q)", r.Status, r.ErrorMessage, c.want, c.errText)
			}
			// A settled row has no operation left; the others keep theirs.
			if settles(c.live, c.want) != (r.Op == nil) {
				t.Fatalf("op after the pass = %v", r.Op)
			}
		})
	}
	if got := agent.Destroyed(); !slices.Equal(got, sortedIDs(wantDestroyed...)) {
		t.Errorf("destroyed %v, want %v", got, sortedIDs(wantDestroyed...))
	}
	if n, err := q.CountActiveSandboxes(ctx, team.ID); err != nil || n != int64(wantActive) {
		t.Errorf("active sandboxes (the team's quota) = %d (%v), want %d", n, err, wantActive)
	}
}
