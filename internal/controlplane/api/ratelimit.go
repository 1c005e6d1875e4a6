package api

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// The limiters below are sliding windows: a request is allowed when fewer
// than limit requests of the key were allowed in the window that ends now.
// Each key keeps the times of its allowed requests (at most limit), so no
// window of any start ever lets more than limit through, unlike fixed
// windows, which let twice the limit through around a boundary. Refused
// requests are not recorded: a client retrying too fast is let through
// again as soon as its oldest allowed request leaves the window.

// MemoryRateLimiter is the sliding window in this process. Keys whose
// newest request left the window are swept once per window, so memory
// follows the keys of the last window.
type MemoryRateLimiter struct {
	limit  int
	window time.Duration
	now    func() time.Time

	mu        sync.Mutex
	allowed   map[string][]time.Time // oldest first
	nextSweep time.Time
}

// NewMemoryRateLimiter allows limit requests per key in any window.
func NewMemoryRateLimiter(limit int, window time.Duration) *MemoryRateLimiter {
	return &MemoryRateLimiter{limit: limit, window: window, now: time.Now, allowed: map[string][]time.Time{}}
}

// Allow counts one request; it never fails.
func (l *MemoryRateLimiter) Allow(_ context.Context, key string) (bool, error) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if !now.Before(l.nextSweep) {
		for k, times := range l.allowed {
			if now.Sub(times[len(times)-1]) >= l.window {
				delete(l.allowed, k)
			}
		}
		l.nextSweep = now.Add(l.window)
	}
	times := l.allowed[key]
	i := 0
	for i < len(times) && now.Sub(times[i]) >= l.window {
		i++
	}
	times = times[i:]
	if len(times) >= l.limit {
		l.allowed[key] = times
		return false, nil
	}
	l.allowed[key] = append(times, now)
	return true, nil
}

// slidingWindowScript is the same window in Redis, shared by every
// replica: a sorted set of allowed requests per key, scored by Redis's own
// clock in microseconds so replicas' clocks never matter. ARGV: window in
// microseconds, limit, a unique member for this request.
var slidingWindowScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000) + 1000)
return 1
`)

// RedisRateLimiter is the sliding window in Redis.
type RedisRateLimiter struct {
	rdb    *redis.Client
	limit  int
	window time.Duration
	seq    atomic.Uint64
	prefix string
}

// NewRedisRateLimiter allows limit requests per key in any window.
func NewRedisRateLimiter(rdb *redis.Client, limit int, window time.Duration) *RedisRateLimiter {
	b := make([]byte, 8)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	return &RedisRateLimiter{rdb: rdb, limit: limit, window: window, prefix: hex.EncodeToString(b)}
}

// Allow counts one request.
func (l *RedisRateLimiter) Allow(ctx context.Context, key string) (bool, error) {
	// Members must be unique across replicas and requests of one microsecond.
	member := l.prefix + ":" + strconv.FormatUint(l.seq.Add(1), 36)
	ok, err := slidingWindowScript.Run(ctx, l.rdb, []string{"wrenn:ratelimit:" + key},
		l.window.Microseconds(), l.limit, member).Int()
	if err != nil {
		return false, fmt.Errorf("rate limit window: %w", err)
	}
	return ok == 1, nil
}

// size is the number of counters held (for tests of the sweep).
func (l *MemoryRateLimiter) size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.allowed)
}

// FallbackRateLimiter counts in Redis, shared by every replica, and in this
// process while Redis fails, so signup and login stay limited during a Redis
// outage (each replica then enforces the limit on its own). It logs once
// when it takes over and once when Redis is back.
type FallbackRateLimiter struct {
	primary  RateLimiter
	ping     func(context.Context) error
	fallback *MemoryRateLimiter
	log      *slog.Logger
	now      func() time.Time
	// timeout bounds each Redis call, so a hung Redis costs a request at
	// most this long before the fallback takes over.
	timeout time.Duration
	// probeEvery: while degraded, Redis is pinged in the background at most
	// this often; requests meanwhile use the fallback without waiting.
	probeEvery time.Duration

	degraded  atomic.Bool
	nextProbe atomic.Int64 // unix nanoseconds
}

// NewRateLimiter is the control plane's signup/login limiter: limit requests
// per key in any window, in Redis, with an in-process fallback.
func NewRateLimiter(rdb *redis.Client, limit int, window time.Duration, logger *slog.Logger) *FallbackRateLimiter {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &FallbackRateLimiter{primary: NewRedisRateLimiter(rdb, limit, window),
		ping:     func(ctx context.Context) error { return rdb.Ping(ctx).Err() },
		fallback: NewMemoryRateLimiter(limit, window), log: logger, now: time.Now,
		timeout: time.Second, probeEvery: time.Second}
}

// Allow counts one request; it never fails.
func (l *FallbackRateLimiter) Allow(ctx context.Context, key string) (bool, error) {
	if l.degraded.Load() {
		l.probe(ctx)
		return l.fallback.Allow(ctx, key)
	}
	cctx, cancel := context.WithTimeout(ctx, l.timeout)
	ok, err := l.primary.Allow(cctx, key)
	cancel()
	if err == nil {
		return ok, nil
	}
	if l.degraded.CompareAndSwap(false, true) {
		l.nextProbe.Store(l.now().Add(l.probeEvery).UnixNano())
		l.log.WarnContext(ctx, "rate limiter: Redis unavailable; this replica limits signup and login on its own until it is back", "err", err)
	}
	return l.fallback.Allow(ctx, key)
}

// probe pings Redis in the background when it is time; one probe at a time.
func (l *FallbackRateLimiter) probe(ctx context.Context) {
	now := l.now()
	next := l.nextProbe.Load()
	if now.UnixNano() < next || !l.nextProbe.CompareAndSwap(next, now.Add(l.probeEvery).UnixNano()) {
		return
	}
	go func() {
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.timeout)
		defer cancel()
		if l.ping(pctx) == nil && l.degraded.CompareAndSwap(true, false) {
			l.log.InfoContext(ctx, "rate limiter: Redis is back; limits are shared by all replicas again")
		}
	}()
}
