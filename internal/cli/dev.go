package cli

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/wrenn-dev/wrenn/internal/config"
	"github.com/wrenn-dev/wrenn/internal/controlplane/app"
	"github.com/wrenn-dev/wrenn/internal/localsvc"
	"github.com/wrenn-dev/wrenn/internal/migrate"
)

func newDevCmd() *cobra.Command {
	var dataDir string
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run the whole platform on this machine with embedded defaults",
		Long: `Run the whole platform locally: its own PostgreSQL and Redis under the
data dir (unless DATABASE_URL / REDIS_URL are set), migrations, and the
control plane. Ctrl-C stops everything it started.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDev(cmd.Context(), dataDir, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", envOr("WRENN_DEV_DIR", ".wrenn-dev"), "where dev keeps its database, Redis and secrets (env WRENN_DEV_DIR)")
	return cmd
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func runDev(ctx context.Context, dataDir string, stdout, stderr io.Writer) (err error) {
	dataDir, err = filepath.Abs(dataDir)
	if err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return fmt.Errorf("make data dir: %w", err)
	}
	say := func(format string, args ...any) { fmt.Fprintf(stdout, "==> "+format+"\n", args...) }

	databaseURL := os.Getenv("DATABASE_URL")
	if databaseURL == "" {
		say("starting PostgreSQL in %s", filepath.Join(dataDir, "postgres"))
		pg, err := localsvc.StartPostgres(filepath.Join(dataDir, "postgres"), localsvc.PostgresOptions{Durable: true})
		if err != nil {
			return fmt.Errorf("start PostgreSQL (or set DATABASE_URL): %w", err)
		}
		defer func() {
			say("stopping PostgreSQL")
			if stopErr := pg.Stop(); stopErr != nil && err == nil {
				err = fmt.Errorf("stop PostgreSQL: %w", stopErr)
			}
		}()
		if err := ensureDatabase(ctx, pg.URL("postgres"), "wrenn"); err != nil {
			return err
		}
		databaseURL = pg.URL("wrenn")
	}
	redisURL := os.Getenv("REDIS_URL")
	if redisURL == "" {
		say("starting Redis in %s", filepath.Join(dataDir, "redis"))
		if err := os.MkdirAll(filepath.Join(dataDir, "redis"), 0o700); err != nil {
			return fmt.Errorf("make redis dir: %w", err)
		}
		rs, err := localsvc.StartRedis(localsvc.RedisOptions{Dir: filepath.Join(dataDir, "redis"), Persist: true})
		if err != nil {
			return fmt.Errorf("start Redis (or set REDIS_URL): %w", err)
		}
		defer func() { say("stopping Redis"); rs.Stop() }()
		redisURL = rs.URL(0)
	}

	say("migrating the database")
	m, err := migrate.Open(databaseURL)
	if err != nil {
		return err
	}
	_, err = m.Up(ctx)
	m.Close()
	if err != nil {
		return err
	}

	secret, err := devSecret(filepath.Join(dataDir, "jwt-secret"))
	if err != nil {
		return err
	}
	env := map[string]string{"DATABASE_URL": databaseURL, "REDIS_URL": redisURL, "WRENN_JWT_SECRET": secret}
	cfg, err := config.LoadControlPlane(func(name string) string {
		if v := os.Getenv(name); v != "" {
			return v
		}
		return env[name]
	})
	if err != nil {
		return err
	}
	logger := newLogger(stderr, cfg.Log)
	return app.Run(ctx, cfg, logger, func(addr net.Addr) {
		base := "http://" + displayAddr(addr)
		fmt.Fprintf(stdout, `
Wrenn is running.
  API:        %[1]s/v1
  Health:     %[1]s/health
  API docs:   %[1]s/docs
  OpenAPI:    %[1]s/openapi.yaml
  Data dir:   %[2]s
Press Ctrl-C to stop.
`, base, dataDir)
	})
}

// displayAddr turns a wildcard listen address into one a browser can open.
func displayAddr(addr net.Addr) string {
	host, port, err := net.SplitHostPort(addr.String())
	if err != nil {
		return addr.String()
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = "localhost"
	}
	return net.JoinHostPort(host, port)
}

func ensureDatabase(ctx context.Context, adminURL, name string) error {
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return fmt.Errorf("connect to local PostgreSQL: %w", err)
	}
	defer conn.Close(ctx)
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		return fmt.Errorf("look up database %s: %w", name, err)
	}
	if exists {
		return nil
	}
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	return nil
}

// devSecret returns the JWT secret kept in path, making one on first run so
// sessions survive a restart of `wrenn dev`.
func devSecret(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil && len(strings.TrimSpace(string(b))) >= config.MinJWTSecretLen {
		return strings.TrimSpace(string(b)), nil
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("read dev secret: %w", err)
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return "", fmt.Errorf("make dev secret: %w", err)
	}
	secret := hex.EncodeToString(raw)
	if err := os.WriteFile(path, []byte(secret+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write dev secret: %w", err)
	}
	return secret, nil
}
