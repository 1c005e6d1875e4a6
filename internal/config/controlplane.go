package config

import (
	"net/netip"
	"strings"
	"time"

	"github.com/wrenn-dev/wrenn/internal/pki"
)

// ControlPlane configures `wrenn server`.
type ControlPlane struct {
	// ListenAddr is where the REST API, dashboard and docs listen.
	ListenAddr string
	// DatabaseURL is the PostgreSQL connection URL.
	DatabaseURL string
	// RedisURL is the Redis connection URL.
	RedisURL string
	// JWTSecret signs user sessions (HS256); at least 32 characters.
	JWTSecret string
	// PublicURL is how browsers and SDKs reach the control plane.
	PublicURL string
	// ShutdownTimeout bounds graceful shutdown.
	ShutdownTimeout time.Duration
	Log             Log
	// JWTTTL is how long a session token is valid.
	JWTTTL time.Duration
	// ReconcileInterval is the pace of the one sync loop with the hosts:
	// silent hosts marked unreachable, sandbox rows compared with each
	// online host's list.
	ReconcileInterval time.Duration
	// AgentLifecycleTimeout bounds create/pause/resume/destroy calls to an agent.
	AgentLifecycleTimeout time.Duration
	// OperationLease is how long a lifecycle operation stays claimed by
	// its replica after the last renewal; then the reconciler settles it.
	OperationLease time.Duration
	Limits         Limits
	Hosts          Hosts
	// EventsMaxLen caps the wrenn:events stream, approximately (XADD
	// MAXLEN ~).
	EventsMaxLen int
	// TrustedProxies are the peers (load balancers, reverse proxies) whose
	// X-Forwarded-For and Forwarded headers name the client; empty trusts
	// none, so the TCP peer is the client.
	TrustedProxies []netip.Prefix
	// ProxyDomain is the domain under which sandbox ports are reached
	// through the control plane: {port}-{sandbox_id}.{ProxyDomain}.
	ProxyDomain string
	OAuth       OAuth
	Channels    Channels
	// CA, when set (WRENN_CA_CERT and WRENN_CA_KEY), makes every call to
	// an agent mutual TLS; nil is plain HTTP mode (development).
	CA     *pki.CA
	Builds Builds
	// MetricsRetention is how long usage snapshots are kept.
	MetricsRetention time.Duration
	Metrics          Metrics
}

// Metrics configures a process's Prometheus endpoint, /metrics: served on
// ListenAddr when set, otherwise on the main port only when Token is set;
// with neither it is not served. When Token is set every scrape must send
// it as a bearer token.
type Metrics struct {
	ListenAddr string
	Token      string
}

func loadMetrics(r *reader, listenVar string) Metrics {
	m := Metrics{ListenAddr: r.str(listenVar, ""), Token: r.str("WRENN_METRICS_TOKEN", "")}
	if m.ListenAddr != "" {
		r.listenAddr(listenVar, m.ListenAddr)
	}
	if m.Token != "" && len(m.Token) < 16 {
		r.fail("WRENN_METRICS_TOKEN", "must be at least 16 characters, got %d", len(m.Token))
	}
	return m
}

// Channels configures notification channels.
type Channels struct {
	// EncryptionKey seals channel configs (AES-256); nil disables channels.
	// PreviousKey still opens configs sealed before a key rotation.
	EncryptionKey []byte
	PreviousKey   []byte
	// AllowPrivate lets channels reach loopback, private and link-local
	// addresses (development: receivers on one's own machine).
	AllowPrivate bool
	// RetryDelays are the waits before each retry of a failed delivery.
	RetryDelays []time.Duration
	// SendTimeout bounds one delivery attempt.
	SendTimeout time.Duration
	// PerChannelConcurrency bounds attempts in flight to one channel.
	PerChannelConcurrency int
	// TestRateLimit is the number of test sends per team per minute.
	TestRateLimit int
	// DeliveryRetention is how long final deliveries are kept.
	DeliveryRetention time.Duration
}

// Builds configures template builds.
type Builds struct {
	// Workers is the number of build workers per control plane (0: none).
	Workers int
	// PerHost is the most builds one host runs at once.
	PerHost int
	// MaxArchiveBytes bounds an uploaded build archive.
	MaxArchiveBytes int64
}

