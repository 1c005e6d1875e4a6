package app

import (
	"context"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/wrenn-dev/wrenn/internal/controlplane/agenttest"
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
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("background reconciler did not mark the auto-paused sandbox paused (status %s)", row.Status)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func mustTeam(t *testing.T, pool *pgxpool.Pool) string {
	var id string
	if err := pool.QueryRow(context.Background(), "SELECT id FROM teams LIMIT 1").Scan(&id); err != nil {
		t.Fatal(err)
	}
	return id
}
