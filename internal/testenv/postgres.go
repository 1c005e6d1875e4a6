package testenv

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/wrenn-dev/wrenn/internal/localsvc"
)

// PostgresURL returns the URL of a new, empty database that is dropped when
// the test ends.
func PostgresURL(t testing.TB) string {
	t.Helper()
	mustBeRunning(t)
	base, err := postgresBaseURL()
	Require(t, err == nil, "PostgreSQL: %v", err)

	env.mu.Lock()
	env.dbSeq++
	name := fmt.Sprintf("wrenn_test_%d_%d", os.Getpid(), env.dbSeq)
	env.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, base)
	if err != nil {
		t.Fatalf("testenv: connect to postgres: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatalf("testenv: create database %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, base)
		if err != nil {
			t.Errorf("testenv: connect to drop %s: %v", name, err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			t.Errorf("testenv: drop database %s: %v", name, err)
		}
	})
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("testenv: parse postgres url: %v", err)
	}
	u.Path = "/" + name
	return u.String()
}

// postgresBaseURL returns the URL of a maintenance database on the shared
// cluster, starting the cluster on first use.
func postgresBaseURL() (string, error) {
	if u := os.Getenv("WRENN_TEST_DATABASE_URL"); u != "" {
		return u, nil
	}
	env.mu.Lock()
	defer env.mu.Unlock()
	if env.pg == nil && env.pgErr == nil {
		env.pg, env.pgErr = startPostgres()
	}
	if env.pgErr != nil {
		return "", env.pgErr
	}
	return env.pg.URL("postgres"), nil
}

func startPostgres() (*localsvc.Postgres, error) {
	dir, err := os.MkdirTemp("", "wrenn-testpg-")
	if err != nil {
		return nil, fmt.Errorf("make data dir: %w", err)
	}
	env.tempDirs = append(env.tempDirs, dir)
	return localsvc.StartPostgres(dir, localsvc.PostgresOptions{})
}

// RedisURL returns the URL of an empty Redis logical database for this test.
// With WRENN_TEST_REDIS_URL set, that server is shared: use unique keys.
func RedisURL(t testing.TB) string {
	t.Helper()
	mustBeRunning(t)
	if u := os.Getenv("WRENN_TEST_REDIS_URL"); u != "" {
		return u
	}
	env.mu.Lock()
	if env.redis == nil && env.redisErr == nil {
		env.redis, env.redisErr = localsvc.StartRedis(localsvc.RedisOptions{Dir: os.TempDir(), Databases: redisDatabases})
	}
	srv, err := env.redis, env.redisErr
	env.redisSeq++
	db := env.redisSeq
	env.mu.Unlock()
	Require(t, err == nil, "Redis: %v", err)
	if db >= redisDatabases {
		t.Fatalf("testenv: more than %d Redis databases requested in one package", redisDatabases)
	}
	return srv.URL(db)
}

// redisDatabases is how many logical databases the throwaway server has;
// every RedisURL call gets its own so tests never see each other's keys.
const redisDatabases = 1024

// Execer runs SQL: a *pgx.Conn or a *pgxpool.Pool.
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// FailUpdates makes every UPDATE of table fail inside PostgreSQL (a trigger
// raising an error) until heal is called: a database fault in the middle of
// a transaction, for tests of what survives one.
func FailUpdates(t testing.TB, db Execer, table string) (heal func()) {
	t.Helper()
	ctx := context.Background()
	fn := pgx.Identifier{"testenv_fail_" + table}.Sanitize()
	tbl := pgx.Identifier{table}.Sanitize()
	for _, stmt := range []string{
		"CREATE FUNCTION " + fn + "() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'testenv: injected fault'; END $$",
		"CREATE TRIGGER " + fn + " BEFORE UPDATE ON " + tbl + " FOR EACH ROW EXECUTE FUNCTION " + fn + "()",
	} {
		if _, err := db.Exec(ctx, stmt); err != nil {
			t.Fatalf("inject update fault on %s: %v", table, err)
		}
	}
	return func() {
		t.Helper()
		if _, err := db.Exec(ctx, "DROP TRIGGER "+fn+" ON "+tbl+"; DROP FUNCTION "+fn+"()"); err != nil {
			t.Fatalf("heal update fault on %s: %v", table, err)
		}
	}
}