// OAuth configures sign-in through providers.
type OAuth struct {
	GitHub GitHubOAuth
	// DashboardURL is where browsers land after signing in through a
	// provider; it defaults to PublicURL (the dashboard the control plane
	// serves itself).
	DashboardURL string
}

// GitHubOAuth is a GitHub OAuth app; it is enabled when ClientID is set.
type GitHubOAuth struct {
	ClientID, ClientSecret string
	// BaseURL serves the authorize and token endpoints and APIURL the REST
	// API: GitHub itself by default, a GitHub Enterprise server otherwise.
	BaseURL, APIURL string
}

// Enabled reports whether the app is configured.
func (g GitHubOAuth) Enabled() bool { return g.ClientID != "" }

// Hosts configures host registration and liveness.
type Hosts struct {
	// JWTSecret signs host JWTs; empty derives a separate key from
	// JWTSecret, so user and host tokens never share a key.
	JWTSecret string
	// UnreachableAfter is the heartbeat silence that marks a host unreachable.
	UnreachableAfter time.Duration
	// Scheduler is round-robin or least-loaded.
	Scheduler string
	// MemoryOvercommit and VCPUOvercommit multiply the capacity hosts
	// report when admitting sandboxes (1.0 and 4.0).
	MemoryOvercommit float64
	VCPUOvercommit   float64
}

// Limits bound what users may ask for.
type Limits struct {
	SandboxMaxVCPUs      int
	SandboxMaxMemoryMB   int
	SandboxMaxTimeoutSec int
	// TeamMaxRunningSandboxes counts pending and running sandboxes.
	TeamMaxRunningSandboxes int
	// MaxBodyBytes bounds JSON request bodies.
	MaxBodyBytes int64
	// MaxUploadBytes bounds one file upload.
	MaxUploadBytes int64
	// AuthRateLimit is the number of signup/login attempts per client IP per
	// minute; 0 disables the limit.
	AuthRateLimit int
}

// Log configures structured logging.
type Log struct {
	// Level is debug, info, warn or error.
	Level string
	// Format is text or json.
	Format string
}

// MinJWTSecretLen is the shortest accepted WRENN_JWT_SECRET.
const MinJWTSecretLen = 32

