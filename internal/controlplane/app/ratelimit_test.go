package app

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/controlplane/api"
	"github.com/wrenn-dev/wrenn/internal/testenv"
)

// With Redis down (nothing listens at REDIS_URL), the default limit still
// holds: the 21st bad login in a minute gets 429, from this replica's own
// counter, and the take-over is logged once.
func TestAuthRateLimitWithoutRedis(t *testing.T) {
	pool, dbURL := testenv.MigratedPool(t)
	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, map[string]string{"DATABASE_URL": dbURL, "REDIS_URL": "redis://127.0.0.1:" + strconv.Itoa(port) + "/0"})
	rdb := testRedis(t, cfg)
	var logs testenv.SyncBuffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	core, err := NewCore(cfg, pool, rdb, logger)
	if err != nil {
		t.Fatal(err)
	}
	deps := api.Deps{Logger: logger}
	core.Fill(&deps)
	h, err := api.New(deps)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)

	for i := 1; i <= 21; i++ {
		resp, err := http.Post(srv.URL+"/v1/auth/login", "application/json",
			strings.NewReader(`{"email":"nobody@example.com","password":"wrong password"}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		want := http.StatusUnauthorized
		if i == 21 {
			want = http.StatusTooManyRequests
		}
		if resp.StatusCode != want {
			t.Fatalf("login %d = %d, want %d", i, resp.StatusCode, want)
		}
	}
	if n := strings.Count(logs.String(), "rate limiter: Redis unavailable"); n != 1 {
		t.Fatalf("take-over logged %d times, want once:\n%s", n, logs.String())
	}
}
