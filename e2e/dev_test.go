package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/coder/websocket/wsjson"

	"github.com/wrenn-dev/wrenn/internal/testenv"
)

// devRun is one running `wrenn dev`.
type devRun struct {
	p      *proc
	base   string
	email  string
	apiKey string
}

var (
	bannerLogin = regexp.MustCompile(`Admin login:\s+(\S+) / (\S+)`)
	bannerKey   = regexp.MustCompile(`API key:\s+(wrn_\S+)`)
)

// devSetup is what one `wrenn dev` of a test runs with: its own agent dir,
// data dir, network names and range, and port; scrubbed when the test ends.
type devSetup struct {
	wrennDir, dataDir, prefix string
	port                      int
	env                       []string
}

// newDevSetup prepares a `wrenn dev` run: names start with tag, addresses
// are in 10.<octet>.<testID>.0/24 (each test its own octet).
func newDevSetup(t *testing.T, src, name, tag string, octet int, extraEnv ...string) devSetup {
	t.Helper()
	wrennDir := agentDir(t, src)
	dataDir := traversableTempDir(t, "wrenn-e2e-"+name+"-")
	prefix := fmt.Sprintf("%s%d-", tag, testID)
	netRange := fmt.Sprintf("10.%d.%d.0/24", octet, testID)
	t.Cleanup(func() { scrub(t, dataDir, prefix, netRange); scrub(t, wrennDir, prefix, netRange) })
	port := freePort(t)
	env := childEnv(append([]string{"WRENN_DIR=" + wrennDir, fmt.Sprintf("WRENN_CP_LISTEN_ADDR=127.0.0.1:%d", port),
		"WRENN_NET_PREFIX=" + prefix, "WRENN_NET_RANGE=" + netRange, "WRENN_VMM=qemu", "WRENN_ACCEL=tcg"}, extraEnv...)...)
	return devSetup{wrennDir: wrennDir, dataDir: dataDir, prefix: prefix, port: port, env: env}
}

// startDev runs `wrenn dev` and waits for its banner.
func startDev(t *testing.T, env []string, dataDir string, port int) devRun {
	t.Helper()
	p := startProc(t, "wrenn-dev", env, wrennBin(t), "dev", "--data-dir", dataDir)
	t.Cleanup(func() {
		if p.running() {
			p.stop(syscall.SIGINT, 90*time.Second)
		}
		if t.Failed() {
			t.Logf("logs of this wrenn dev run:\n%s", p.logs())
		}
	})
	deadline := time.Now().Add(3 * time.Minute)
	for !strings.Contains(p.stdout(), "Press Ctrl-C to stop") {
		if !p.running() {
			t.Fatalf("wrenn dev exited before its banner (code %d)\n%s", p.cmd.ProcessState.ExitCode(), p.logs())
		}
		if time.Now().After(deadline) {
			t.Fatalf("wrenn dev printed no banner within 3m\n%s", p.logs())
		}
		time.Sleep(100 * time.Millisecond)
	}
	out := p.stdout()
	login, key := bannerLogin.FindStringSubmatch(out), bannerKey.FindStringSubmatch(out)
	if login == nil || key == nil {
		t.Fatalf("banner without admin login or API key:\n%s", out)
	}
	return devRun{p: p, base: fmt.Sprintf("http://127.0.0.1:%d", port), email: login[1], apiKey: key[1]}
}

// stopDev sends Ctrl-C and checks that dev exits 0 in time and leaves no
// process, namespace, link or nft table behind.
func stopDev(t *testing.T, d devRun, dataDir, wrennDir, prefix string) {
	t.Helper()
	start := time.Now()
	code, clean := d.p.stop(syscall.SIGINT, 90*time.Second)
	took := time.Since(start)
	if !clean {
		t.Fatalf("wrenn dev did not exit within 90s of SIGINT\n%s", d.p.logs())
	}
	t.Logf("wrenn dev stopped in %s", took.Round(time.Millisecond))
	if code != 0 {
		t.Errorf("wrenn dev exited %d after SIGINT, want 0\n%s", code, d.p.logs())
	}
	// Processes a stopped parent reaps may take a moment to vanish.
	eventually(t, 10*time.Second, "no process left in the agent dir or the data dir", func() (bool, string) {
		left := append(processesUnder(wrennDir), processesUnder(dataDir)...)
		return len(left) == 0, fmt.Sprint(left)
	})
	if left := netLeftovers(prefix); len(left) > 0 {
		t.Errorf("network state left with prefix %s: %v", prefix, left)
	}
}

