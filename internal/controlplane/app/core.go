package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/wrenn-dev/wrenn/internal/config"
	"github.com/wrenn-dev/wrenn/internal/controlplane/api"
	"github.com/wrenn-dev/wrenn/internal/controlplane/audit"
	"github.com/wrenn-dev/wrenn/internal/controlplane/auth"
	"github.com/wrenn-dev/wrenn/internal/controlplane/auth/oauth"
	"github.com/wrenn-dev/wrenn/internal/controlplane/builds"
	"github.com/wrenn-dev/wrenn/internal/controlplane/channels"
	"github.com/wrenn-dev/wrenn/internal/controlplane/dashboard"
	"github.com/wrenn-dev/wrenn/internal/controlplane/events"
	"github.com/wrenn-dev/wrenn/internal/controlplane/hosts"
	"github.com/wrenn-dev/wrenn/internal/controlplane/lease"
	"github.com/wrenn-dev/wrenn/internal/controlplane/metrics"
	"github.com/wrenn-dev/wrenn/internal/controlplane/proxy"
	"github.com/wrenn-dev/wrenn/internal/controlplane/proxy/proxyurl"
	"github.com/wrenn-dev/wrenn/internal/controlplane/reconciler"
	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
	"github.com/wrenn-dev/wrenn/internal/db"
	"github.com/wrenn-dev/wrenn/internal/pki"
	"github.com/wrenn-dev/wrenn/internal/telemetry"
)

// sandboxEndInterval is how often the end-of-life timers are checked: a
// sandbox outlives its end by about this much at most.
const sandboxEndInterval = time.Second

// Core is the control plane core (accounts, teams, keys, sandboxes, the
// reconciler) built from configuration.
type Core struct {
	Service   *service.Service
	HostPool  *hosts.Pool
	Scheduler hosts.Scheduler
	// States writes sandbox status for the service and the reconciler.
	States     *service.States
	Reconciler *reconciler.Reconciler
	// Replica is this process's id, random per start; it names the holder
	// of the singleton loops' leases in the database and in logs.
	Replica string
	// ReconcileLease makes the reconciler a singleton loop: one replica
	// at a time polls the hosts.
	ReconcileLease *lease.Lease
	// SandboxEndLease makes the end-of-life timer's loop (the E2B API's
	// timeouts) a singleton.
	SandboxEndLease *lease.Lease
	// OAuth is sign-in through providers; nil when none is configured.
	OAuth *service.OAuth
	pool  *pgxpool.Pool
	// Builds runs template builds: its workers, and its reaper as a
	// singleton loop under BuildReaperLease. Nil without Redis.
	Builds           *builds.Service
	BuildReaperLease *lease.Lease
	// Sampler snapshots every team's usage; SamplerLease makes it a
	// singleton loop. Stats reads the snapshots for the API.
	Sampler      *metrics.Sampler
	SamplerLease *lease.Lease
	Stats        *metrics.Reader
	// Telemetry holds the Prometheus series (HTTP, sandboxes by state,
	// agent calls); MetricsConfig says where /metrics is served.
	Telemetry     *telemetry.ControlPlane
	MetricsConfig config.Metrics
	// Audit records actions; every row is also an event, which Relay
	// publishes to Redis while this replica holds RelayLease.
	Audit      *audit.Logger
	Relay      *events.Relay
	RelayLease *lease.Lease
	// APIDeps are the api.Deps fields the core fills in.
	RateLimiter       api.RateLimiter
	MaxBodyBytes      int64
	MaxUploadBytes    int64
	ReconcileInterval time.Duration
	TrustedProxies    []netip.Prefix
	SecureCookies     bool
	// Channels serves /v1/channels and Dispatcher delivers events to them;
	// both nil without WRENN_ENCRYPTION_KEY (the routes answer 503).
	Channels   *channels.Service
	Dispatcher *channels.Dispatcher
	// CPCerts is the control plane's client certificate for mTLS to the
	// agents (nil without a CA: plain HTTP).
	CPCerts *pki.CPCertStore
	log     *slog.Logger
	// Dashboard is nil in a binary built without its assets.
	Dashboard *dashboard.Handler
	// Proxy serves sandbox hostnames ahead of the API (Wrap); ProxyNames
	// formats their URLs and preview tokens.
	Proxy      *proxy.Proxy
	ProxyNames *proxyurl.Names
}

// cpCertRenewEvery renews the 24 h client certificate at half its life.
const cpCertRenewEvery = 12 * time.Hour

