package testenv

import (
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/wrenn-dev/wrenn/internal/migrate"
)

// MigratedURL returns the URL of a new database (see PostgresURL) with
// every migration applied, for code that opens its own connections.
func MigratedURL(t testing.TB) string {
	t.Helper()
	url := PostgresURL(t)
	m, err := migrate.Open(url)
	if err != nil {
		t.Fatalf("testenv: open migrations: %v", err)
	}
	defer m.Close()
	if _, err := m.Up(t.Context()); err != nil {
		t.Fatalf("testenv: migrate up: %v", err)
	}
	return url
}

// MigratedPool returns a pool on a new, fully migrated database, closed
// when the test ends, and the database's URL.
func MigratedPool(t testing.TB) (*pgxpool.Pool, string) {
	t.Helper()
	url := MigratedURL(t)
	pool, err := pgxpool.New(t.Context(), url)
	if err != nil {
		t.Fatalf("testenv: open pool: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool, url
}