// LoadControlPlane reads the control plane's configuration.
func LoadControlPlane(get Getenv) (ControlPlane, error) {
	r := &reader{get: get}
	c := ControlPlane{
		ListenAddr:      r.listenAddr("WRENN_CP_LISTEN_ADDR", ":8000"),
		DatabaseURL:     r.required("DATABASE_URL", "a PostgreSQL URL such as postgres://user:pass@localhost:5432/wrenn"),
		RedisURL:        r.required("REDIS_URL", "a Redis URL such as redis://localhost:6379/0"),
		JWTSecret:       r.required("WRENN_JWT_SECRET", "a random string of at least 32 characters, e.g. from `openssl rand -hex 32`"),
		PublicURL:       r.str("CP_PUBLIC_URL", ""),
		ShutdownTimeout: r.duration("WRENN_SHUTDOWN_TIMEOUT", 20*time.Second, time.Second),
		Log:             loadLog(r),

		JWTTTL:                r.duration("WRENN_JWT_TTL", 24*time.Hour, time.Minute),
		ReconcileInterval:     r.duration("WRENN_RECONCILE_INTERVAL", 5*time.Second, 100*time.Millisecond),
		AgentLifecycleTimeout: r.duration("WRENN_AGENT_LIFECYCLE_TIMEOUT", 5*time.Minute, 5*time.Second),
		OperationLease:        r.duration("WRENN_OPERATION_LEASE", 15*time.Second, 300*time.Millisecond),
		EventsMaxLen:          r.integer("WRENN_EVENTS_MAXLEN", 100000, 1000, 1<<30),
		Limits: Limits{
			SandboxMaxVCPUs:         r.integer("WRENN_SANDBOX_MAX_VCPUS", 8, 1, 256),
			SandboxMaxMemoryMB:      r.integer("WRENN_SANDBOX_MAX_MEMORY_MB", 8192, 128, 1<<22),
			SandboxMaxTimeoutSec:    r.integer("WRENN_SANDBOX_MAX_TIMEOUT_SEC", 86400, 1, 365*86400),
			TeamMaxRunningSandboxes: r.integer("WRENN_TEAM_MAX_RUNNING_SANDBOXES", 20, 1, 100000),
			MaxBodyBytes:            int64(r.integer("WRENN_MAX_BODY_BYTES", 1<<20, 1<<10, 1<<30)),
			MaxUploadBytes:          int64(r.integer("WRENN_MAX_UPLOAD_BYTES", 1<<30, 1<<10, 1<<40)),
			AuthRateLimit:           r.integer("WRENN_AUTH_RATE_LIMIT", 20, 0, 1000000),
		},
	}
	c.TrustedProxies = r.prefixes("WRENN_TRUSTED_PROXIES")
	c.ProxyDomain = strings.ToLower(strings.Trim(r.str("WRENN_PROXY_DOMAIN", "localhost"), "."))
	if c.ProxyDomain == "" || strings.ContainsAny(c.ProxyDomain, ":/ *") {
		r.fail("WRENN_PROXY_DOMAIN", "must be a domain name such as sandboxes.example.com (sandbox ports are {port}-{id}.<domain>)")
	}
	c.OAuth = loadOAuth(r, c.PublicURL)
	c.Channels = Channels{
		EncryptionKey:         r.hexKey("WRENN_ENCRYPTION_KEY"),
		PreviousKey:           r.hexKey("WRENN_ENCRYPTION_KEY_PREVIOUS"),
		AllowPrivate:          r.boolean("WRENN_CHANNELS_ALLOW_PRIVATE", false),
		RetryDelays:           r.durations("WRENN_CHANNELS_RETRY_DELAYS", []time.Duration{10 * time.Second, 30 * time.Second}, 10*time.Millisecond),
		SendTimeout:           r.duration("WRENN_CHANNELS_SEND_TIMEOUT", 10*time.Second, 100*time.Millisecond),
		PerChannelConcurrency: r.integer("WRENN_CHANNELS_PER_CHANNEL_CONCURRENCY", 4, 1, 1000),
		TestRateLimit:         r.integer("WRENN_CHANNELS_TEST_RATE_LIMIT", 10, 1, 100000),
		DeliveryRetention:     r.duration("WRENN_CHANNELS_DELIVERY_RETENTION", 30*24*time.Hour, time.Hour),
	}
	if c.Channels.PreviousKey != nil && r.str("WRENN_ENCRYPTION_KEY", "") == "" {
		r.fail("WRENN_ENCRYPTION_KEY_PREVIOUS", "is set without WRENN_ENCRYPTION_KEY (the previous key only opens configs; set the current one too)")
	}
	c.CA = r.ca("WRENN_CA_CERT", "WRENN_CA_KEY")
	c.Builds = Builds{
		Workers:         r.integer("WRENN_BUILD_WORKERS", 2, 0, 64),
		PerHost:         r.integer("WRENN_BUILDS_PER_HOST", 1, 1, 64),
		MaxArchiveBytes: int64(r.integer("WRENN_BUILD_MAX_ARCHIVE_BYTES", 64<<20, 1<<10, 1<<30)),
	}
	c.MetricsRetention = r.duration("WRENN_METRICS_RETENTION", 60*24*time.Hour, time.Hour)
	c.Metrics = loadMetrics(r, "WRENN_METRICS_LISTEN_ADDR")
	c.Hosts = Hosts{
		JWTSecret:        r.str("WRENN_HOST_JWT_SECRET", ""),
		UnreachableAfter: r.duration("WRENN_HOST_UNREACHABLE_AFTER", 90*time.Second, time.Second),
		Scheduler:        r.oneOf("WRENN_SCHEDULER", "round-robin", "round-robin", "least-loaded"),
		MemoryOvercommit: r.number("WRENN_MEMORY_OVERCOMMIT", 1.0, 0.1, 10),
		VCPUOvercommit:   r.number("WRENN_VCPU_OVERCOMMIT", 4.0, 0.1, 64),
	}
	if r.str("WRENN_HOST_MONITOR_INTERVAL", "") != "" {
		// Silent hosts and sandbox states are one loop now; a setting that
		// silently stopped working would slow failure detection unnoticed.
		r.fail("WRENN_HOST_MONITOR_INTERVAL", "was merged into WRENN_RECONCILE_INTERVAL (one loop checks hosts and sandboxes); set that instead")
	}
	if c.Hosts.JWTSecret != "" && len(c.Hosts.JWTSecret) < MinJWTSecretLen {
		r.fail("WRENN_HOST_JWT_SECRET", "must be at least %d characters, got %d", MinJWTSecretLen, len(c.Hosts.JWTSecret))
	}
	if c.Hosts.JWTSecret != "" && c.Hosts.JWTSecret == c.JWTSecret {
		r.fail("WRENN_HOST_JWT_SECRET", "must differ from WRENN_JWT_SECRET")
	}
	r.urlWithScheme("DATABASE_URL", c.DatabaseURL, "postgres", "postgresql")
	r.urlWithScheme("REDIS_URL", c.RedisURL, "redis", "rediss", "unix")
	r.urlWithScheme("CP_PUBLIC_URL", c.PublicURL, "http", "https")
	if c.JWTSecret != "" && len(c.JWTSecret) < MinJWTSecretLen {
		r.fail("WRENN_JWT_SECRET", "must be at least %d characters, got %d", MinJWTSecretLen, len(c.JWTSecret))
	}
	return c, r.err()
}

