package api

import (
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wrenn-dev/wrenn/internal/testenv"
)

func TestLoginRateLimitWithRedis(t *testing.T) {
	opts, err := redis.ParseURL(testenv.RedisURL(t))
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opts)
	t.Cleanup(func() { rdb.Close() })
	e := newEnv(t, func(o *envOpts) { o.rateLimiter = NewRedisRateLimiter(rdb, 3, time.Minute) })
	e.signup("user@example.com") // one signup: its own counter
	for i := 0; i < 3; i++ {
		e.wantErr("POST", "/v1/auth/login", map[string]string{"email": "user@example.com", "password": "wrong password"}, cred{}, 401, "invalid_credentials", "")
	}
	e.wantErr("POST", "/v1/auth/login", map[string]string{"email": "user@example.com", "password": testPassword}, cred{}, 429, "rate_limited", "")
	// Signup has its own budget.
	e.signup("other@example.com")

	// A Redis outage lets requests through rather than locking users out.
	_ = rdb.Close()
	e.want("POST", "/v1/auth/signup", map[string]string{"email": "third@example.com", "password": testPassword}, cred{}, 201, nil)
}

// The Redis window slides too: a refused key is let through again once its
// oldest request has left the window, and only as many as left.
func TestRedisRateLimiterSlides(t *testing.T) {
	opts, err := redis.ParseURL(testenv.RedisURL(t))
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opts)
	t.Cleanup(func() { rdb.Close() })
	const window = 600 * time.Millisecond
	l := NewRedisRateLimiter(rdb, 3, window)
	ctx := t.Context()
	allow := func(key string, want bool, what string) {
		t.Helper()
		if got, err := l.Allow(ctx, key); err != nil || got != want {
			t.Fatalf("%s: Allow(%s) = %v, %v; want %v", what, key, got, err, want)
		}
	}
	start := time.Now()
	allow("k", true, "first")
	time.Sleep(window / 2)
	allow("k", true, "second")
	allow("k", true, "third")
	allow("k", false, "fourth within the window")
	allow("other", true, "another key")
	time.Sleep(time.Until(start.Add(window + 50*time.Millisecond)))
	allow("k", true, "the first left the window")
	allow("k", false, "the second and third are still in it")
}
