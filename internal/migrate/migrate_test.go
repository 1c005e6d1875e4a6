package migrate_test

import (
	"os"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/wrenn-dev/wrenn/internal/migrate"
	"github.com/wrenn-dev/wrenn/internal/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

// Up, down to zero and up again must all succeed on a real database, and each
// step must leave the schema it claims.
func TestUpDownUp(t *testing.T) {
	ctx := t.Context()
	url := testenv.PostgresURL(t)
	m, err := migrate.Open(url)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer m.Close()

	tableExists := func(name string) bool {
		t.Helper()
		conn, err := pgx.Connect(ctx, url)
		if err != nil {
			t.Fatalf("connect: %v", err)
		}
		defer conn.Close(ctx)
		var ok bool
		if err := conn.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", name).Scan(&ok); err != nil {
			t.Fatalf("check table %s: %v", name, err)
		}
		return ok
	}

	for round := 1; round <= 2; round++ {
		if _, err := m.Up(ctx); err != nil {
			t.Fatalf("round %d up: %v", round, err)
		}
		v, err := m.Version(ctx)
		if err != nil || v == 0 {
			t.Fatalf("round %d version after up = %d, %v", round, v, err)
		}
		for _, table := range []string{"users", "teams", "users_teams", "team_api_keys", "templates", "sandboxes", "hosts"} {
			if !tableExists(table) {
				t.Fatalf("round %d: table %s missing after up", round, table)
			}
		}
		if round == 2 {
			break
		}
		if _, err := m.DownTo(ctx, 0); err != nil {
			t.Fatalf("down: %v", err)
		}
		if tableExists("sandboxes") || tableExists("users") {
			t.Fatal("tables remain after migrating down to 0")
		}
	}

	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close(ctx)
	var kind string
	if err := conn.QueryRow(ctx, "SELECT kind FROM templates WHERE name = 'minimal' AND team_id IS NULL").Scan(&kind); err != nil || kind != "image" {
		t.Fatalf("seeded minimal template = %q, %v; want image", kind, err)
	}
}
