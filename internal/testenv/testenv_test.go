package testenv_test

import (
	"net"
	"net/netip"
	"os"
	"slices"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/wrenn-dev/wrenn/internal/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

func TestPostgresDatabasesAreFreshAndSeparate(t *testing.T) {
	ctx := t.Context()
	first, second := testenv.PostgresURL(t), testenv.PostgresURL(t)
	if first == second {
		t.Fatalf("two calls returned the same database %q", first)
	}
	conn, err := pgx.Connect(ctx, first)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE TABLE marker (v int); INSERT INTO marker VALUES (42)"); err != nil {
		t.Fatalf("write: %v", err)
	}
	var v int
	if err := conn.QueryRow(ctx, "SELECT v FROM marker").Scan(&v); err != nil || v != 42 {
		t.Fatalf("read back = %d, %v; want 42", v, err)
	}
	other, err := pgx.Connect(ctx, second)
	if err != nil {
		t.Fatalf("connect second: %v", err)
	}
	defer other.Close(ctx)
	var exists bool
	if err := other.QueryRow(ctx, "SELECT to_regclass('marker') IS NOT NULL").Scan(&exists); err != nil {
		t.Fatalf("query second: %v", err)
	}
	if exists {
		t.Fatal("second database sees the first one's table")
	}
}

func TestRedisRoundTrip(t *testing.T) {
	ctx := t.Context()
	opts, err := redis.ParseURL(testenv.RedisURL(t))
	if err != nil {
		t.Fatalf("parse url: %v", err)
	}
	client := redis.NewClient(opts)
	defer client.Close()
	if err := client.Set(ctx, "greeting", "hello", 0).Err(); err != nil {
		t.Fatalf("set: %v", err)
	}
	got, err := client.Get(ctx, "greeting").Result()
	if err != nil || got != "hello" {
		t.Fatalf("get = %q, %v; want hello", got, err)
	}
	otherOpts, _ := redis.ParseURL(testenv.RedisURL(t))
	other := redis.NewClient(otherOpts)
	defer other.Close()
	if n, err := other.Exists(ctx, "greeting").Result(); err != nil || n != 0 {
		t.Fatalf("second database sees the key: n=%d err=%v", n, err)
	}
}

func TestMigratedPoolHasTheSchema(t *testing.T) {
	pool, url := testenv.MigratedPool(t)
	if url == "" {
		t.Fatal("no URL returned")
	}
	var exists bool
	if err := pool.QueryRow(t.Context(), "SELECT to_regclass('sandboxes') IS NOT NULL").Scan(&exists); err != nil {
		t.Fatalf("query: %v", err)
	}
	if !exists {
		t.Fatal("migrated database has no sandboxes table")
	}
	_, other := testenv.MigratedPool(t)
	if other == url {
		t.Fatalf("two calls returned the same database %q", url)
	}
}

// TCPListeners finds this process's own listeners with their addresses.
func TestTCPListenersFindsOwnSockets(t *testing.T) {
	for _, tc := range []struct{ network, addr string }{
		{"tcp4", "127.0.0.1:0"},
		{"tcp6", "[::1]:0"},
	} {
		t.Run(tc.network, func(t *testing.T) {
			l, err := net.Listen(tc.network, tc.addr)
			testenv.Require(t, err == nil, "listen on %s: %v", tc.addr, err)
			defer l.Close()
			want := l.Addr().(*net.TCPAddr).AddrPort()
			got, err := testenv.TCPListeners(os.Getpid())
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Contains(got, netip.AddrPortFrom(want.Addr().Unmap(), want.Port())) {
				t.Fatalf("listeners %v do not include %v", got, want)
			}
		})
	}
}
