package localsvc_test

import (
	"context"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/wrenn-dev/wrenn/internal/localsvc"
	"github.com/wrenn-dev/wrenn/internal/testenv"
)

// pgDir is a cluster directory the postgres user can reach, removed at the
// end.
func pgDir(t *testing.T) string {
	t.Helper()
	_, err := localsvc.PostgresBinDir()
	testenv.Require(t, err == nil, "PostgreSQL binaries: %v", err)
	dir, err := localsvc.PostgresDir(filepath.Join(t.TempDir(), "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func startPostgres(t *testing.T, dir string) *localsvc.Postgres {
	t.Helper()
	pg, err := localsvc.StartPostgres(dir, localsvc.PostgresOptions{})
	if err != nil {
		t.Fatalf("start postgres: %v", err)
	}
	t.Cleanup(func() { _ = pg.Stop() })
	return pg
}

func passwordOf(t *testing.T, rawURL string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	pw, ok := u.User.Password()
	if !ok || len(pw) < 32 {
		t.Fatalf("URL %s carries no generated password", u.Redacted())
	}
	return pw
}

func mustQuery(t *testing.T, rawURL, sql string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, rawURL)
	if err != nil {
		t.Fatalf("connect with the URL: %v", err)
	}
	defer conn.Close(ctx)
	var s string
	if err := conn.QueryRow(ctx, sql).Scan(&s); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return s
}

func fileMode(t *testing.T, path string) os.FileMode {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode().Perm()
}

// checkPostgresLockedOut has user nobody try the cluster over TCP and over
// its socket, without the password, with a wrong one, and with the right
// one (which must work over TCP: the refusals are the password's doing).
func checkPostgresLockedOut(t *testing.T, pg *localsvc.Postgres) {
	t.Helper()
	cred := testenv.Nobody(t)
	psql, err := exec.LookPath("psql")
	testenv.Require(t, err == nil, "psql not installed (postgresql-client)")
	pw := passwordOf(t, pg.URL("postgres"))
	tcp := []string{"-h", "127.0.0.1", "-p", strconv.Itoa(pg.Port())}
	for _, tc := range []struct {
		name   string
		env    []string
		target []string
		want   string // in the output
	}{
		{"tcp without a password", nil, tcp, "no password supplied"},
		{"tcp with a wrong password", []string{"PGPASSWORD=wrong-" + pw[:8]}, tcp, "password authentication failed"},
		{"socket without a password", nil, []string{"-h", pg.SocketDir(), "-p", strconv.Itoa(pg.Port())}, "Permission denied"},
		{"tcp with the password", []string{"PGPASSWORD=" + pw}, tcp, "locked-out-check"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append(append([]string{}, tc.target...), "-U", "postgres", "-w", "-d", "postgres", "-tAc", "SELECT 'locked-out-check'")
			out := testenv.RunAs(t, cred, tc.env, psql, args...)
			if !strings.Contains(out, tc.want) {
				t.Fatalf("psql as nobody answered %q, want it to contain %q", out, tc.want)
			}
			if tc.want != "locked-out-check" && strings.Contains(out, "locked-out-check") {
				t.Fatalf("psql as nobody got in: %q", out)
			}
		})
	}
}

// A new cluster asks every client for the generated password, which is
// kept 0600 and reused after a restart, data and all.
func TestPostgresNeedsItsPassword(t *testing.T) {
	dir := pgDir(t)
	pg := startPostgres(t, dir)
	checkPostgresLockedOut(t, pg)
	if m := fileMode(t, dir); m != 0o700 {
		t.Errorf("cluster dir (socket dir) mode %o, want 700", m)
	}
	if m := fileMode(t, filepath.Join(dir, "superuser-password")); m != 0o600 {
		t.Errorf("password file mode %o, want 600", m)
	}
	first := pg.URL("postgres")
	conn, err := pgx.Connect(context.Background(), first)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(context.Background(), "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('across-restarts')"); err != nil {
		t.Fatal(err)
	}
	conn.Close(context.Background())
	if err := pg.Stop(); err != nil {
		t.Fatal(err)
	}

	again := startPostgres(t, dir)
	if passwordOf(t, again.URL("postgres")) != passwordOf(t, first) {
		t.Error("the password changed across a restart")
	}
	if got := mustQuery(t, again.URL("postgres"), "SELECT v FROM kept"); got != "across-restarts" {
		t.Errorf("after a restart the table holds %q", got)
	}
}