func loadOAuth(r *reader, publicURL string) OAuth {
	o := OAuth{
		GitHub: GitHubOAuth{
			ClientID: r.str("WRENN_GITHUB_CLIENT_ID", ""), ClientSecret: r.str("WRENN_GITHUB_CLIENT_SECRET", ""),
			BaseURL: r.str("WRENN_GITHUB_URL", "https://github.com"), APIURL: r.str("WRENN_GITHUB_API_URL", "https://api.github.com"),
		},
		DashboardURL: r.str("WRENN_DASHBOARD_URL", publicURL),
	}
	g := o.GitHub
	switch {
	case g.ClientID != "" && g.ClientSecret == "":
		r.fail("WRENN_GITHUB_CLIENT_SECRET", "is required when WRENN_GITHUB_CLIENT_ID is set (the OAuth app's client secret)")
	case g.ClientID == "" && g.ClientSecret != "":
		r.fail("WRENN_GITHUB_CLIENT_ID", "is required when WRENN_GITHUB_CLIENT_SECRET is set (the OAuth app's client id)")
	}
	if g.Enabled() && publicURL == "" {
		r.fail("CP_PUBLIC_URL", "is required when WRENN_GITHUB_CLIENT_ID is set: GitHub sends browsers back to CP_PUBLIC_URL/v1/auth/oauth/github/callback")
	}
	r.urlWithScheme("WRENN_GITHUB_URL", g.BaseURL, "http", "https")
	r.urlWithScheme("WRENN_GITHUB_API_URL", g.APIURL, "http", "https")
	r.urlWithScheme("WRENN_DASHBOARD_URL", o.DashboardURL, "http", "https")
	return o
}

// ca loads the CA named by two variables (PEM text or file paths): both
// or neither; each problem names the variable at fault.
func (r *reader) ca(certVar, keyVar string) *pki.CA {
	certSrc, keySrc := r.str(certVar, ""), r.str(keyVar, "")
	switch {
	case certSrc == "" && keySrc == "":
		return nil
	case certSrc == "":
		r.fail(certVar, "is required when %s is set", keyVar)
		return nil
	case keySrc == "":
		r.fail(keyVar, "is required when %s is set", certVar)
		return nil
	}
	ca, certErr, keyErr := pki.LoadCA(certSrc, keySrc, time.Now())
	if certErr != nil {
		r.fail(certVar, "%v", certErr)
	}
	if keyErr != nil {
		r.fail(keyVar, "%v", keyErr)
	}
	return ca
}

func loadLog(r *reader) Log {
	return Log{
		Level:  r.oneOf("WRENN_LOG_LEVEL", "info", "debug", "info", "warn", "error"),
		Format: r.oneOf("WRENN_LOG_FORMAT", "text", "text", "json"),
	}
}