// TestDevEndToEnd starts `wrenn dev` and drives the platform over HTTP only,
// as a new user: signup, API key, sandbox create, exec, files, the exec
// stream, pause, resume, ping, tenancy, destroy. Ctrl-C must leave nothing
// behind, and a second start on the same data dir must bring back the admin,
// the keys and the sandbox that was running, paused.
func TestDevEndToEnd(t *testing.T) {
	src := requirePlatform(t)
	ds := newDevSetup(t, src, "dev", "wed", 234, "WRENN_RECONCILE_INTERVAL=500ms")
	wrennDir, dataDir, prefix, port, env := ds.wrennDir, ds.dataDir, ds.prefix, ds.port, ds.env

	t0 := time.Now()
	dev := startDev(t, env, dataDir, port)
	t.Logf("wrenn dev ready in %s", time.Since(t0).Round(time.Millisecond))
	anon := newClient(dev.base)
	t.Run("listens on loopback only", func(t *testing.T) { checkLoopbackOnly(t, dev, port, dataDir, wrennDir) })
	t.Run("agent refuses callers without the control plane's certificate", func(t *testing.T) { checkAgentMTLS(t, dev) })

	// A new user, its API key, and a sandbox made with the key.
	email := "e2e-" + randomHex(t, 4) + "@example.com"
	user := anon.withSession(anon.signup(t, email))
	var key struct {
		Key string `json:"key"`
		ID  string `json:"id"`
	}
	user.must(t, http.MethodPost, "/v1/api-keys", map[string]string{"name": "e2e"}, &key, http.StatusCreated)
	if !strings.HasPrefix(key.Key, "wrn_") {
		t.Fatalf("API key %q does not start with wrn_", key.Key)
	}
	api := anon.withKey(key.Key)
	t1 := time.Now()
	sb := api.createSandbox(t)
	t.Logf("sandbox %s created in %s", sb.ID, time.Since(t1).Round(time.Millisecond))

	t.Run("exec", func(t *testing.T) {
		for _, tc := range []struct {
			name     string
			body     map[string]any
			stdout   string // substring
			stderr   string
			exitCode int32
		}{
			{"uname", map[string]any{"cmd": "uname", "args": []string{"-a"}}, "Linux", "", 0},
			{"pipeline", map[string]any{"cmd": "/bin/sh", "args": []string{"-c", "echo hello wrenn | tr a-z A-Z | wc -c"}}, "12", "", 0},
			{"stderr and exit code", map[string]any{"cmd": "/bin/sh", "args": []string{"-c", "echo oops >&2; exit 3"}}, "", "oops", 3},
			{"env and cwd", map[string]any{"cmd": "/bin/sh", "args": []string{"-c", "echo $GREETING; pwd"}, "env": map[string]string{"GREETING": "hi-e2e"}, "cwd": "/tmp"}, "hi-e2e\n/tmp", "", 0},
		} {
			t.Run(tc.name, func(t *testing.T) {
				var r execResult
				api.must(t, http.MethodPost, "/v1/sandboxes/"+sb.ID+"/exec", tc.body, &r, http.StatusOK)
				if !strings.Contains(r.Stdout, tc.stdout) || !strings.Contains(r.Stderr, tc.stderr) || r.ExitCode != tc.exitCode {
					t.Errorf("got stdout %q stderr %q exit %d; want stdout ~%q stderr ~%q exit %d", r.Stdout, r.Stderr, r.ExitCode, tc.stdout, tc.stderr, tc.exitCode)
				}
			})
		}
	})

	t.Run("file round trip", func(t *testing.T) {
		data := make([]byte, 3<<20+12345)
		if _, err := rand.Read(data); err != nil {
			t.Fatal(err)
		}
		var body bytes.Buffer
		mw := multipart.NewWriter(&body)
		_ = mw.WriteField("path", "/tmp/e2e-blob.bin")
		fw, err := mw.CreateFormFile("file", "blob.bin")
		if err != nil {
			t.Fatal(err)
		}
		fw.Write(data)
		mw.Close()
		if status, b := api.raw(t, http.MethodPost, "/v1/sandboxes/"+sb.ID+"/files/write", mw.FormDataContentType(), &body); status != http.StatusOK {
			t.Fatalf("files/write: %d %s", status, b)
		}
		if r := api.sh(t, sb.ID, "wc -c < /tmp/e2e-blob.bin"); strings.TrimSpace(r.Stdout) != strconv.Itoa(len(data)) {
			t.Errorf("size in the guest %q, want %d", r.Stdout, len(data))
		}
		status, got := api.do(t, http.MethodPost, "/v1/sandboxes/"+sb.ID+"/files/read", map[string]string{"path": "/tmp/e2e-blob.bin"})
		if status != http.StatusOK {
			t.Fatalf("files/read: %d %.200s", status, got)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("read back %d bytes, not identical to the %d written", len(got), len(data))
		}
	})

	t.Run("exec stream", func(t *testing.T) {
		for _, tc := range []struct {
			name  string
			query string
			hdr   http.Header
		}{
			{"key header", "", http.Header{"X-API-Key": {key.Key}}},
			{"key query", "?api_key=" + key.Key, nil},
		} {
			t.Run(tc.name, func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				url := "ws" + strings.TrimPrefix(dev.base, "http") + "/v1/sandboxes/" + sb.ID + "/exec/stream" + tc.query
				c, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: tc.hdr})
				if err != nil {
					t.Fatalf("dial: %v", err)
				}
				defer c.CloseNow()
				start := map[string]any{"type": "start", "cmd": "/bin/sh", "args": []string{"-c", "echo out-1; echo err-1 >&2; sleep 0.2; echo out-2; exit 7"}}
				if err := wsjson.Write(ctx, c, start); err != nil {
					t.Fatal(err)
				}
				var types []string
				var stdout, stderr string
				var exit map[string]any
				for exit == nil {
					var m map[string]any
					if err := wsjson.Read(ctx, c, &m); err != nil {
						t.Fatalf("read after %v: %v", types, err)
					}
					typ, _ := m["type"].(string)
					types = append(types, typ)
					data, _ := m["data"].(string)
					switch typ {
					case "stdout":
						stdout += data
					case "stderr":
						stderr += data
					case "exit":
						exit = m
					case "error":
						t.Fatalf("stream error: %v", m)
					}
				}
				if types[0] != "start" || stdout != "out-1\nout-2\n" || stderr != "err-1\n" {
					t.Errorf("messages %v, stdout %q, stderr %q", types, stdout, stderr)
				}
				if code, _ := exit["exit_code"].(float64); code != 7 {
					t.Errorf("exit message %v, want exit_code 7", exit)
				}
			})
		}
	})

	t.Run("pause and resume keep memory", func(t *testing.T) {
		var bg struct {
			PID uint32 `json:"pid"`
		}
		api.must(t, http.MethodPost, "/v1/sandboxes/"+sb.ID+"/exec", map[string]any{"cmd": "/bin/sh", "args": []string{"-c",
			"i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.1; done"}, "background": true, "tag": "counter"}, &bg, http.StatusOK, http.StatusCreated)
		if bg.PID == 0 {
			t.Fatal("background exec answered no pid")
		}
		counter := func() int {
			r := api.sh(t, sb.ID, "cat /tmp/counter")
			n, err := strconv.Atoi(strings.TrimSpace(r.Stdout))
			if err != nil {
				t.Fatalf("counter %q: %v", r.Stdout, err)
			}
			return n
		}
		var before int
		eventually(t, 10*time.Second, "the counter runs", func() (bool, string) {
			r := api.sh(t, sb.ID, "cat /tmp/counter 2>/dev/null")
			before, _ = strconv.Atoi(strings.TrimSpace(r.Stdout))
			return before > 0, r.Stdout
		})
		api.sh(t, sb.ID, "echo kept-in-tmp > /tmp/marker")

		tp := time.Now()
		var paused sandbox
		api.must(t, http.MethodPost, "/v1/sandboxes/"+sb.ID+"/pause", nil, &paused, http.StatusOK)
		t.Logf("pause took %s", time.Since(tp).Round(time.Millisecond))
		if paused.Status != "paused" || api.getSandbox(t, sb.ID).Status != "paused" {
			t.Fatalf("after pause the sandbox is %q", paused.Status)
		}
		if status, b := api.do(t, http.MethodPost, "/v1/sandboxes/"+sb.ID+"/exec", map[string]any{"cmd": "true"}); status != http.StatusConflict {
			t.Errorf("exec on a paused sandbox: %d %s, want 409", status, b)
		}
		tr := time.Now()
		var resumed sandbox
		api.must(t, http.MethodPost, "/v1/sandboxes/"+sb.ID+"/resume", map[string]any{}, &resumed, http.StatusOK)
		t.Logf("resume took %s", time.Since(tr).Round(time.Millisecond))
		if resumed.Status != "running" {
			t.Fatalf("after resume the sandbox is %q", resumed.Status)
		}
		if r := api.sh(t, sb.ID, "cat /tmp/marker"); r.Stdout != "kept-in-tmp\n" {
			t.Errorf("marker after resume: %q", r.Stdout)
		}
		after := counter()
		if after < before {
			t.Errorf("counter went back from %d to %d: the process restarted", before, after)
		}
		eventually(t, 10*time.Second, "the counter keeps counting after resume", func() (bool, string) {
			n := counter()
			return n > after, fmt.Sprintf("%d (was %d)", n, after)
		})
		var ping map[string]any
		api.must(t, http.MethodPost, "/v1/sandboxes/"+sb.ID+"/ping", nil, &ping, http.StatusOK)
	})

	t.Run("another team sees nothing", func(t *testing.T) {
		other := anon.withSession(anon.signup(t, "e2e-other-"+randomHex(t, 4)+"@example.com"))
		for _, r := range []struct{ method, path string }{
			{http.MethodGet, "/v1/sandboxes/" + sb.ID},
			{http.MethodPost, "/v1/sandboxes/" + sb.ID + "/exec"},
			{http.MethodPost, "/v1/sandboxes/" + sb.ID + "/pause"},
			{http.MethodDelete, "/v1/sandboxes/" + sb.ID},
		} {
			var body any
			if r.method == http.MethodPost {
				body = map[string]any{"cmd": "true"}
				if strings.HasSuffix(r.path, "/pause") {
					body = nil
				}
			}
			if status, b := other.do(t, r.method, r.path, body); status != http.StatusNotFound {
				t.Errorf("%s %s as another team: %d %s, want 404", r.method, r.path, status, b)
			}
		}
		if got := api.getSandbox(t, sb.ID).Status; got != "running" {
			t.Errorf("after the other team's attempts the sandbox is %q", got)
		}
	})

	t.Run("services stay up", func(t *testing.T) {
		// A token regeneration needs Redis and PostgreSQL: after VMs came
		// and went in this process, both must still answer (Redis once died
		// here when a thread that had started it ended).
		var login struct {
			Token string `json:"token"`
		}
		m := bannerLogin.FindStringSubmatch(dev.p.stdout())
		anon.must(t, http.MethodPost, "/v1/auth/login", map[string]string{"email": m[1], "password": m[2]}, &login, http.StatusOK)
		admin := anon.withSession(login.Token)
		var hosts struct {
			Hosts []struct {
				ID     string `json:"id"`
				Status string `json:"status"`
			} `json:"hosts"`
		}
		admin.must(t, http.MethodGet, "/v1/hosts", nil, &hosts, http.StatusOK)
		if len(hosts.Hosts) != 1 || hosts.Hosts[0].Status != "online" {
			t.Fatalf("hosts: %+v, want dev's one host online", hosts.Hosts)
		}
		admin.must(t, http.MethodPost, "/v1/hosts/"+hosts.Hosts[0].ID+"/token", nil, nil, http.StatusOK)
		var comms []string
		for _, p := range processesUnder(dataDir) {
			comms = append(comms, p.comm)
		}
		if !slices.Contains(comms, "redis-server") || !slices.Contains(comms, "postgres") {
			t.Errorf("processes in the data dir: %v, want redis-server and postgres alive", comms)
		}
	})

	// Destroy this one; a second sandbox stays running across the restart.
	api.must(t, http.MethodDelete, "/v1/sandboxes/"+sb.ID, nil, nil, http.StatusNoContent, http.StatusOK)
	if got := api.getSandbox(t, sb.ID).Status; got != "stopped" {
		t.Errorf("destroyed sandbox is %q, want stopped", got)
	}
	if status, b := api.do(t, http.MethodPost, "/v1/sandboxes/"+sb.ID+"/exec", map[string]any{"cmd": "true"}); status != http.StatusConflict && status != http.StatusNotFound {
		t.Errorf("exec on a destroyed sandbox: %d %s, want 409 or 404", status, b)
	}
	t.Run("audit log names the key", func(t *testing.T) { checkAuditTrail(t, user, sb.ID, key.ID) })
	survivor := api.createSandbox(t)
	api.sh(t, survivor.ID, "echo across-restarts > /tmp/survive")
	api.must(t, http.MethodPost, "/v1/sandboxes/"+survivor.ID+"/exec", map[string]any{"cmd": "/bin/sh", "args": []string{"-c",
		"i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.1; done"}, "background": true}, nil, http.StatusOK, http.StatusCreated)
	eventually(t, 10*time.Second, "the survivor's counter runs", func() (bool, string) {
		r := api.sh(t, survivor.ID, "cat /tmp/counter 2>/dev/null")
		return strings.TrimSpace(r.Stdout) != "", r.Stdout
	})
	if t.Failed() {
		return
	}

	stopDev(t, dev, dataDir, wrennDir, prefix)

	t2 := time.Now()
	dev2 := startDev(t, env, dataDir, port)
	t.Logf("wrenn dev restarted in %s", time.Since(t2).Round(time.Millisecond))
	// At once, with no retry: the banner means this run's agent is there
	// and the states are right (the previous run's "online" left in the
	// database must not count).
	if s := api.getSandbox(t, survivor.ID).Status; s != "paused" {
		t.Errorf("right after the restart's banner the sandbox running at Ctrl-C is %q, want paused", s)
	}
	t.Run("the banner's curl works at once", func(t *testing.T) { runBannerCurl(t, dev2) })
	if dev2.email != dev.email || dev2.apiKey != dev.apiKey {
		t.Errorf("second run: admin %s key %s..., first run: admin %s key %s...", dev2.email, dev2.apiKey[:10], dev.email, dev.apiKey[:10])
	}
	for name, k := range map[string]string{"dev's key": dev.apiKey, "the user's key": key.Key} {
		if status, b := anon.withKey(k).do(t, http.MethodGet, "/v1/sandboxes?limit=1", nil); status != http.StatusOK {
			t.Errorf("%s after restart: %d %s", name, status, b)
		}
	}
	var login struct {
		Token string `json:"token"`
	}
	anon.must(t, http.MethodPost, "/v1/auth/login", map[string]string{"email": email, "password": "e2e passphrase " + email}, &login, http.StatusOK)

	tr := time.Now()
	var resumed sandbox
	api.must(t, http.MethodPost, "/v1/sandboxes/"+survivor.ID+"/resume", map[string]any{}, &resumed, http.StatusOK)
	t.Logf("resume after restart took %s", time.Since(tr).Round(time.Millisecond))
	if r := api.sh(t, survivor.ID, "cat /tmp/survive"); r.Stdout != "across-restarts\n" {
		t.Errorf("file after restart and resume: %q", r.Stdout)
	}
	// The loop's echo truncates the file before writing, so one read may
	// find it empty: the first non-empty read is the reference.
	first := 0
	eventually(t, 10*time.Second, "the survivor's counter goes on after the restart", func() (bool, string) {
		now, _ := strconv.Atoi(strings.TrimSpace(api.sh(t, survivor.ID, "cat /tmp/counter").Stdout))
		if first == 0 {
			first = now
		}
		return first > 0 && now > first, fmt.Sprintf("%d then %d", first, now)
	})
	api.must(t, http.MethodDelete, "/v1/sandboxes/"+survivor.ID, nil, nil, http.StatusNoContent, http.StatusOK)

	stopDev(t, dev2, dataDir, wrennDir, prefix)
}

