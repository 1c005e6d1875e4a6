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