// NewCore builds the core services. rdb may be nil (no rate limits).
func NewCore(cfg config.ControlPlane, pool *pgxpool.Pool, rdb *redis.Client, logger *slog.Logger) (*Core, error) {
	ttl := cfg.JWTTTL
	if ttl == 0 {
		ttl = 24 * time.Hour
	}
	tokens, err := auth.NewTokens(cfg.JWTSecret, ttl, nil)
	if err != nil {
		return nil, fmt.Errorf("WRENN_JWT_SECRET: %w", err)
	}
	q := db.New(pool)
	tel := telemetry.NewControlPlane(sandboxCounts(q), logger)
	var certs *pki.CPCertStore
	if cfg.CA != nil {
		if certs, err = pki.NewCPCertStore(cfg.CA, nil, pki.ClientCertTTL); err != nil {
			return nil, fmt.Errorf("WRENN_CA_KEY: %w", err)
		}
		logger.Info("mTLS to host agents", "ca_expires_at", cfg.CA.Cert.NotAfter, "client_cert_expires_at", certs.Current().NotAfter)
	} else {
		logger.Warn("no CA configured (WRENN_CA_CERT, WRENN_CA_KEY): calls to host agents are plain HTTP, for development on one machine only")
	}
	hp := hosts.NewPool(q, certs, connect.WithInterceptors(tel.AgentInterceptor()))
	oc := hosts.Overcommit{Memory: cfg.Hosts.MemoryOvercommit, VCPUs: cfg.Hosts.VCPUOvercommit}
	var sch hosts.Scheduler = hosts.NewRoundRobin(oc)
	if cfg.Hosts.Scheduler == "least-loaded" {
		sch = hosts.NewLeastLoaded(oc)
	}
	al := audit.New()
	states := service.NewAuditedStates(pool, al, logger)
	replica := lease.NewReplicaID()
	svc, err := service.New(service.Deps{
		Pool: pool, Hosts: hp, Scheduler: sch, States: states, Audit: al, Tokens: tokens, Logger: logger, Replica: replica,
		Limits: service.Limits{
			MaxVCPUs: cfg.Limits.SandboxMaxVCPUs, MaxMemoryMB: cfg.Limits.SandboxMaxMemoryMB,
			MaxTimeoutSec: cfg.Limits.SandboxMaxTimeoutSec, MaxRunningPerTeam: cfg.Limits.TeamMaxRunningSandboxes,
			LifecycleTimeout: cfg.AgentLifecycleTimeout, OperationLease: cfg.OperationLease,
		},
	})
	if err != nil {
		return nil, fmt.Errorf("build service: %w", err)
	}
	c := &Core{pool: pool, Service: svc, HostPool: hp, Telemetry: tel, MetricsConfig: cfg.Metrics, Scheduler: sch, States: states, Audit: al, MaxBodyBytes: cfg.Limits.MaxBodyBytes,
		MaxUploadBytes: cfg.Limits.MaxUploadBytes, ReconcileInterval: cfg.ReconcileInterval, TrustedProxies: cfg.TrustedProxies,
		SecureCookies: strings.HasPrefix(cfg.PublicURL, "https://"),
		CPCerts:       certs, log: logger}
	if c.OAuth, err = newOAuth(cfg, svc, rdb); err != nil {
		return nil, err
	}
	if rdb != nil && cfg.Limits.AuthRateLimit > 0 {
		c.RateLimiter = api.NewRateLimiter(rdb, cfg.Limits.AuthRateLimit, time.Minute, logger)
	}
	switch c.Dashboard, err = dashboard.New(); {
	case errors.Is(err, dashboard.ErrNotBuilt):
		logger.Warn("no dashboard at /", "reason", err)
	case err != nil:
		return nil, err
	}
	if c.ReconcileInterval <= 0 {
		c.ReconcileInterval = 5 * time.Second
	}
	c.Reconciler = reconciler.New(pool, states, hp, reconciler.Config{
		Interval: c.ReconcileInterval, UnreachableAfter: cfg.Hosts.UnreachableAfter, Samples: metrics.NewSampleStore(pool)}, logger)
	c.Replica = replica
	c.ReconcileLease, err = lease.New(pool, lease.Config{Name: "reconciler", Replica: c.Replica, Interval: c.ReconcileInterval}, logger)
	if err != nil {
		return nil, fmt.Errorf("WRENN_RECONCILE_INTERVAL: %w", err)
	}
	if c.SandboxEndLease, err = lease.New(pool, lease.Config{Name: "sandbox-end", Replica: c.Replica, Interval: 5 * time.Second}, logger); err != nil {
		return nil, fmt.Errorf("sandbox end lease: %w", err)
	}
	if err := c.buildChannels(cfg, pool, rdb, logger); err != nil {
		return nil, err
	}
	if rdb != nil {
		c.Relay = events.NewRelay(pool, rdb, events.RelayConfig{MaxLen: int64(cfg.EventsMaxLen)}, logger)
		// A dead holder's backlog waits at most about this long for another
		// replica to take over.
		c.RelayLease, err = lease.New(pool, lease.Config{Name: "event-relay", Replica: c.Replica, Interval: 2 * time.Second}, logger)
		if err != nil {
			return nil, fmt.Errorf("event relay lease: %w", err)
		}
		c.Builds = builds.New(pool, rdb, svc, c.Audit, builds.Config{Workers: cfg.Builds.Workers, PerHost: cfg.Builds.PerHost,
			MaxArchiveBytes: cfg.Builds.MaxArchiveBytes, Replica: c.Replica}, logger)
		c.BuildReaperLease, err = lease.New(pool, lease.Config{Name: "build-reaper", Replica: c.Replica, Interval: builds.ReapInterval}, logger)
		if err != nil {
			return nil, fmt.Errorf("build reaper lease: %w", err)
		}
	}
	retention := cfg.MetricsRetention
	if retention == 0 {
		retention = 60 * 24 * time.Hour
	}
	if c.Sampler, err = metrics.NewSampler(pool, metrics.SamplerConfig{Retention: retention}, logger); err != nil {
		return nil, fmt.Errorf("WRENN_METRICS_RETENTION: %w", err)
	}
	if c.SamplerLease, err = lease.New(pool, lease.Config{Name: metrics.LeaseName, Replica: c.Replica, Interval: metrics.SampleInterval}, logger); err != nil {
		return nil, fmt.Errorf("metrics sampler lease: %w", err)
	}
	c.Stats = metrics.NewReader(pool, nil)
	if c.ProxyNames, err = proxyurl.New(cfg.ProxyDomain, cfg.PublicURL, []byte(cfg.JWTSecret), nil); err != nil {
		return nil, fmt.Errorf("WRENN_PROXY_DOMAIN: %w", err)
	}
	c.Proxy, err = proxy.New(proxy.Config{Service: svc, States: states, Hosts: hp, Names: c.ProxyNames, Tokens: tokens,
		TrustedProxies: cfg.TrustedProxies, Logger: logger})
	if err != nil {
		return nil, fmt.Errorf("build sandbox proxy: %w", err)
	}
	return c, nil
}

