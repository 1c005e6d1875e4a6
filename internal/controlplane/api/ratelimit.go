package api

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// MemoryRateLimiter counts in this process: at most limit requests per key
// in a window that starts with the key's first request. Expired counters are
// swept once per window, so memory follows the keys of the last window.
type MemoryRateLimiter struct {
	limit  int
	window time.Duration
	now    func() time.Time

	mu        sync.Mutex
	counters  map[string]*windowCount
	nextSweep time.Time
}

type windowCount struct {
	start time.Time
	n     int
}

// NewMemoryRateLimiter allows limit requests per key per window.
func NewMemoryRateLimiter(limit int, window time.Duration) *MemoryRateLimiter {
	return &MemoryRateLimiter{limit: limit, window: window, now: time.Now, counters: map[string]*windowCount{}}
}

// Allow counts one request; it never fails.
func (l *MemoryRateLimiter) Allow(_ context.Context, key string) (bool, error) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if !now.Before(l.nextSweep) {
		for k, c := range l.counters {
			if now.Sub(c.start) >= l.window {
				delete(l.counters, k)
			}
		}
		l.nextSweep = now.Add(l.window)
	}
	c := l.counters[key]
	if c == nil || now.Sub(c.start) >= l.window {
		c = &windowCount{start: now}
		l.counters[key] = c
	}
	c.n++
	return c.n <= l.limit, nil
}

// size is the number of counters held (for tests of the sweep).
func (l *MemoryRateLimiter) size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.counters)
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
// per key per window, in Redis, with an in-process fallback.
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
