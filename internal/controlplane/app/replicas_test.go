package app

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/wrenn-dev/wrenn/internal/controlplane/agenttest"
	"github.com/wrenn-dev/wrenn/internal/controlplane/api"
	"github.com/wrenn-dev/wrenn/internal/db"
	"github.com/wrenn-dev/wrenn/internal/testenv"
)

const replicaInterval = 200 * time.Millisecond

// replicaSet is N control plane cores on one database, each running its
// background loops as `wrenn server` does, and one fake agent they poll.
type replicaSet struct {
	agent *agenttest.Agent
	cores []*Core
	stops []context.CancelFunc
	dones []chan struct{}
}

func startReplicas(tb testing.TB, n int) *replicaSet {
	tb.Helper()
	pool, dbURL := testenv.MigratedPool(tb)
	cfg := testConfig(tb, map[string]string{"DATABASE_URL": dbURL, "REDIS_URL": "redis://127.0.0.1:1/0",
		"WRENN_RECONCILE_INTERVAL": replicaInterval.String()})
	rs := &replicaSet{agent: agenttest.New()}
	if err := rs.agent.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(rs.agent.Close)
	if _, err := db.New(pool).UpsertHost(context.Background(), db.UpsertHostParams{ID: "host-1", Address: rs.agent.Address(), Status: "online"}); err != nil {
		tb.Fatal(err)
	}
	for range n {
		// Each replica has its own pool, as separate processes would.
		rp, err := pgxpool.New(context.Background(), dbURL)
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(rp.Close)
		core, err := NewCore(cfg, rp, nil, slog.New(slog.DiscardHandler))
		if err != nil {
			tb.Fatal(err)
		}
		ctx, stop := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); core.RunBackground(ctx) }()
		rs.cores, rs.stops, rs.dones = append(rs.cores, core), append(rs.stops, stop), append(rs.dones, done)
		tb.Cleanup(func() { stop(); <-done })
	}
	return rs
}

func (rs *replicaSet) leaders() []int {
	var out []int
	for i, c := range rs.cores {
		if c.ReconcileLease.Leading() {
			out = append(out, i)
		}
	}
	return out
}