// checkAuditTrail reads the sandbox's audit rows by the API key as the
// user: the four actions made with the key, under its name (the reconciler
// may also have recorded what the host reported: those rows are its own),
// and /health's event backlog drains (the relay publishes them to Redis).
func checkAuditTrail(t *testing.T, user client, sandboxID, keyID string) {
	var page struct {
		AuditLogs []struct {
			Action string `json:"action"`
			Actor  struct {
				Type string `json:"type"`
				Name string `json:"name"`
			} `json:"actor"`
		} `json:"audit_logs"`
	}
	user.must(t, http.MethodGet, "/v1/audit-logs?resource_id="+sandboxID+"&actor_id="+keyID, nil, &page, http.StatusOK)
	var actions []string
	for i := len(page.AuditLogs) - 1; i >= 0; i-- {
		r := page.AuditLogs[i]
		actions = append(actions, r.Action)
		if r.Actor.Type != "api_key" || r.Actor.Name != "e2e" {
			t.Errorf("%s by %+v, want the API key e2e", r.Action, r.Actor)
		}
	}
	if want := []string{"created", "running", "paused", "resumed", "destroyed"}; !slices.Equal(actions, want) {
		t.Errorf("audit actions of %s: %v, want %v", sandboxID, actions, want)
	}
	eventually(t, 10*time.Second, "the event backlog drains", func() (bool, string) {
		var health struct {
			EventBacklog *int64 `json:"event_backlog"`
		}
		user.must(t, http.MethodGet, "/health", nil, &health, http.StatusOK)
		return health.EventBacklog != nil && *health.EventBacklog == 0, fmt.Sprint(health.EventBacklog)
	})
}

