package events_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/wrenn-dev/wrenn/internal/controlplane/audit"
	"github.com/wrenn-dev/wrenn/internal/controlplane/events"
	"github.com/wrenn-dev/wrenn/internal/controlplane/ids"
	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
	"github.com/wrenn-dev/wrenn/internal/db"
	"github.com/wrenn-dev/wrenn/internal/localsvc"
	"github.com/wrenn-dev/wrenn/internal/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

func redisClient(t testing.TB, url string) *redis.Client {
	t.Helper()
	opts, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(opts)
	t.Cleanup(func() { c.Close() })
	return c
}

// sandboxes makes n pending sandbox rows spread over teams teams.
func sandboxes(t testing.TB, q *db.Queries, n, teams int) []db.Sandbox {
	t.Helper()
	ctx := context.Background()
	var teamIDs []string
	for range teams {
		tm, err := q.CreateTeam(ctx, db.CreateTeamParams{ID: ids.New(ids.Team), Name: "t"})
		if err != nil {
			t.Fatal(err)
		}
		teamIDs = append(teamIDs, tm.ID)
	}
	out := make([]db.Sandbox, n)
	for i := range out {
		r, err := q.InsertSandbox(ctx, db.InsertSandboxParams{ID: ids.New(ids.Sandbox), TeamID: teamIDs[i%teams], Template: "minimal",
			Vcpus: 1, MemoryMb: 256, DiskMb: 1024, Metadata: json.RawMessage(`{}`)})
		if err != nil {
			t.Fatal(err)
		}
		out[i] = r
	}
	return out
}

// startAll moves every sandbox pending -> running through the state seam,
// each in its own transaction.
func startAll(t testing.TB, st *service.States, sbs []db.Sandbox) {
	t.Helper()
	for _, sb := range sbs {
		_, ok, err := st.Change(context.Background(), service.Change{SandboxID: sb.ID, From: []service.Status{service.StatusPending},
			To: service.StatusRunning, Actor: service.ActorReconciler, Reason: "test"})
		if err != nil || !ok {
			t.Fatalf("start %s: %v %v", sb.ID, ok, err)
		}
	}
}

// streamEvents reads the whole stream, checking each entry's shape.
func streamEvents(t testing.TB, rdb *redis.Client) []events.Event {
	t.Helper()
	msgs, err := rdb.XRange(context.Background(), events.StreamKey, "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	out := make([]events.Event, 0, len(msgs))
	for _, m := range msgs {
		raw, ok := m.Values[events.Field].(string)
		if len(m.Values) != 1 || !ok {
			t.Fatalf("entry %s has fields %v, want only %q", m.ID, m.Values, events.Field)
		}
		var ev events.Event
		if err := json.Unmarshal([]byte(raw), &ev); err != nil {
			t.Fatalf("entry %s: %v", m.ID, err)
		}
		out = append(out, ev)
	}
	return out
}

// committedOrder is the audit trail per team, in outbox (commit) order.
func committedOrder(t testing.TB, pool *pgxpool.Pool) map[string][]string {
	t.Helper()
	rows, err := pool.Query(context.Background(), "SELECT coalesce(team_id, ''), event_id FROM audit_logs ORDER BY created_at, id")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for rows.Next() {
		var team, id string
		if err := rows.Scan(&team, &id); err != nil {
			t.Fatal(err)
		}
		out[team] = append(out[team], id)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// checkDelivered asserts every committed event arrived, at least once, and
// that per team the first arrivals keep the commit order.
func checkDelivered(t testing.TB, got []events.Event, want map[string][]string) {
	t.Helper()
	first := map[string][]string{}
	seen := map[string]bool{}
	for _, ev := range got {
		if !seen[ev.ID] {
			seen[ev.ID] = true
			first[ev.TeamID] = append(first[ev.TeamID], ev.ID)
		}
	}
	n := 0
	for team, ids := range want {
		n += len(ids)
		if !slices.Equal(first[team], ids) {
			t.Fatalf("team %s: arrived %v, committed %v", team, first[team], ids)
		}
	}
	if len(seen) != n {
		t.Fatalf("%d distinct events arrived, %d committed", len(seen), n)
	}
}

func waitBacklog(t testing.TB, r *events.Relay, want int64, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		n, err := r.Backlog(context.Background())
		if err == nil && n == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("backlog = %d (%v), want %d", n, err, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Redis stopped while 200 sandboxes change state: the events wait in
// PostgreSQL and all arrive, in order per team, once Redis is back.
func TestRelayOutlastsARedisOutage(t *testing.T) {
	pool, _ := testenv.MigratedPool(t)
	dir := t.TempDir()
	srv, err := localsvc.StartRedis(localsvc.RedisOptions{Dir: dir, Persist: true})
	testenv.Require(t, err == nil, "redis-server: %v", err)
	t.Cleanup(func() { srv.Stop() })
	rdb := redisClient(t, srv.URL(0))
	relay := events.NewRelay(pool, rdb, events.RelayConfig{Batch: 37, Poll: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}, nil)
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); relay.Run(ctx) }()
	t.Cleanup(func() { stop(); <-done })

	q := db.New(pool)
	sbs := sandboxes(t, q, 200, 4)
	srv.Stop()
	startAll(t, service.NewStates(pool, nil), sbs)
	time.Sleep(300 * time.Millisecond) // the relay tries and fails meanwhile
	if n, err := relay.Backlog(context.Background()); err != nil || n != 200 {
		t.Fatalf("backlog with Redis down = %d (%v), want 200", n, err)
	}
	srv, err = localsvc.StartRedis(localsvc.RedisOptions{Dir: dir, Persist: true, Port: srv.Port()})
	if err != nil {
		t.Fatalf("restart redis: %v", err)
	}
	waitBacklog(t, relay, 0, 10*time.Second)
	checkDelivered(t, streamEvents(t, rdb), committedOrder(t, pool))
}

// A control plane killed after the commit and before the publish: the
// next relay (after a restart, or on another replica) publishes it.
func TestRelayPublishesWhatADeadRelayLeft(t *testing.T) {
	pool, _ := testenv.MigratedPool(t)
	rdb := redisClient(t, testenv.RedisURL(t))
	sbs := sandboxes(t, db.New(pool), 10, 2)
	st := service.NewStates(pool, nil)
	startAll(t, st, sbs[:5])
	dead := events.NewRelay(pool, rdb, events.RelayConfig{}, nil)
	if n, err := dead.PublishBatch(context.Background()); err != nil || n != 5 {
		t.Fatalf("first relay published %d (%v)", n, err)
	}
	// It dies: these commits find no relay running.
	startAll(t, st, sbs[5:])
	if got := len(streamEvents(t, rdb)); got != 5 {
		t.Fatalf("%d events on the stream before the restart", got)
	}
	next := events.NewRelay(pool, rdb, events.RelayConfig{}, nil)
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); next.Run(ctx) }()
	t.Cleanup(func() { stop(); <-done })
	waitBacklog(t, next, 0, 5*time.Second)
	got := streamEvents(t, rdb)
	if len(got) != 10 {
		t.Fatalf("%d events on the stream, want 10 (none sent twice, none lost)", len(got))
	}
	checkDelivered(t, got, committedOrder(t, pool))
}

// A transaction still open holds back the rows committed after it began
// writing, so the stream keeps commit order.
func TestRelayWaitsForOpenTransactions(t *testing.T) {
	pool, _ := testenv.MigratedPool(t)
	rdb := redisClient(t, testenv.RedisURL(t))
	ctx := context.Background()
	al := audit.New()
	team := "team-" + strings.Repeat("a", 20)
	record := func(q *db.Queries, id string) {
		t.Helper()
		if err := al.SandboxRunning(ctx, q, service.ActorReconciler, audit.SandboxChange{Sandbox: db.Sandbox{ID: id, TeamID: team, Status: "running"}}); err != nil {
			t.Fatal(err)
		}
	}
	slow, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Rollback(ctx)
	record(db.New(slow), "sb-slow")
	if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { record(db.New(tx), "sb-fast"); return nil }); err != nil {
		t.Fatal(err)
	}
	relay := events.NewRelay(pool, rdb, events.RelayConfig{}, nil)
	if n, err := relay.PublishBatch(ctx); err != nil || n != 0 {
		t.Fatalf("published %d (%v) while an older transaction is open", n, err)
	}
	if err := slow.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if n, err := relay.PublishBatch(ctx); err != nil || n != 2 {
		t.Fatalf("published %d (%v) after the commit, want 2", n, err)
	}
	got := streamEvents(t, rdb)
	if len(got) != 2 || got[0].Resource.ID != "sb-slow" || got[1].Resource.ID != "sb-fast" {
		t.Fatalf("stream %+v", got)
	}
}

