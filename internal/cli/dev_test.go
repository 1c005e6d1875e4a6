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
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/localsvc"
	"github.com/wrenn-dev/wrenn/internal/pki"
	"github.com/wrenn-dev/wrenn/internal/testenv"
)

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
	for _, k := range []string{"DATABASE_URL", "REDIS_URL", "WRENN_JWT_SECRET", "WRENN_CP_LISTEN_ADDR", "WRENN_ENCRYPTION_KEY", "WRENN_CHANNELS_ALLOW_PRIVATE", "WRENN_CA_CERT", "WRENN_CA_KEY"} {
		t.Setenv(k, "")
	}
	listen := fmt.Sprintf("127.0.0.1:%d", port)
	base := "http://" + listen

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr testenv.SyncBuffer
	done := make(chan error, 1)
	go func() {
		done <- runDev(ctx, devOptions{dataDir: dataDir, listen: listen, noAgent: true}, &stdout, &stderr)
	}()

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
	// dev made its own CA and runs with mTLS.
	caDir := filepath.Join(dataDir, "ca")
	if _, cerr, kerr := pki.LoadCA(filepath.Join(caDir, pki.CACertFile), filepath.Join(caDir, pki.CAKeyFile), time.Now()); cerr != nil || kerr != nil {
		t.Fatalf("dev's CA: %v %v", cerr, kerr)
	}
	if st, err := os.Stat(filepath.Join(caDir, pki.CAKeyFile)); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("dev's CA key: %v %v", st, err)
	}
	if !strings.Contains(stderr.String(), "mTLS to host agents") || strings.Contains(stderr.String(), "no CA configured") {
		t.Fatalf("dev does not run with mTLS:\n%s", stderr.String())
	}

	m := regexp.MustCompile(`Admin login:\s+(\S+) / (\S+)`).FindStringSubmatch(stdout.String())
	if m == nil {
		t.Fatalf("no admin credentials printed:\n%s", stdout.String())
	}
	body, _ := json.Marshal(map[string]string{"email": m[1], "password": m[2]})
	resp, err = http.Post(base+"/v1/auth/login", "application/json", bytes.NewReader(body))
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("login with the printed credentials = %v, %v", resp, err)
	}
	var sess struct {
		Token string `json:"token"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&sess)
	resp.Body.Close()
	t.Run("channels on", func(t *testing.T) { checkDevChannels(t, base, sess.Token, dataDir, stdout.String()) })
	if strings.Contains(stderr.String(), m[2]) {
		t.Fatal("the admin password appears in the log")
	}
	t.Run("locked to its owner", func(t *testing.T) { checkDevLockedDown(t, dataDir, pgDir) })

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

// checkDevChannels: dev keeps an encryption key (0600, 64 hex digits), so
// channel routes work, and says that channels may reach private addresses.
func checkDevChannels(t *testing.T, base, token, dataDir, out string) {
	fi, err := os.Stat(filepath.Join(dataDir, "encryption-key"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("encryption key file: %v, %v", fi, err)
	}
	raw, _ := os.ReadFile(filepath.Join(dataDir, "encryption-key"))
	if !regexp.MustCompile(`^[0-9a-f]{64}\n?$`).Match(raw) {
		t.Fatalf("encryption key file holds %d bytes that are not 64 hex digits", len(raw))
	}
	if !strings.Contains(out, "WRENN_CHANNELS_ALLOW_PRIVATE=true") {
		t.Fatalf("dev does not say that channels may reach private addresses:\n%s", out)
	}
	req, _ := http.NewRequest(http.MethodGet, base+"/v1/channels", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /v1/channels = %v, %v", resp, err)
	}
	resp.Body.Close()
}

// checkDevLockedDown checks that everything dev runs listens on loopback
// only and that another local user cannot use its PostgreSQL or Redis.
func checkDevLockedDown(t *testing.T, dirs ...string) {
	pids := map[string][]int{"wrenn": {os.Getpid()}}
	for _, p := range processesUsing(t, dirs...) {
		pids[p.comm] = append(pids[p.comm], p.pid)
	}
	ports := map[string]int{}
	for comm, ps := range pids {
		ls, err := testenv.TCPListeners(ps...)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range ls {
			if !l.Addr().IsLoopback() {
				t.Errorf("%s listens on %s, not on loopback", comm, l)
			}
			ports[comm] = int(l.Port())
		}
	}
	if ports["postgres"] == 0 || ports["redis-server"] == 0 {
		t.Fatalf("no PostgreSQL or Redis listener among %v", ports)
	}
	psql, err := exec.LookPath("psql")
	testenv.Require(t, err == nil, "psql not installed (postgresql-client)")
	redisCLI, err := exec.LookPath("redis-cli")
	testenv.Require(t, err == nil, "redis-cli not installed")
	nobody := testenv.Nobody(t)
	for _, tc := range []struct {
		name string
		env  []string
		bin  string
		args []string
		want string
	}{
		{"postgres without a password", nil, psql, []string{"-h", "127.0.0.1", "-p", strconv.Itoa(ports["postgres"]), "-U", "postgres", "-w", "-d", "wrenn", "-tAc", "SELECT count(*) FROM users"}, "no password supplied"},
		{"postgres with a wrong password", []string{"PGPASSWORD=guess"}, psql, []string{"-h", "127.0.0.1", "-p", strconv.Itoa(ports["postgres"]), "-U", "postgres", "-w", "-d", "wrenn", "-tAc", "SELECT count(*) FROM users"}, "password authentication failed"},
		{"redis without a password", nil, redisCLI, []string{"-h", "127.0.0.1", "-p", strconv.Itoa(ports["redis-server"]), "keys", "*"}, "NOAUTH"},
		{"redis with a wrong password", []string{"REDISCLI_AUTH=guess"}, redisCLI, []string{"-h", "127.0.0.1", "-p", strconv.Itoa(ports["redis-server"]), "keys", "*"}, "WRONGPASS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if out := testenv.RunAs(t, nobody, tc.env, tc.bin, tc.args...); !strings.Contains(out, tc.want) {
				t.Errorf("as user nobody: %q, want %q", out, tc.want)
			}
		})
	}
}

// The control plane of dev listens on loopback unless told otherwise, by
// the flag or by the variable (the flag wins).
func TestDevListenAddress(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  string
		args []string
		want string
	}{
		{"default", "", nil, "127.0.0.1:8000"},
		{"variable", "0.0.0.0:9000", nil, "0.0.0.0:9000"},
		{"flag", "", []string{"--listen", "0.0.0.0:8000"}, "0.0.0.0:8000"},
		{"flag over variable", "127.0.0.1:9000", []string{"--listen", "0.0.0.0:8001"}, "0.0.0.0:8001"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("WRENN_CP_LISTEN_ADDR", tc.env)
			cmd := newDevCmd()
			if err := cmd.ParseFlags(tc.args); err != nil {
				t.Fatal(err)
			}
			if got, _ := cmd.Flags().GetString("listen"); got != tc.want {
				t.Errorf("listen = %q, want %q", got, tc.want)
			}
		})
	}
}

// devProc is a process found by processesUsing.
type devProc struct {
	pid  int
	comm string
	cmd  string
}

func (p devProc) String() string { return fmt.Sprintf("%d: %s", p.pid, p.cmd) }

// processesUsing lists processes whose command line or working directory
// mentions one of dirs (redis-server runs in its dir, postgres names its).
func processesUsing(t *testing.T, dirs ...string) []devProc {
	t.Helper()
	var found []devProc
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		b, err := os.ReadFile(filepath.Join(p, "cmdline"))
		if err != nil {
			continue
		}
		cwd, _ := os.Readlink(filepath.Join(p, "cwd"))
		comm, _ := os.ReadFile(filepath.Join(p, "comm"))
		pid, _ := strconv.Atoi(filepath.Base(p))
		cmd := string(bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
		for _, d := range dirs {
			if pid != os.Getpid() && (strings.Contains(cmd, d) || strings.HasPrefix(cwd, d)) {
				found = append(found, devProc{pid: pid, comm: strings.TrimSpace(string(comm)), cmd: cmd})
				break
			}
		}
	}
	return found
}
