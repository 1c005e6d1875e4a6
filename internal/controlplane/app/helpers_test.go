package app

import (
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/wrenn-dev/wrenn/internal/config"
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