// The entry contract of docs/events.md, field by field.
func TestEventContract(t *testing.T) {
	pool, _ := testenv.MigratedPool(t)
	rdb := redisClient(t, testenv.RedisURL(t))
	ctx := context.Background()
	sbs := sandboxes(t, db.New(pool), 1, 1)
	key := service.Actor{Type: service.ActorAPIKey, ID: "key-abcdefghijklmnopqrst", Name: "ci"}
	if _, _, err := service.NewStates(pool, nil).Change(ctx, service.Change{SandboxID: sbs[0].ID, From: []service.Status{service.StatusPending},
		To: service.StatusRunning, Actor: key, Reason: "created"}); err != nil {
		t.Fatal(err)
	}
	if n, err := events.NewRelay(pool, rdb, events.RelayConfig{}, nil).PublishBatch(ctx); err != nil || n != 1 {
		t.Fatalf("published %d (%v)", n, err)
	}
	msgs, err := rdb.XRange(ctx, events.StreamKey, "-", "+").Result()
	if err != nil || len(msgs) != 1 {
		t.Fatalf("stream: %v %v", msgs, err)
	}
	var raw map[string]any
	if err := json.Unmarshal([]byte(msgs[0].Values["event"].(string)), &raw); err != nil {
		t.Fatal(err)
	}
	var keys []string
	for k := range raw {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if want := []string{"actor", "data", "id", "occurred_at", "resource", "status", "team_id", "type"}; !slices.Equal(keys, want) {
		t.Fatalf("event keys %v, want %v", keys, want)
	}
	at, err := time.Parse(time.RFC3339Nano, raw["occurred_at"].(string))
	if err != nil || time.Since(at) > time.Minute {
		t.Fatalf("occurred_at %v: %v", raw["occurred_at"], err)
	}
	want := map[string]any{
		"type": "sandbox.running", "team_id": sbs[0].TeamID, "status": "success",
		"actor":    map[string]any{"type": "api_key", "id": key.ID, "name": "ci"},
		"resource": map[string]any{"type": "sandbox", "id": sbs[0].ID},
	}
	for k, v := range want {
		if fmt.Sprint(raw[k]) != fmt.Sprint(v) {
			t.Errorf("%s = %v, want %v", k, raw[k], v)
		}
	}
	if !ids.Valid(ids.Event, raw["id"].(string)) || !audit.KnownEventType(raw["type"].(string)) {
		t.Errorf("id %v type %v", raw["id"], raw["type"])
	}
	if d := raw["data"].(map[string]any); d["from"] != "pending" || d["reason"] != "created" {
		t.Errorf("data %v", d)
	}
}