// waitLeader waits until exactly one replica leads and the agent has been
// polled, and returns the leader.
func (rs *replicaSet) waitLeader(tb testing.TB, except int) int {
	tb.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if l := rs.leaders(); len(l) == 1 && l[0] != except && rs.agent.Calls("ListSandboxes") > 0 {
			return l[0]
		}
		if time.Now().After(deadline) {
			tb.Fatalf("no single leader polling the agent (leaders %v, except %d)", rs.leaders(), except)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// listCallsPerInterval counts the agent's ListSandboxes calls over
// intervals reconcile intervals.
func (rs *replicaSet) listCallsPerInterval(intervals int) float64 {
	before := rs.agent.Calls("ListSandboxes")
	time.Sleep(time.Duration(intervals) * replicaInterval)
	return float64(rs.agent.Calls("ListSandboxes")-before) / float64(intervals)
}

// However many replicas run, one reconciles: the agent is listed once per
// interval with 1 replica and with 3; when the leader stops, another
// replica takes the loop over within one interval.
func TestOneReplicaReconciles(t *testing.T) {
	const intervals = 10
	var perInterval []float64
	for _, n := range []int{1, 3} {
		rs := startReplicas(t, n)
		leader := rs.waitLeader(t, -1)
		got := rs.listCallsPerInterval(intervals)
		// One pass per interval; the window's edges may miss or catch one.
		if got < float64(intervals-2)/intervals || got > float64(intervals+1)/intervals {
			t.Fatalf("%d replicas: %.2f agent list calls per interval, want 1", n, got)
		}
		if l := rs.leaders(); len(l) != 1 {
			t.Fatalf("%d replicas: leaders %v, want exactly one", n, l)
		}
		perInterval = append(perInterval, got)
		if n == 1 {
			continue
		}
		rs.stops[leader]()
		<-rs.dones[leader]
		stopped := time.Now()
		before := rs.agent.Calls("ListSandboxes")
		next := rs.waitLeader(t, leader)
		for rs.agent.Calls("ListSandboxes") == before {
			time.Sleep(5 * time.Millisecond)
		}
		if took := time.Since(stopped); took > replicaInterval+100*time.Millisecond {
			t.Fatalf("replica %d took the loop over %s after the leader stopped, want within one interval (%s)", next, took, replicaInterval)
		}
	}
	if ratio := perInterval[1] / perInterval[0]; ratio < 0.75 || ratio > 1.25 {
		t.Fatalf("agent list calls per interval: 1 replica %.2f, 3 replicas %.2f: want equal", perInterval[0], perInterval[1])
	}
}

// BenchmarkAgentListCallsPerInterval reports the agent's ListSandboxes
// calls per reconcile interval with 1 and with 3 replicas on one database,
// and their ratio (1.0 when one replica reconciles whatever their number).
func BenchmarkAgentListCallsPerInterval(b *testing.B) {
	const intervals = 20
	var one, three float64
	for b.Loop() {
		for _, n := range []int{1, 3} {
			rs := startReplicas(b, n)
			rs.waitLeader(b, -1)
			got := rs.listCallsPerInterval(intervals)
			if n == 1 {
				one += got
			} else {
				three += got
			}
		}
	}
	b.ReportMetric(one/float64(b.N), "calls/interval-1replica")
	b.ReportMetric(three/float64(b.N), "calls/interval-3replicas")
	b.ReportMetric(three/one, "ratio-3/1")
}

// A control plane that shuts down releases its leases before it closes its
// database pool, so another replica need not wait for them to expire.
func TestRunReleasesLeasesOnShutdown(t *testing.T) {
	pool, dbURL := testenv.MigratedPool(t)
	cfg := testConfig(t, map[string]string{"DATABASE_URL": dbURL, "REDIS_URL": testenv.RedisURL(t),
		"WRENN_CP_LISTEN_ADDR": "127.0.0.1:0", "WRENN_RECONCILE_INTERVAL": "1m"})
	ctx, stop := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, slog.New(slog.DiscardHandler), nil) }()
	q := db.New(pool)
	deadline := time.Now().Add(10 * time.Second)
	for {
		l, err := q.GetLease(t.Context(), "reconciler")
		if err == nil && l.ExpiresAt.After(time.Now().Add(30*time.Second)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the control plane did not take the reconciler lease (%+v, %v)", l, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	var expired bool
	if err := pool.QueryRow(t.Context(), "SELECT expires_at <= now() FROM leases WHERE name = 'reconciler'").Scan(&expired); err != nil || !expired {
		t.Fatalf("lease not released at shutdown (expired %v, err %v)", expired, err)
	}
}

// GET /health of every replica names the replica that runs the reconciler,
// and the survivor once the leader stopped.
func TestHealthNamesTheLeader(t *testing.T) {
	rs := startReplicas(t, 2)
	servers := make([]*httptest.Server, len(rs.cores))
	for i, c := range rs.cores {
		deps := api.Deps{Logger: slog.New(slog.DiscardHandler)}
		c.Fill(&deps)
		h, err := api.New(deps)
		if err != nil {
			t.Fatal(err)
		}
		servers[i] = httptest.NewServer(h)
		t.Cleanup(servers[i].Close)
	}
	type health struct {
		Replica string
		Leases  map[string]struct {
			Replica string
			Held    bool
		}
	}
	get := func(srv *httptest.Server) health {
		t.Helper()
		resp, err := http.Get(srv.URL + "/health")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var h health
		if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
			t.Fatal(err)
		}
		return h
	}
	leader := rs.waitLeader(t, -1)
	for i, srv := range servers {
		h := get(srv)
		if h.Replica != rs.cores[i].Replica {
			t.Fatalf("replica %d reports id %q, want %q", i, h.Replica, rs.cores[i].Replica)
		}
		if l := h.Leases["reconciler"]; l.Replica != rs.cores[leader].Replica || !l.Held {
			t.Fatalf("replica %d reports the reconciler lease %+v, want held by %s", i, l, rs.cores[leader].Replica)
		}
	}
	rs.stops[leader]()
	<-rs.dones[leader]
	next := rs.waitLeader(t, leader)
	deadline := time.Now().Add(replicaInterval)
	for {
		l := get(servers[next]).Leases["reconciler"]
		if l.Replica == rs.cores[next].Replica && l.Held {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("one interval after the leader stopped /health reports %+v, want %s", l, rs.cores[next].Replica)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
