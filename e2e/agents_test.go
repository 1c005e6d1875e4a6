package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/agent/registration"
	"github.com/wrenn-dev/wrenn/internal/testenv"
)

// e2eAgent is one `wrenn agent` process with its own WRENN_DIR, port,
// network prefix and range.
type e2eAgent struct {
	name     string
	dir      string
	addr     string
	prefix   string
	netRange string
	hostID   string
	env      []string
	p        *proc
}

func (a *e2eAgent) start(t testing.TB, args ...string) {
	t.Helper()
	a.p = startProc(t, "agent-"+a.name, a.env, wrennBin(t), append([]string{"agent"}, args...)...)
	p := a.p
	t.Cleanup(func() {
		// Production agents leave VMs running on exit; scrub removes them.
		p.stop(syscall.SIGTERM, 30*time.Second)
		if t.Failed() {
			t.Logf("logs of agent %s:\n%s", a.name, p.logs())
		}
	})
}

// register creates the agent's host through the API and starts the agent
// with its registration token, pointed at the control planes cpURLs (in
// order), with env added to its environment.
func (a *e2eAgent) register(t testing.TB, admin client, cpURLs []string, env ...string) {
	t.Helper()
	a.addr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	var created struct {
		Host  hostView `json:"host"`
		Token string   `json:"registration_token"`
	}
	admin.must(t, http.MethodPost, "/v1/hosts", map[string]any{"name": "e2e-" + a.name, "shared": true}, &created, http.StatusCreated)
	if created.Host.Status != "pending" || !strings.HasPrefix(created.Token, "wrnhr_") {
		t.Fatalf("new host %+v token %.8q", created.Host, created.Token)
	}
	a.hostID = created.Host.ID
	a.env = childEnv(append([]string{"WRENN_DIR=" + a.dir, "WRENN_AGENT_LISTEN_ADDR=" + a.addr, "WRENN_NET_PREFIX=" + a.prefix,
		"WRENN_NET_RANGE=" + a.netRange, "WRENN_HEARTBEAT_INTERVAL=300ms", "WRENN_VMM=qemu", "WRENN_ACCEL=tcg"}, env...)...)
	args := []string{"--register", created.Token, "--address", a.addr}
	for _, u := range cpURLs {
		args = append(args, "--cp-url", u)
	}
	a.start(t, args...)
}

// migratedDB is a fresh database, migrated by `wrenn migrate up`, and the
// Redis URL.
func migratedDB(t testing.TB) (dbURL, redisURL string) {
	t.Helper()
	dbURL, redisURL = testenv.PostgresURL(t), testenv.RedisURL(t)
	migrate := exec.Command(wrennBin(t), "migrate", "up")
	migrate.Env = childEnv("DATABASE_URL=" + dbURL)
	if out, err := migrate.CombinedOutput(); err != nil {
		t.Fatalf("wrenn migrate up: %v\n%s", err, out)
	}
	return dbURL, redisURL
}

// startServer runs `wrenn server` on a free loopback port with env added
// and waits until it answers /health. At the end of the test it must stop
// cleanly on SIGTERM, unless the test killed it.
func startServer(t *testing.T, name, dbURL, redisURL, jwtSecret string, env ...string) (*proc, string) {
	t.Helper()
	port := freePort(t)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	cp := startProc(t, name, childEnv(append([]string{"DATABASE_URL=" + dbURL, "REDIS_URL=" + redisURL,
		"WRENN_JWT_SECRET=" + jwtSecret, fmt.Sprintf("WRENN_CP_LISTEN_ADDR=127.0.0.1:%d", port)}, env...)...), wrennBin(t), "server")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("logs of %s:\n%s", name, cp.logs())
		}
		if cp.killed {
			return
		}
		if code, ok := cp.stop(syscall.SIGTERM, 30*time.Second); !ok || code != 0 {
			t.Errorf("%s exit: code %d, in time %v", name, code, ok)
		}
	})
	eventually(t, time.Minute, name+" answers /health", func() (bool, string) {
		if !cp.running() {
			t.Fatalf("%s exited\n%s", name, cp.logs())
		}
		resp, err := http.Get(base + "/health")
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, resp.Status
	})
	return cp, base
}

// qemuPIDs lists the VMM processes of this agent's sandboxes.
func (a *e2eAgent) qemuPIDs() []int {
	var pids []int
	for _, p := range processesUnder(a.dir) {
		if strings.Contains(p.comm, "qemu") {
			pids = append(pids, p.pid)
		}
	}
	return pids
}

