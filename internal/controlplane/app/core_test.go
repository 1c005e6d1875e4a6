package app

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/wrenn-dev/wrenn/internal/controlplane/agenttest"
	"github.com/wrenn-dev/wrenn/internal/controlplane/events"
	"github.com/wrenn-dev/wrenn/internal/db"
	"github.com/wrenn-dev/wrenn/internal/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

// NewCore builds a working control plane from configuration alone: signup,
// an API key, a sandbox on a registered host, and the background
// reconciler noticing an auto-pause.
func TestNewCoreServesTheAPI(t *testing.T) {
	ctx := t.Context()
	dbURL := testenv.MigratedURL(t)
	cfg := testConfig(t, map[string]string{"DATABASE_URL": dbURL, "REDIS_URL": testenv.RedisURL(t),
		"WRENN_RECONCILE_INTERVAL": "1s", "WRENN_AUTH_RATE_LIMIT": "100"})
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	rdb := testRedis(t, cfg)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	core, srv := serveCore(t, cfg, pool, rdb, logger)
	if core.RateLimiter == nil || core.ReconcileInterval != time.Second {
		t.Fatalf("core not configured from cfg: %+v", core)
	}
	go core.RunBackground(ctx)

	agent := agenttest.New()
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(agent.Close)
	if _, err := db.New(pool).UpsertHost(ctx, db.UpsertHostParams{ID: "host-dev", Address: agent.Address(), Status: "online"}); err != nil {
		t.Fatal(err)
	}

	post := func(path, auth, body string, want int, out any) {
		t.Helper()
		postJSON(t, srv.URL+path, auth, body, want, out)
	}
	var s struct{ Token string }
	post("/v1/auth/signup", "", `{"email":"admin@example.com","password":"a long passphrase"}`, 201, &s)
	var sb struct{ ID, Status string }
	post("/v1/sandboxes", s.Token, `{}`, 201, &sb)
	agent.AutoPause(sb.ID)
	deadline := time.Now().Add(10 * time.Second)
	for {
		row, err := db.New(pool).GetSandbox(ctx, db.GetSandboxParams{ID: sb.ID, TeamID: mustTeam(t, pool)})
		if err != nil {
			t.Fatal(err)
		}
		if row.Status == "paused" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("background reconciler did not mark the auto-paused sandbox paused (status %s)", row.Status)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The background relay publishes the change to the stream, and the
	// backlog /health reports drains to zero.
	for {
		types := streamTypes(t, rdb)
		var health struct {
			EventBacklog *int64 `json:"event_backlog"`
		}
		resp, err := http.Get(srv.URL + "/health")
		if err != nil {
			t.Fatal(err)
		}
		_ = json.NewDecoder(resp.Body).Decode(&health)
		resp.Body.Close()
		if slices.Contains(types, "sandbox.auto_paused") && health.EventBacklog != nil && *health.EventBacklog == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("stream has %v, /health backlog %v", types, health.EventBacklog)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// streamTypes lists the types of the events on wrenn:events.
func streamTypes(t *testing.T, rdb *redis.Client) []string {
	t.Helper()
	msgs, err := rdb.XRange(context.Background(), events.StreamKey, "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range msgs {
		var ev events.Event
		if raw, ok := m.Values[events.Field].(string); ok && json.Unmarshal([]byte(raw), &ev) == nil {
			out = append(out, ev.Type)
		}
	}
	return out
}

func mustTeam(t *testing.T, pool *pgxpool.Pool) string {
	var id string
	if err := pool.QueryRow(context.Background(), "SELECT id FROM teams LIMIT 1").Scan(&id); err != nil {
		t.Fatal(err)
	}
	return id
}
