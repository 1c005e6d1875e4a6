package app

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/wrenn-dev/wrenn/internal/config"
	"github.com/wrenn-dev/wrenn/internal/controlplane/hostauth"
	"github.com/wrenn-dev/wrenn/internal/controlplane/hosts"
)

// hostJWTTTL is a host JWT's lifetime; agents refresh it with their
// refresh token well before.
const hostJWTTTL = 7 * 24 * time.Hour

// NewHostParts builds host registration (the /v1/hosts service) around the
// core's client pool. Host liveness is the core's reconciler.
func NewHostParts(cfg config.ControlPlane, pool *pgxpool.Pool, rdb *redis.Client, agents *hosts.Pool, logger *slog.Logger) (*hostauth.Service, error) {
	key := hostauth.DeriveHostKey(cfg.JWTSecret)
	if cfg.Hosts.JWTSecret != "" {
		key = []byte(cfg.Hosts.JWTSecret)
	}
	tokens, err := hostauth.NewHostTokens(key, hostJWTTTL, nil)
	if err != nil {
		return nil, fmt.Errorf("WRENN_HOST_JWT_SECRET: %w", err)
	}
	return hostauth.New(pool, rdb, tokens, agents, hostauth.Config{CA: cfg.CA}, logger), nil
}
