package config

import "time"

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
	}
	r.urlWithScheme("DATABASE_URL", c.DatabaseURL, "postgres", "postgresql")
	r.urlWithScheme("REDIS_URL", c.RedisURL, "redis", "rediss", "unix")
	r.urlWithScheme("CP_PUBLIC_URL", c.PublicURL, "http", "https")
	if c.JWTSecret != "" && len(c.JWTSecret) < MinJWTSecretLen {
		r.fail("WRENN_JWT_SECRET", "must be at least %d characters, got %d", MinJWTSecretLen, len(c.JWTSecret))
	}
	return c, r.err()
}

func loadLog(r *reader) Log {
	return Log{
		Level:  r.oneOf("WRENN_LOG_LEVEL", "info", "debug", "info", "warn", "error"),
		Format: r.oneOf("WRENN_LOG_FORMAT", "text", "text", "json"),
	}
}