// newOAuth builds sign-in through the configured providers (nil: none).
func newOAuth(cfg config.ControlPlane, svc *service.Service, rdb *redis.Client) (*service.OAuth, error) {
	gh := cfg.OAuth.GitHub
	if !gh.Enabled() {
		return nil, nil
	}
	if rdb == nil {
		return nil, errors.New("oauth: sign-in through GitHub needs Redis (one-time codes, used states)")
	}
	github, err := oauth.NewGitHub(oauth.GitHubConfig{
		ClientID: gh.ClientID, ClientSecret: gh.ClientSecret, BaseURL: gh.BaseURL, APIURL: gh.APIURL,
		RedirectURL: strings.TrimRight(cfg.PublicURL, "/") + "/v1/auth/oauth/github/callback",
	})
	if err != nil {
		return nil, err
	}
	reg, err := oauth.NewRegistry(github)
	if err != nil {
		return nil, err
	}
	return service.NewOAuth(svc, service.OAuthConfig{Providers: reg, States: oauth.NewStateSigner(cfg.JWTSecret, nil),
		Store: oauth.NewStore(rdb), DashboardURL: cfg.OAuth.DashboardURL})
}

func (c *Core) buildChannels(cfg config.ControlPlane, pool *pgxpool.Pool, rdb *redis.Client, logger *slog.Logger) error {
	cc := cfg.Channels
	if cc.EncryptionKey == nil {
		logger.Info("notification channels disabled: WRENN_ENCRYPTION_KEY is not set")
		return nil
	}
	kr, err := channels.NewKeyring(cc.EncryptionKey, cc.PreviousKey)
	if err != nil {
		return fmt.Errorf("WRENN_ENCRYPTION_KEY: %w", err)
	}
	network := &channels.Network{AllowPrivate: cc.AllowPrivate}
	if cc.AllowPrivate {
		logger.Warn("notification channels may reach loopback and private addresses (WRENN_CHANNELS_ALLOW_PRIVATE=true)")
	}
	d := channels.Deps{Pool: pool, Keyring: kr, Network: network, Sender: channels.NewSender(network, cfg.PublicURL),
		SendTimeout: cc.SendTimeout, Audit: c.Audit, Logger: logger}
	if rdb != nil {
		d.TestLimiter = api.NewRateLimiter(rdb, cc.TestRateLimit, time.Minute, logger)
	}
	if c.Channels, err = channels.New(d); err != nil {
		return fmt.Errorf("build channels: %w", err)
	}
	if rdb == nil {
		return nil
	}
	c.Dispatcher, err = channels.NewDispatcher(channels.DispatcherConfig{Consumer: c.Replica, RetryDelays: cc.RetryDelays,
		SendTimeout: cc.SendTimeout, PerChannel: cc.PerChannelConcurrency, Retention: cc.DeliveryRetention}, c.Channels, rdb, logger)
	if err != nil {
		return fmt.Errorf("build channel dispatcher: %w", err)
	}
	return nil
}

