package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/localsvc"
	"github.com/wrenn-dev/wrenn/internal/testenv"
)

// syncBuffer is a bytes.Buffer safe for one writer and one reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// `wrenn dev --no-agent` runs the control plane with its own PostgreSQL and
// Redis until it is stopped, makes the first admin, and leaves nothing
// running afterwards. (The full platform with an agent is e2e/TestDevEndToEnd.)
func TestDevWithoutAgentRunsUntilStopped(t *testing.T) {
	_, pgErr := localsvc.PostgresBinDir()
	testenv.Require(t, pgErr == nil, "PostgreSQL binaries: %v", pgErr)
	_, redisErr := exec.LookPath("redis-server")
	testenv.Require(t, redisErr == nil, "redis-server not installed")

	dataDir := filepath.Join(t.TempDir(), "dev")
	pgDir, err := localsvc.PostgresDir(filepath.Join(dataDir, "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(pgDir) })
	port, err := localsvc.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"DATABASE_URL", "REDIS_URL", "WRENN_JWT_SECRET"} {
		t.Setenv(k, "")
	}
	t.Setenv("WRENN_CP_LISTEN_ADDR", fmt.Sprintf("127.0.0.1:%d", port))
	base := fmt.Sprintf("http://127.0.0.1:%d", port)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr syncBuffer
	done := make(chan error, 1)
	go func() { done <- runDev(ctx, devOptions{dataDir: dataDir, noAgent: true}, &stdout, &stderr) }()

	deadline := time.Now().Add(90 * time.Second)
	for !strings.Contains(stdout.String(), "Press Ctrl-C") {
		select {
		case err := <-done:
			t.Fatalf("dev exited during start: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("dev not ready after 90 s\nstdout:\n%s", stdout.String())
		}
	}
	// It must keep running: nothing but a stop ends it.
	select {
	case err := <-done:
		t.Fatalf("dev exited on its own: %v\nstdout:\n%s", err, stdout.String())
	case <-time.After(500 * time.Millisecond):
	}
	resp, err := http.Get(base + "/health")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /health = %v, %v", resp, err)
	}
	resp.Body.Close()

	m := regexp.MustCompile(`Admin login:\s+(\S+) / (\S+)`).FindStringSubmatch(stdout.String())
	if m == nil {
		t.Fatalf("no admin credentials printed:\n%s", stdout.String())
	}
	body, _ := json.Marshal(map[string]string{"email": m[1], "password": m[2]})
	resp, err = http.Post(base+"/v1/auth/login", "application/json", bytes.NewReader(body))
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("login with the printed credentials = %v, %v", resp, err)
	}
	resp.Body.Close()
	if strings.Contains(stderr.String(), m[2]) {
		t.Fatal("the admin password appears in the log")
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("dev stopped with %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("dev did not stop within 60 s")
	}
	if _, err := http.Get(base + "/health"); err == nil {
		t.Fatal("the control plane still answers after dev stopped")
	}
	if pids := processesUsing(t, dataDir, pgDir); len(pids) > 0 {
		t.Fatalf("processes left running: %v", pids)
	}
}

// processesUsing lists processes whose command line or working directory
// mentions one of dirs (redis-server runs in its dir, postgres names its).
func processesUsing(t *testing.T, dirs ...string) []string {
	t.Helper()
	var found []string
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		b, err := os.ReadFile(filepath.Join(p, "cmdline"))
		if err != nil {
			continue
		}
		cwd, _ := os.Readlink(filepath.Join(p, "cwd"))
		cmd := string(bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
		for _, d := range dirs {
			if strings.Contains(cmd, d) || strings.HasPrefix(cwd, d) {
				found = append(found, filepath.Base(p)+": "+cmd)
			}
		}
	}
	return found
}
