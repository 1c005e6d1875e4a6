// Package app assembles and runs the control plane: it connects to
// PostgreSQL and Redis, builds the services and the HTTP server, and shuts
// everything down in order.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/wrenn-dev/wrenn/internal/buildinfo"
	"github.com/wrenn-dev/wrenn/internal/config"
	"github.com/wrenn-dev/wrenn/internal/controlplane/api"
	"github.com/wrenn-dev/wrenn/internal/controlplane/e2bapi"
	"github.com/wrenn-dev/wrenn/internal/controlplane/proxy"
	"github.com/wrenn-dev/wrenn/internal/telemetry"
)

// ConnectPostgres opens a pool and checks that the database answers; errors
// name DATABASE_URL and never include its password.
func ConnectPostgres(ctx context.Context, databaseURL string) (*pgxpool.Pool, error) {
	pool, err := pgxpool.New(ctx, databaseURL)
	if err != nil {
		return nil, fmt.Errorf("DATABASE_URL: %w", err)
	}
	pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := pool.Ping(pingCtx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("DATABASE_URL: cannot reach PostgreSQL at %s: %w", Redact(databaseURL), err)
	}
	return pool, nil
}

// ConnectRedis opens a client and checks that Redis answers.
func ConnectRedis(ctx context.Context, redisURL string) (*redis.Client, error) {
	opts, err := redis.ParseURL(redisURL)
	if err != nil {
		return nil, fmt.Errorf("REDIS_URL: %w", err)
	}
	client := redis.NewClient(opts)
	pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := client.Ping(pingCtx).Err(); err != nil {
		client.Close()
		return nil, fmt.Errorf("REDIS_URL: cannot reach Redis at %s: %w", Redact(redisURL), err)
	}
	return client, nil
}

// Redact hides the password of a connection URL for messages and logs.
func Redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparseable URL)"
	}
	return u.Redacted()
}

type redisPinger struct{ c *redis.Client }

func (p redisPinger) Ping(ctx context.Context) error { return p.c.Ping(ctx).Err() }

// Started is what Run hands its caller once the server listens.
type Started struct {
	// Addr is the bound address.
	Addr net.Addr
	// Reconcile runs one reconcile pass now, so that the sandbox rows of
	// every online host agree with what its agent reports; it fails when
	// a host did not answer. (`wrenn dev` waits for it after its agent's
	// first heartbeat, so its banner never shows stale states.)
	Reconcile func(ctx context.Context) error
	// MetricsAddr is the bound address of the separate /metrics listener
	// (WRENN_METRICS_LISTEN_ADDR), nil without one.
	MetricsAddr net.Addr
}

// Run serves the control plane until ctx is cancelled. ready, if not nil,
// is called once the server listens.
func Run(ctx context.Context, cfg config.ControlPlane, logger *slog.Logger, ready func(Started)) error {
	pool, err := ConnectPostgres(ctx, cfg.DatabaseURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	rdb, err := ConnectRedis(ctx, cfg.RedisURL)
	if err != nil {
		return err
	}
	defer rdb.Close()

	core, err := NewCore(cfg, pool, rdb, logger)
	if err != nil {
		return err
	}
	deps := api.Deps{
		Logger:  logger,
		Version: buildinfo.Version,
		Checks:  map[string]api.HealthChecker{"postgres": pool, "redis": redisPinger{rdb}},
	}
	core.Fill(&deps)
	hostSvc, err := NewHostParts(cfg, pool, rdb, core.HostPool, logger)
	if err != nil {
		return err
	}
	deps.Hosts = hostSvc
	handler, err := api.New(deps)
	if err != nil {
		return err
	}
	e2b := e2bapi.New(e2bapi.Deps{Logger: logger, Service: core.Service, Names: core.ProxyNames, MaxBodyBytes: deps.MaxBodyBytes,
		Forward: func(w http.ResponseWriter, r *http.Request, teamID, sandboxID string, port int, envd bool) {
			core.Proxy.Forward(w, r, teamID, sandboxID, port, proxy.ForwardOptions{AllowEnvdPort: envd})
		}})
	e2b.Mount(handler.Router())
	bgCtx, stopBackground := context.WithCancel(ctx)
	bgDone := make(chan struct{})
	go func() { defer close(bgDone); core.RunBackground(bgCtx) }()
	// Before the pool closes: the loops end and release their leases, so
	// another replica takes over at once rather than after they expire.
	defer func() { stopBackground(); <-bgDone }()

	metricsUp := make(chan net.Addr, 1)
	metricsErr := make(chan error, 1)
	go func() {
		metricsErr <- telemetry.Serve(bgCtx, cfg.Metrics, core.Telemetry.Registry, logger, func(a net.Addr) { metricsUp <- a })
	}()
	var metricsAddr net.Addr
	if cfg.Metrics.ListenAddr != "" {
		select {
		case metricsAddr = <-metricsUp:
		case err := <-metricsErr:
			return fmt.Errorf("WRENN_METRICS_LISTEN_ADDR: %w", err)
		}
	}

	ln, err := net.Listen("tcp", cfg.ListenAddr)
	if err != nil {
		return fmt.Errorf("WRENN_CP_LISTEN_ADDR: listen on %s: %w", cfg.ListenAddr, err)
	}
	srv := &http.Server{
		// Sandbox hostnames go to the proxy, and requests routed by E2B's
		// headers to the E2B layer, before the router sees them.
		Handler:           core.Proxy.Wrap(e2b.Wrap(handler)),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	logger.Info("control plane listening", "addr", ln.Addr().String(), "version", buildinfo.Version, "replica", core.Replica)
	if ready != nil {
		ready(Started{Addr: ln.Addr(), Reconcile: core.ReconcileNow, MetricsAddr: metricsAddr})
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve http: %w", err)
	case <-ctx.Done():
	}
	logger.Info("control plane shutting down")
	shutCtx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(shutCtx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("shut down http server: %w", err)
	}
	// Creates answered at once still boot; what the timeout cuts off is
	// settled by another replica's reconciler once its lease expires.
	if err := core.Service.WaitBackground(shutCtx); err != nil {
		logger.Warn("shutdown", "err", err)
	}
	return nil
}