// A cluster made by the old trust set-up (initdb -A trust, no password) is
// moved to passwords on start.
func TestPostgresMovesTrustClusterToPasswords(t *testing.T) {
	testenv.Nobody(t) // root: the old cluster is made as user postgres
	dir := pgDir(t)
	binDir, _ := localsvc.PostgresBinDir()
	pgUser, err := user.Lookup("postgres")
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(pgUser.Uid)
	gid, _ := strconv.Atoi(pgUser.Gid)
	pgCred := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, uid, gid); err != nil {
		t.Fatal(err)
	}
	initdb := exec.Command(filepath.Join(binDir, "initdb"), "-D", filepath.Join(dir, "data"), "-U", "postgres", "-A", "trust", "--no-sync", "--no-instructions")
	initdb.Dir = dir
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: pgCred}
	if out, err := initdb.CombinedOutput(); err != nil {
		t.Fatalf("initdb -A trust: %v: %s", err, out)
	}
	hba, _ := os.ReadFile(filepath.Join(dir, "data", "pg_hba.conf"))
	if !strings.Contains(string(hba), "trust") {
		t.Fatalf("the old set-up's pg_hba.conf has no trust line:\n%s", hba)
	}

	pg := startPostgres(t, dir)
	checkPostgresLockedOut(t, pg)
	hba, _ = os.ReadFile(filepath.Join(dir, "data", "pg_hba.conf"))
	if strings.Contains(string(hba), "trust") {
		t.Errorf("pg_hba.conf still trusts:\n%s", hba)
	}
	if got := mustQuery(t, pg.URL("postgres"), "SELECT current_setting('listen_addresses')"); got != "127.0.0.1" {
		t.Errorf("listen_addresses = %q, want 127.0.0.1", got)
	}
}

// Redis asks for its password, listens on 127.0.0.1 only in protected mode,
// and a persistent server keeps its password (0600) across restarts.
func TestRedisNeedsItsPassword(t *testing.T) {
	_, err := exec.LookPath("redis-server")
	testenv.Require(t, err == nil, "redis-server not installed")
	cli, err := exec.LookPath("redis-cli")
	testenv.Require(t, err == nil, "redis-cli not installed")
	cred := testenv.Nobody(t)
	dir := t.TempDir()
	start := func() *localsvc.Redis {
		r, err := localsvc.StartRedis(localsvc.RedisOptions{Dir: dir, Persist: true})
		if err != nil {
			t.Fatalf("start redis: %v", err)
		}
		t.Cleanup(r.Stop)
		return r
	}
	r := start()
	pw := passwordOf(t, r.URL(0))
	for _, tc := range []struct {
		name string
		env  []string
		want string
	}{
		{"without a password", nil, "NOAUTH"},
		{"with a wrong password", []string{"REDISCLI_AUTH=wrong-" + pw[:8]}, "WRONGPASS"},
		{"with the password", []string{"REDISCLI_AUTH=" + pw}, "PONG"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := testenv.RunAs(t, cred, tc.env, cli, "-h", "127.0.0.1", "-p", strconv.Itoa(r.Port()), "ping")
			if !strings.Contains(out, tc.want) || (tc.want != "PONG" && strings.Contains(out, "PONG")) {
				t.Fatalf("redis-cli as nobody answered %q, want %q", out, tc.want)
			}
		})
	}

	opts, err := redis.ParseURL(r.URL(0))
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(opts)
	defer c.Close()
	ctx := context.Background()
	for key, want := range map[string]string{"bind": "127.0.0.1", "protected-mode": "yes"} {
		got, err := c.ConfigGet(ctx, key).Result()
		if err != nil || got[key] != want {
			t.Errorf("CONFIG GET %s = %v, %v; want %s", key, got, err, want)
		}
	}
	if m := fileMode(t, filepath.Join(dir, "password")); m != 0o600 {
		t.Errorf("password file mode %o, want 600", m)
	}
	r.Stop()
	if again := start(); passwordOf(t, again.URL(0)) != pw {
		t.Error("a persistent server's password changed across a restart")
	}
}
