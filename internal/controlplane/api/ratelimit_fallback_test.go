package api

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wrenn-dev/wrenn/internal/testenv"
)

func TestMemoryRateLimiter(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 59, 0, time.UTC) // a minute boundary is 1 s away
	now := t0
	l := NewMemoryRateLimiter(3, time.Minute)
	l.now = func() time.Time { return now }
	steps := []struct {
		at   time.Duration
		key  string
		want bool
	}{
		{0, "a", true}, {time.Second, "a", true}, {2 * time.Second, "a", true},
		{3 * time.Second, "a", false}, // the window follows the first request, not the clock's minute
		{3 * time.Second, "b", true},
		{59 * time.Second, "a", false},
		{60 * time.Second, "a", true}, // a's window has ended
		{61 * time.Second, "a", true},
	}
	for _, s := range steps {
		now = t0.Add(s.at)
		if got, err := l.Allow(context.Background(), s.key); err != nil || got != s.want {
			t.Fatalf("Allow(%q) at +%s = %v, %v; want %v", s.key, s.at, got, err, s.want)
		}
	}
	if n := l.size(); n != 2 {
		t.Fatalf("%d counters, want 2", n)
	}
	now = t0.Add(10 * time.Minute)
	if ok, _ := l.Allow(context.Background(), "c"); !ok {
		t.Fatal("c refused")
	}
	if n := l.size(); n != 1 {
		t.Fatalf("expired counters not swept: %d held", n)
	}
}

// switchConn fails every read and write while its Redis is "down".
type switchConn struct {
	net.Conn
	down *atomic.Bool
}

var errDown = errors.New("test: redis down")

func (c switchConn) Read(p []byte) (int, error) {
	if c.down.Load() {
		return 0, errDown
	}
	return c.Conn.Read(p)
}

func (c switchConn) Write(p []byte) (int, error) {
	if c.down.Load() {
		return 0, errDown
	}
	return c.Conn.Write(p)
}

// Through a Redis outage the limit holds (counted in this process), the
// take-over and the recovery are each logged once, and afterwards counting
// is back in Redis where it left off.
func TestFallbackRateLimiterAcrossRedisOutage(t *testing.T) {
	opts, err := redis.ParseURL(testenv.RedisURL(t))
	if err != nil {
		t.Fatal(err)
	}
	var down atomic.Bool
	opts.Dialer = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if down.Load() {
			return nil, errDown
		}
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return switchConn{Conn: c, down: &down}, nil
	}
	opts.MaxRetries = -1
	rdb := redis.NewClient(opts)
	t.Cleanup(func() { rdb.Close() })
	logs := &testenv.SyncBuffer{}
	// An hour: no window boundary falls inside the test.
	l := NewRateLimiter(rdb, 3, time.Hour, slog.New(slog.NewTextHandler(logs, nil)))
	l.probeEvery = 20 * time.Millisecond
	ctx := context.Background()
	allow := func(want bool, what string) {
		t.Helper()
		got, err := l.Allow(ctx, "login:192.0.2.1")
		if err != nil || got != want {
			t.Fatalf("%s: Allow = %v, %v; want %v", what, got, err, want)
		}
	}
	allow(true, "redis 1")
	allow(true, "redis 2")

	down.Store(true)
	for i := 1; i <= 3; i++ {
		allow(true, "fallback")
	}
	allow(false, "fallback over the limit")
	allow(false, "fallback over the limit again")
	if n := strings.Count(logs.String(), "Redis unavailable"); n != 1 {
		t.Fatalf("take-over logged %d times:\n%s", n, logs.String())
	}

	down.Store(false)
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(logs.String(), "Redis is back") {
		if time.Now().After(deadline) {
			t.Fatalf("recovery not noticed:\n%s", logs.String())
		}
		_, _ = l.Allow(ctx, "other") // requests drive the probe
		time.Sleep(10 * time.Millisecond)
	}
	allow(true, "redis 3")
	allow(false, "redis over the limit")
	if n := strings.Count(logs.String(), "Redis is back"); n != 1 {
		t.Fatalf("recovery logged %d times:\n%s", n, logs.String())
	}
}

// Around a fixed window's boundary twice the limit got through; a sliding
// window never lets more than the limit through in any window.
func TestMemoryRateLimiterAcrossABoundary(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 50, 0, time.UTC)
	now := t0
	l := NewMemoryRateLimiter(3, time.Minute)
	l.now = func() time.Time { return now }
	steps := []struct {
		at   time.Duration
		want bool
	}{
		{0, true}, {5 * time.Second, true}, {9 * time.Second, true},
		{10 * time.Second, false}, // 00:01:00, a new clock minute: still 3 in the last 60 s
		{30 * time.Second, false},
		{60 * time.Second, true},  // the request at +0 left the window
		{61 * time.Second, false}, // +5 and +9 are still in it
		{65 * time.Second, true},
		{69 * time.Second, true},
		{70 * time.Second, false},
	}
	for _, s := range steps {
		now = t0.Add(s.at)
		if got, _ := l.Allow(context.Background(), "k"); got != s.want {
			t.Fatalf("Allow at +%s = %v, want %v", s.at, got, s.want)
		}
	}
}