// runBannerCurl runs the commands dev's banner prints (they talk to dev's
// loopback address) and checks that they made a sandbox and ran uname in
// it; the sandbox is destroyed afterwards.
func runBannerCurl(t *testing.T, d devRun) {
	t.Helper()
	_, after, ok := strings.Cut(d.p.stdout(), "Create a sandbox and run a command:\n")
	lines := strings.SplitN(after, "\n", 3)
	if !ok || len(lines) < 3 || !strings.Contains(lines[0], "curl") || !strings.Contains(lines[1], "curl") {
		t.Fatalf("no curl commands in the banner:\n%s", d.p.stdout())
	}
	script := strings.TrimSpace(lines[0]) + "\necho \"sandbox=$id\"\n" + strings.TrimSpace(lines[1])
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "bash", "-c", script).CombinedOutput()
	id := regexp.MustCompile(`sandbox=(sb-\S+)`).FindSubmatch(out)
	if id != nil {
		t.Cleanup(func() {
			newClient(d.base).withKey(d.apiKey).do(t, http.MethodDelete, "/v1/sandboxes/"+string(id[1]), nil)
		})
	}
	if err != nil || id == nil || !strings.Contains(string(out), "Linux") || !strings.Contains(string(out), `"exit_code":0`) {
		t.Fatalf("the banner's commands: %v\n%s", err, out)
	}
}

