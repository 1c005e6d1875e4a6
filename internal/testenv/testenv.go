// Package testenv gives tests real backing services: a throwaway PostgreSQL
// cluster (initdb + pg_ctl on a free port) and a redis-server on a free port,
// or the ones named by WRENN_TEST_DATABASE_URL and WRENN_TEST_REDIS_URL.
//
// A test package opts in with
//
//	func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }
//
// Services start lazily on first use and Run stops everything it started.
package testenv

import (
	"fmt"
	"os"
	"sync"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/localsvc"
)

// env is the state of one test binary. Test binaries are processes, so this is
// the one place where package-level state is the natural scope.
var env struct {
	mu       sync.Mutex
	running  bool
	pg       *localsvc.Postgres
	pgErr    error
	redis    *localsvc.Redis
	redisErr error
	dbSeq    int
	redisSeq int
	tempDirs []string
}

// Run runs the package's tests and stops the services they started.
func Run(m *testing.M) int {
	env.mu.Lock()
	env.running = true
	env.mu.Unlock()
	code := m.Run()
	env.mu.Lock()
	defer env.mu.Unlock()
	if env.pg != nil {
		if err := env.pg.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "testenv: stop postgres: %v\n", err)
		}
	}
	if env.redis != nil {
		env.redis.Stop()
	}
	for _, d := range env.tempDirs {
		_ = os.RemoveAll(d)
	}
	env.running = false
	return code
}

// InCI reports whether the tests run in CI, where a missing prerequisite is
// a failure rather than a reason to skip.
func InCI() bool { return os.Getenv("CI") == "true" }

// Require stops the test when a prerequisite is missing: it fails in CI and
// skips elsewhere, always saying what is missing and how to get it.
func Require(t testing.TB, ok bool, format string, args ...any) {
	t.Helper()
	if ok {
		return
	}
	msg := fmt.Sprintf(format, args...)
	if InCI() {
		t.Fatalf("prerequisite missing (CI=true, not skipping): %s", msg)
	}
	t.Skipf("prerequisite missing: %s", msg)
}

func mustBeRunning(t testing.TB) {
	t.Helper()
	env.mu.Lock()
	running := env.running
	env.mu.Unlock()
	if !running {
		t.Fatal("testenv: call os.Exit(testenv.Run(m)) from TestMain so started services are stopped")
	}
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) { return localsvc.FreePort() }