type hostView struct {
	ID      string `json:"id"`
	Status  string `json:"status"`
	Address string `json:"address"`
	Limits  struct {
		MaxVCPUs    int `json:"max_vcpus"`
		MaxMemoryMB int `json:"max_memory_mb"`
	} `json:"limits"`
	Capacity struct {
		VCPUs    int `json:"vcpus"`
		MemoryMB int `json:"memory_mb"`
	} `json:"capacity"`
}

// TestTwoAgents runs one control plane (`wrenn server`) and two real agents
// registered through the public flow: round-robin placement, an agent killed
// with -9 (host unreachable, sandboxes missing, then back and reconciled
// with its VMs alive), refresh rotation with reuse detection, and host
// deletion without and with force.
func TestTwoAgents(t *testing.T) {
	src := requirePlatform(t)
	dbURL, redisURL := migratedDB(t)

	agents := []*e2eAgent{
		{name: "a", prefix: fmt.Sprintf("wea%d-", testID), netRange: fmt.Sprintf("10.235.%d.0/24", testID)},
		{name: "b", prefix: fmt.Sprintf("web%d-", testID), netRange: fmt.Sprintf("10.236.%d.0/24", testID)},
	}
	for _, a := range agents {
		a.dir = agentDir(t, src)
		t.Cleanup(func() { scrub(t, a.dir, a.prefix, a.netRange) })
	}

	_, base := startServer(t, "wrenn-server", dbURL, redisURL, randomHex(t, 32),
		"WRENN_RECONCILE_INTERVAL=200ms", "WRENN_HOST_UNREACHABLE_AFTER=2s", fmt.Sprintf("WRENN_MAX_UPLOAD_BYTES=%d", e2eMaxUpload))
	anon := newClient(base)

	// The first user of a fresh install is the platform admin.
	admin := anon.withSession(anon.signup(t, "e2e-admin-"+randomHex(t, 4)+"@example.com"))
	hostStatus := func(id string) (int, hostView) {
		status, b := admin.do(t, http.MethodGet, "/v1/hosts/"+id, nil)
		var h hostView
		if status == http.StatusOK {
			if err := json.Unmarshal(b, &h); err != nil {
				t.Fatal(err)
			}
		}
		return status, h
	}

	for _, a := range agents {
		a.register(t, admin, []string{base})
	}
	// Sandboxes left at the end are destroyed while agents and control
	// plane still run (cleanups run last-registered first).
	t.Cleanup(func() {
		status, b := admin.do(t, http.MethodGet, "/v1/sandboxes?status=running,paused,missing,pending", nil)
		var list struct {
			Sandboxes []sandbox `json:"sandboxes"`
		}
		if status != http.StatusOK || json.Unmarshal(b, &list) != nil {
			t.Logf("cleanup: list sandboxes: %d %s", status, b)
			return
		}
		for _, sb := range list.Sandboxes {
			admin.do(t, http.MethodDelete, "/v1/sandboxes/"+sb.ID, nil)
		}
	})
	for _, a := range agents {
		eventually(t, time.Minute, "host "+a.name+" online", func() (bool, string) {
			if !a.p.running() {
				t.Fatalf("agent %s exited\n%s", a.name, a.p.logs())
			}
			_, h := hostStatus(a.hostID)
			// The agent binds its port before it registers: online means
			// a create is served.
			return h.Status == "online" && h.Address == a.addr, fmt.Sprintf("%+v", h)
		})
	}

	// The agents report their own validation limits; a size above them is
	// refused by the control plane with 400 and leaves no sandbox (the
	// agent used to refuse it, leaving an error row).
	for _, a := range agents {
		_, h := hostStatus(a.hostID)
		if h.Limits.MaxVCPUs != 4 || h.Limits.MaxMemoryMB != 4096 || h.Capacity.VCPUs < 1 || h.Capacity.MemoryMB < 1 {
			t.Fatalf("host %s reports %+v", a.name, h)
		}
	}
	for _, tc := range []struct {
		body  map[string]any
		field string
	}{{map[string]any{"vcpus": 8}, "vcpus"}, {map[string]any{"memory_mb": 8192}, "memory_mb"}} {
		status, b := admin.do(t, http.MethodPost, "/v1/sandboxes", tc.body)
		var e struct {
			Error struct{ Code, Field, Message string } `json:"error"`
		}
		_ = json.Unmarshal(b, &e)
		if status != http.StatusBadRequest || e.Error.Field != tc.field || !strings.Contains(e.Error.Message, "at most") {
			t.Fatalf("create %v = %d %s; want 400 on %s with the host limit", tc.body, status, b, tc.field)
		}
	}
	if status, b := admin.do(t, http.MethodGet, "/v1/sandboxes", nil); status != http.StatusOK || strings.Contains(string(b), `"id"`) {
		t.Fatalf("sandboxes after refused creates: %d %s; want none", status, b)
	}

	// Round-robin: four sandboxes, two on each host.
	placed := map[string][]string{} // host ID -> sandbox IDs
	for i := 0; i < 4; i++ {
		t0 := time.Now()
		sb := admin.createSandbox(t)
		if sb.HostID == nil {
			t.Fatalf("sandbox %s has no host", sb.ID)
		}
		t.Logf("sandbox %s on %s in %s", sb.ID, *sb.HostID, time.Since(t0).Round(time.Millisecond))
		placed[*sb.HostID] = append(placed[*sb.HostID], sb.ID)
		admin.sh(t, sb.ID, "echo "+sb.ID+" > /tmp/who")
	}
	for _, a := range agents {
		if n := len(placed[a.hostID]); n != 2 {
			t.Fatalf("placement %v: host %s (%s) got %d sandboxes, want 2", placed, a.name, a.hostID, n)
		}
	}
	a, b := agents[0], agents[1]
	top := t // cleanups of processes started in subtests belong to the whole test
	sandboxesAre := func(ids []string, want string) (bool, string) {
		var got []string
		for _, id := range ids {
			got = append(got, admin.getSandbox(t, id).Status)
		}
		for _, s := range got {
			if s != want {
				return false, fmt.Sprint(got)
			}
		}
		return true, fmt.Sprint(got)
	}

	t.Run("uploads", func(t *testing.T) { testUploads(t, admin, placed[a.hostID][0]) })

	t.Run("agent killed and back", func(t *testing.T) {
		vms := a.qemuPIDs()
		if len(vms) != 2 {
			t.Fatalf("agent a has %d qemu processes, want 2", len(vms))
		}
		a.p.signal(syscall.SIGKILL)
		if _, ok := a.p.wait(10 * time.Second); !ok {
			t.Fatal("agent a survived SIGKILL")
		}
		t0 := time.Now()
		eventually(t, 20*time.Second, "host a unreachable and its sandboxes missing", func() (bool, string) {
			_, h := hostStatus(a.hostID)
			ok, s := sandboxesAre(placed[a.hostID], "missing")
			return h.Status == "unreachable" && ok, h.Status + " " + s
		})
		t.Logf("host unreachable and sandboxes missing %s after the kill", time.Since(t0).Round(time.Millisecond))
		if _, h := hostStatus(b.hostID); h.Status != "online" {
			t.Errorf("host b is %q while a is down", h.Status)
		}
		if ok, s := sandboxesAre(placed[b.hostID], "running"); !ok {
			t.Errorf("host b's sandboxes are %s while a is down", s)
		}
		for _, pid := range vms {
			if err := syscall.Kill(pid, 0); err != nil {
				t.Errorf("qemu %d died with its agent: %v", pid, err)
			}
		}

		// Same WRENN_DIR and port, no token: the saved credentials are used.
		a.start(top)
		t1 := time.Now()
		eventually(t, time.Minute, "host a online and its sandboxes running again", func() (bool, string) {
			if !a.p.running() {
				t.Fatalf("restarted agent a exited\n%s", a.p.logs())
			}
			_, h := hostStatus(a.hostID)
			ok, s := sandboxesAre(placed[a.hostID], "running")
			return h.Status == "online" && ok, h.Status + " " + s
		})
		t.Logf("host online and sandboxes running %s after the restart", time.Since(t1).Round(time.Millisecond))
		for _, id := range placed[a.hostID] {
			if r := admin.sh(t, id, "cat /tmp/who"); r.Stdout != id+"\n" {
				t.Errorf("sandbox %s after the agent restart: /tmp/who = %q", id, r.Stdout)
			}
		}
		if got := a.qemuPIDs(); !slices.Equal(sortedInts(got), sortedInts(vms)) {
			t.Errorf("qemu processes %v after the restart, want the same as before %v", got, vms)
		}
	})
	if t.Failed() {
		return
	}

	t.Run("refresh rotation and reuse detection", func(t *testing.T) {
		creds, err := registration.Load(b.dir)
		if err != nil {
			t.Fatal(err)
		}
		refresh := func(tok string) (int, registration.Credentials) {
			status, body := anon.do(t, http.MethodPost, "/v1/hosts/auth/refresh", map[string]string{"refresh_token": tok})
			var c registration.Credentials
			if status == http.StatusOK {
				if err := json.Unmarshal(body, &c); err != nil {
					t.Fatal(err)
				}
			}
			return status, c
		}
		status, next := refresh(creds.RefreshToken)
		if status != http.StatusOK || next.RefreshToken == "" || next.RefreshToken == creds.RefreshToken || next.Token == "" {
			t.Fatalf("rotation: %d, new refresh token changed: %v", status, next.RefreshToken != creds.RefreshToken)
		}
		for _, tc := range []struct {
			name, token string
		}{
			{"the rotated-out token again (reuse)", creds.RefreshToken},
			{"the newest token of the revoked family", next.RefreshToken},
			{"garbage", "wrnrt_" + randomHex(t, 16)},
		} {
			if status, _ := refresh(tc.token); status != http.StatusUnauthorized {
				t.Errorf("%s: %d, want 401", tc.name, status)
			}
		}
	})

	t.Run("delete host", func(t *testing.T) {
		want := sortedStrings(placed[a.hostID])
		status, body := admin.do(t, http.MethodDelete, "/v1/hosts/"+a.hostID, nil)
		var conflict struct {
			Error struct {
				Code string `json:"code"`
			} `json:"error"`
			Sandboxes []struct {
				ID string `json:"id"`
			} `json:"sandboxes"`
		}
		if err := json.Unmarshal(body, &conflict); status != http.StatusConflict || err != nil {
			t.Fatalf("delete without force: %d %s, want 409", status, body)
		}
		var listed []string
		for _, s := range conflict.Sandboxes {
			listed = append(listed, s.ID)
		}
		if !slices.Equal(sortedStrings(listed), want) {
			t.Errorf("409 lists %v, want %v", listed, want)
		}
		if _, h := hostStatus(a.hostID); h.Status != "online" {
			t.Errorf("after the refused delete host a is %q", h.Status)
		}
		if ok, s := sandboxesAre(placed[a.hostID], "running"); !ok {
			t.Errorf("after the refused delete the sandboxes are %s", s)
		}

		var res struct {
			Destroyed []struct {
				ID string `json:"id"`
			} `json:"destroyed_sandboxes"`
		}
		admin.must(t, http.MethodDelete, "/v1/hosts/"+a.hostID+"?force=true", nil, &res, http.StatusOK, http.StatusNoContent)
		var destroyed []string
		for _, s := range res.Destroyed {
			destroyed = append(destroyed, s.ID)
		}
		if !slices.Equal(sortedStrings(destroyed), want) {
			t.Errorf("force delete destroyed %v, want %v", destroyed, want)
		}
		if ok, s := sandboxesAre(placed[a.hostID], "stopped"); !ok {
			t.Errorf("after the forced delete the sandboxes are %s", s)
		}
		if status, _ := hostStatus(a.hostID); status != http.StatusNotFound {
			t.Errorf("deleted host answers %d, want 404", status)
		}
		eventually(t, 20*time.Second, "agent a's VMs gone", func() (bool, string) {
			pids := a.qemuPIDs()
			return len(pids) == 0, fmt.Sprint(pids)
		})
		// Its next heartbeat gets 404: the agent forgets its credentials and stops.
		code, ok := a.p.wait(20 * time.Second)
		if !ok {
			t.Errorf("agent a still runs 20s after its host was deleted")
		} else if code != 0 {
			t.Errorf("agent a exited %d after its host was deleted, want 0", code)
		}
		if _, err := registration.Load(a.dir); err == nil {
			t.Errorf("agent a kept its credentials after its host was deleted")
		}
		// The other host is untouched.
		if ok, s := sandboxesAre(placed[b.hostID], "running"); !ok {
			t.Errorf("host b's sandboxes are %s", s)
		}
		id := placed[b.hostID][0]
		if r := admin.sh(t, id, "cat /tmp/who"); r.Stdout != id+"\n" {
			t.Errorf("sandbox %s on host b: %q", id, r.Stdout)
		}
	})
}

func sortedStrings(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

func sortedInts(s []int) []int {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}