// checkLoopbackOnly checks that every TCP listener of the dev run (the
// wrenn process with its control plane and agent, and every process in
// dirs: PostgreSQL, Redis, the VMMs) is on a loopback address, and that the
// control plane's port is among them. It reads the sockets from /proc and
// sends nothing.
func checkLoopbackOnly(t *testing.T, d devRun, cpPort int, dirs ...string) {
	t.Helper()
	pids := []int{d.p.cmd.Process.Pid}
	for _, dir := range dirs {
		for _, p := range processesUnder(dir) {
			pids = append(pids, p.pid)
		}
	}
	ls, err := testenv.TCPListeners(pids...)
	if err != nil {
		t.Fatal(err)
	}
	sawCP := false
	for _, l := range ls {
		if !l.Addr().IsLoopback() {
			t.Errorf("the dev run listens on %s, beyond loopback", l)
		}
		sawCP = sawCP || int(l.Port()) == cpPort
	}
	if !sawCP || len(ls) < 4 {
		t.Errorf("listeners %v: want the control plane on %d, the agent, PostgreSQL and Redis", ls, cpPort)
	}
}

var agentListening = regexp.MustCompile(`host agent listening.* addr=(\S+).* mtls=true`)

// checkAgentMTLS: dev's agent serves mutual TLS only: plain HTTP and TLS
// without a client certificate are both refused.
func checkAgentMTLS(t *testing.T, d devRun) {
	t.Helper()
	m := agentListening.FindStringSubmatch(d.p.logs())
	if m == nil {
		t.Fatalf("no log of the agent listening with mTLS:\n%s", d.p.logs())
	}
	addr := m[1]
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get("http://" + addr + "/health")
	if err == nil {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "HTTPS") {
			t.Fatalf("plain HTTP to the agent answered %d %q", resp.StatusCode, body)
		}
	}
	insecure := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} // like curl -k: no client certificate
	if resp, err := insecure.Get("https://" + addr + "/health"); err == nil {
		resp.Body.Close()
		t.Fatalf("TLS without a client certificate answered %d", resp.StatusCode)
	} else if !strings.Contains(err.Error(), "certificate required") {
		t.Fatalf("TLS without a client certificate: %v, want certificate required", err)
	}
}
