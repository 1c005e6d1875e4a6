package app

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/wrenn-dev/wrenn/internal/config"
	"github.com/wrenn-dev/wrenn/internal/controlplane/api"
)

// testConfig loads a control-plane configuration from env through the real
// loader, with a test JWT secret unless env sets one.
func testConfig(tb testing.TB, env map[string]string) config.ControlPlane {
	tb.Helper()
	if _, ok := env["WRENN_JWT_SECRET"]; !ok {
		env["WRENN_JWT_SECRET"] = strings.Repeat("s", 40)
	}
	cfg, err := config.LoadControlPlane(func(k string) string { return env[k] })
	if err != nil {
		tb.Fatal(err)
	}
	return cfg
}

// testRedis is a client of cfg's Redis, closed when the test ends.
func testRedis(tb testing.TB, cfg config.ControlPlane) *redis.Client {
	tb.Helper()
	opts, err := redis.ParseURL(cfg.RedisURL)
	if err != nil {
		tb.Fatal(err)
	}
	rdb := redis.NewClient(opts)
	tb.Cleanup(func() { rdb.Close() })
	return rdb
}

// serveCore builds the core from cfg and serves its REST API on loopback
// until the test ends.
func serveCore(tb testing.TB, cfg config.ControlPlane, pool *pgxpool.Pool, rdb *redis.Client, logger *slog.Logger) (*Core, *httptest.Server) {
	tb.Helper()
	core, err := NewCore(cfg, pool, rdb, logger)
	if err != nil {
		tb.Fatal(err)
	}
	deps := api.Deps{Logger: logger}
	core.Fill(&deps)
	h, err := api.New(deps)
	if err != nil {
		tb.Fatal(err)
	}
	srv := httptest.NewServer(h)
	tb.Cleanup(srv.Close)
	return core, srv
}

// postJSON posts body with a session token (auth, optional), fails the
// test unless the answer has status want, and decodes it into out (if
// not nil).
func postJSON(tb testing.TB, url, auth, body string, want int, out any) {
	tb.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if auth != "" {
		req.Header.Set("Authorization", "Bearer "+auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		tb.Fatalf("POST %s = %d %s", url, resp.StatusCode, raw)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			tb.Fatalf("POST %s: decode %s: %v", url, raw, err)
		}
	}
}