// Fill sets the core's fields of api.Deps.
func (c *Core) Fill(d *api.Deps) {
	d.Service = c.Service
	d.OAuth = c.OAuth
	d.SecureCookies = c.SecureCookies
	d.RateLimiter = c.RateLimiter
	d.MaxBodyBytes = c.MaxBodyBytes
	d.MaxUploadBytes = c.MaxUploadBytes
	d.TrustedProxies = c.TrustedProxies
	d.Replica = c.Replica
	d.Leases = c
	d.Channels = c.Channels
	d.Builds = c.Builds
	d.Stats = c.Stats
	d.HTTPMetrics = c.Telemetry.HTTP
	if telemetry.OnMainPort(c.MetricsConfig) {
		d.Metrics = telemetry.Handler(c.Telemetry.Registry, c.MetricsConfig.Token)
	}
	d.Dashboard = c.Dashboard
	d.ProxyNames = c.ProxyNames
	if c.Relay != nil {
		d.EventBacklog = c.Relay
	}
	if d.HostUserAuth == nil {
		d.HostUserAuth = c.Service
	}
}

// Holders lists who holds each singleton loop's lease (api.LeaseReader).
func (c *Core) Holders(ctx context.Context) ([]lease.Holder, error) {
	return lease.Holders(ctx, c.pool)
}

// sandboxCounts reads the wrenn_sandboxes gauge: every status, zero
// included, so a state that empties shows 0 rather than vanishing.
func sandboxCounts(q *db.Queries) telemetry.Counts {
	return func(ctx context.Context) (map[string]float64, error) {
		rows, err := q.CountSandboxesByStatus(ctx)
		if err != nil {
			return nil, fmt.Errorf("count sandboxes by status: %w", err)
		}
		out := make(map[string]float64, len(service.AllStatuses()))
		for _, st := range service.AllStatuses() {
			out[string(st)] = 0
		}
		for _, r := range rows {
			out[r.Status] = float64(r.Sandboxes)
		}
		return out, nil
	}
}

// ReconcileNow runs one reconcile pass beside the background loop (every
// fix it makes is conditional, so the two never undo each other).
func (c *Core) ReconcileNow(ctx context.Context) error {
	if res := c.Reconciler.Pass(ctx); res.HostsFailed > 0 {
		return fmt.Errorf("reconcile: %d online hosts did not answer", res.HostsFailed)
	}
	return nil
}

// RunBackground runs the background work until ctx ends: in every replica
// the renewal of its client certificate, the channel dispatcher (the
// consumer group shares the events between replicas) and the build workers
// (WRENN_BUILD_WORKERS); the singleton loops, each while this replica holds
// its lease (the reconciler, the one poller of every host, the build
// reaper, the usage sampler and the event relay).
func (c *Core) RunBackground(ctx context.Context) {
	var wg sync.WaitGroup
	if c.Dispatcher != nil {
		wg.Go(func() { c.Dispatcher.Run(ctx) })
	}
	if c.CPCerts != nil {
		wg.Go(func() { c.CPCerts.Run(ctx, cpCertRenewEvery, c.log) })
	}
	if c.Builds != nil {
		wg.Go(func() { c.BuildReaperLease.Run(ctx, c.Builds.Reap) })
		if c.Builds.Workers() > 0 {
			wg.Go(func() { c.Builds.Run(ctx) })
		}
	}
	wg.Go(func() { c.ReconcileLease.Run(ctx, c.Reconciler.Run) })
	wg.Go(func() {
		c.SandboxEndLease.Run(ctx, func(ctx context.Context) { c.Service.RunSandboxEnds(ctx, sandboxEndInterval) })
	})
	wg.Go(func() { c.SamplerLease.Run(ctx, c.Sampler.Run) })
	if c.Relay != nil {
		wg.Go(func() { c.RelayLease.Run(ctx, c.Relay.Run) })
	}
	wg.Wait()
}
