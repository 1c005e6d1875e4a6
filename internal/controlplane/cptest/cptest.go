// Package cptest serves a real control plane for tests of its clients (the
// Go SDK, the CLI): the application core as `wrenn server` builds it, on
// testenv's PostgreSQL and Redis, with the in-memory host agent
// (agenttest), over HTTP on loopback.
package cptest

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/wrenn-dev/wrenn/internal/config"
	"github.com/wrenn-dev/wrenn/internal/controlplane/agenttest"
	"github.com/wrenn-dev/wrenn/internal/controlplane/api"
	"github.com/wrenn-dev/wrenn/internal/controlplane/app"
	"github.com/wrenn-dev/wrenn/internal/db"
	"github.com/wrenn-dev/wrenn/internal/testenv"
)

// ControlPlane is a served control plane with one online host.
type ControlPlane struct {
	URL   string
	Agent *agenttest.Agent
	Pool  *pgxpool.Pool
	// Handler is what the server serves (tests may wrap it to inject faults).
	Handler http.Handler
}

// Start serves a control plane on a fresh database until the test ends.
// env adds control plane settings (as the WRENN_* variables).
func Start(tb testing.TB, env map[string]string) *ControlPlane {
	tb.Helper()
	ctx := context.Background()
	dbURL := testenv.MigratedURL(tb)
	vars := map[string]string{"DATABASE_URL": dbURL, "REDIS_URL": testenv.RedisURL(tb),
		"WRENN_JWT_SECRET": strings.Repeat("t", 40), "WRENN_AUTH_RATE_LIMIT": "0"}
	for k, v := range env {
		vars[k] = v
	}
	cfg, err := config.LoadControlPlane(func(k string) string { return vars[k] })
	if err != nil {
		tb.Fatal(err)
	}
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(pool.Close)
	ropts, err := redis.ParseURL(cfg.RedisURL)
	if err != nil {
		tb.Fatal(err)
	}
	rdb := redis.NewClient(ropts)
	tb.Cleanup(func() { rdb.Close() })
	logger := slog.New(slog.DiscardHandler)
	core, err := app.NewCore(cfg, pool, rdb, logger)
	if err != nil {
		tb.Fatal(err)
	}
	deps := api.Deps{Logger: logger}
	core.Fill(&deps)
	h, err := api.New(deps)
	if err != nil {
		tb.Fatal(err)
	}
	agent := agenttest.Serve(tb)
	if _, err := db.New(pool).UpsertHost(ctx, db.UpsertHostParams{ID: "host-cptest", Name: "cptest", Address: agent.Address(), Status: "online", Vmm: "test"}); err != nil {
		tb.Fatal(err)
	}
	cp := &ControlPlane{Agent: agent, Pool: pool, Handler: h}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { cp.Handler.ServeHTTP(w, r) }))
	tb.Cleanup(srv.Close)
	cp.URL = srv.URL
	return cp
}

// Signup creates a user (the first one is a platform admin) with a team of
// its own and returns its session token.
func (cp *ControlPlane) Signup(tb testing.TB, email, password string) string {
	tb.Helper()
	body, _ := json.Marshal(map[string]string{"email": email, "password": password})
	resp, err := http.Post(cp.URL+"/v1/auth/signup", "application/json", strings.NewReader(string(body)))
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	var s struct{ Token string }
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil || resp.StatusCode != http.StatusCreated || s.Token == "" {
		tb.Fatalf("signup %s: %d %v", email, resp.StatusCode, err)
	}
	return s.Token
}
