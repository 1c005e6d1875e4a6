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
	migrateUp(t, url)
	return url
}

func migrateUp(t testing.TB, url string) {
	t.Helper()
	m, err := migrate.Open(url)
	if err != nil {
		t.Fatalf("testenv: open migrations: %v", err)
	}
	defer m.Close()
	if _, err := m.Up(t.Context()); err != nil {
		t.Fatalf("testenv: migrate up: %v", err)
	}
}

// MigratedPool returns a pool on a new, fully migrated database, closed
// when the test ends, and the database's URL.
func MigratedPool(t testing.TB) (*pgxpool.Pool, string) {
	t.Helper()
	url := MigratedURL(t)
	return openPool(t, url), url
}

// MigratedPoolAt migrates the database at url (one the test made, e.g. on
// a cluster of its own) and returns a pool on it, closed when the test ends.
func MigratedPoolAt(t testing.TB, url string) *pgxpool.Pool {
	t.Helper()
	migrateUp(t, url)
	return openPool(t, url)
}

func openPool(t testing.TB, url string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(t.Context(), url)
	if err != nil {
		t.Fatalf("testenv: open pool: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool
}
