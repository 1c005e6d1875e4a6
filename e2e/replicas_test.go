package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Pace of this test's control planes: short, so the whole test stays well
// under two minutes with TCG boots.
const (
	replicaInterval = 500 * time.Millisecond
	replicaLease    = 2 * time.Second
)

type healthView struct {
	Replica string `json:"replica"`
	Leases  map[string]struct {
		Replica string `json:"replica"`
		Held    bool   `json:"held"`
	} `json:"leases"`
}

func health(t *testing.T, base string) (healthView, error) {
	t.Helper()
	resp, err := http.Get(base + "/health")
	if err != nil {
		return healthView{}, err
	}
	defer resp.Body.Close()
	var h healthView
	return h, json.NewDecoder(resp.Body).Decode(&h)
}

// TestReplicaKilled runs two `wrenn server` replicas on one PostgreSQL and
// Redis and one real agent that heartbeats replica A first. A, which leads
// the reconciler, is killed (-9) while it runs five creates, one of them
// with an Idempotency-Key. Then: the reconciler lease moves to B within one
// interval; the host stays online and nothing is paused; every row is
// running or error within a lease and an interval (plus what the VM boots
// still take); no VM is left that no row claims; the retried create yields
// the one sandbox A started; and the team's quota is whole again.
func TestReplicaKilled(t *testing.T) {
	src := requirePlatform(t)
	dbURL, redisURL := migratedDB(t)
	secret := randomHex(t, 32)
	env := []string{"WRENN_RECONCILE_INTERVAL=" + replicaInterval.String(), "WRENN_OPERATION_LEASE=" + replicaLease.String(),
		"WRENN_HOST_UNREACHABLE_AFTER=3s", "WRENN_TEAM_MAX_RUNNING_SANDBOXES=5"}
	// A logs its requests, to show the agent heartbeats it.
	cpA, baseA := startServer(t, "wrenn-server-a", dbURL, redisURL, secret, append(env, "WRENN_LOG_LEVEL=debug")...)
	// A leads the reconciler before B starts.
	var replicaA string
	eventually(t, 10*time.Second, "replica A leads the reconciler", func() (bool, string) {
		h, err := health(t, baseA)
		replicaA = h.Replica
		return err == nil && h.Leases["reconciler"].Replica == h.Replica && h.Leases["reconciler"].Held, fmt.Sprintf("%+v %v", h, err)
	})
	_, baseB := startServer(t, "wrenn-server-b", dbURL, redisURL, secret, env...)

	anon := newClient(baseA)
	admin := anon.withSession(anon.signup(t, "e2e-replicas-"+randomHex(t, 4)+"@example.com"))
	ag := &e2eAgent{name: "r", prefix: fmt.Sprintf("wer%d-", testID), netRange: fmt.Sprintf("10.234.%d.0/24", testID)}
	ag.dir = agentDir(t, src)
	t.Cleanup(func() { scrub(t, ag.dir, ag.prefix, ag.netRange) })
	// The agent heartbeats A, the first URL; it pauses everything if no
	// control plane answers for 4 s, so a failed failover would show.
	ag.register(t, admin, []string{baseA, baseB}, "WRENN_CP_UNREACHABLE_PAUSE_AFTER=4s")
	viaB := admin.at(baseB)
	t.Cleanup(func() {
		var list struct{ Sandboxes []sandbox }
		viaB.must(t, http.MethodGet, "/v1/sandboxes?status=running,paused,missing,pending,error", nil, &list, http.StatusOK)
		for _, sb := range list.Sandboxes {
			viaB.do(t, http.MethodDelete, "/v1/sandboxes/"+sb.ID, nil)
		}
	})
	hostOnline := func() (bool, string) {
		var h hostView
		viaB.must(t, http.MethodGet, "/v1/hosts/"+ag.hostID, nil, &h, http.StatusOK)
		return h.Status == "online", h.Status
	}
	eventually(t, time.Minute, "host online", hostOnline)

	// Five creates in flight on A; the third carries an Idempotency-Key.
	const creates = 5
	const key, keyBody = "e2e-retry-1", `{"metadata":{"idem":"retry-1"}}`
	var wg sync.WaitGroup
	for i := range creates {
		wg.Go(func() {
			body := fmt.Sprintf(`{"metadata":{"n":"%d"}}`, i)
			req, _ := http.NewRequest(http.MethodPost, baseA+"/v1/sandboxes", strings.NewReader(body))
			if i == 2 {
				req, _ = http.NewRequest(http.MethodPost, baseA+"/v1/sandboxes", strings.NewReader(keyBody))
				req.Header.Set("Idempotency-Key", key)
			}
			req.Header.Set("Authorization", admin.hdr.Get("Authorization"))
			req.Header.Set("Content-Type", "application/json")
			if resp, err := http.DefaultClient.Do(req); err == nil { // cut off by the kill, or done before it
				resp.Body.Close()
			}
		})
	}
	listAll := func() []sandbox {
		var list struct{ Sandboxes []sandbox }
		viaB.must(t, http.MethodGet, "/v1/sandboxes", nil, &list, http.StatusOK)
		return list.Sandboxes
	}
	eventually(t, 20*time.Second, "five rows recorded", func() (bool, string) {
		l := listAll()
		return len(l) == creates, fmt.Sprint(l)
	})
	if out, _ := os.ReadFile(cpA.errPath); !bytes.Contains(out, []byte("/v1/hosts/"+ag.hostID+"/heartbeat")) {
		if out, _ := os.ReadFile(cpA.outPath); !bytes.Contains(out, []byte("/v1/hosts/"+ag.hostID+"/heartbeat")) {
			t.Fatalf("the agent does not heartbeat replica A\n%s", cpA.logs())
		}
	}
	cpA.signal(syscall.SIGKILL)
	killed := time.Now()
	if _, ok := cpA.wait(10 * time.Second); !ok {
		t.Fatal("replica A survived SIGKILL")
	}
	wg.Wait()
	t.Logf("replica A killed with rows %v", listAll())

	// The reconciler lease moves to B within one interval (plus the
	// polling's and a loaded machine's slack).
	var replicaB string
	eventually(t, replicaInterval+500*time.Millisecond, "replica B leads the reconciler", func() (bool, string) {
		h, err := health(t, baseB)
		replicaB = h.Replica
		l := h.Leases["reconciler"]
		return err == nil && l.Held && l.Replica == h.Replica && h.Replica != replicaA, fmt.Sprintf("%+v %v", h, err)
	})
	t.Logf("reconciler lease on B %s after the kill", time.Since(killed).Round(time.Millisecond))

	// The retried create (against B, as after a failover): 409 while A's
	// lease lasts, then the one sandbox A started.
	retry := viaB.withHeader("Idempotency-Key", key)
	var got sandbox
	eventually(t, replicaLease+time.Minute, "the retried create answers", func() (bool, string) {
		status, b := retry.raw(t, http.MethodPost, "/v1/sandboxes", "application/json", bytes.NewReader([]byte(keyBody)))
		if status == http.StatusConflict && strings.Contains(string(b), "idempotency_key_in_progress") {
			return false, string(b)
		}
		if status != http.StatusCreated || json.Unmarshal(b, &got) != nil {
			t.Fatalf("retried create = %d %s", status, b)
		}
		return true, ""
	})
	var withKey struct{ Sandboxes []sandbox }
	viaB.must(t, http.MethodGet, "/v1/sandboxes?metadata.idem=retry-1", nil, &withKey, http.StatusOK)
	if len(withKey.Sandboxes) != 1 || withKey.Sandboxes[0].ID != got.ID {
		t.Fatalf("sandboxes of the retried create: %+v, answer %+v; want one, the same", withKey.Sandboxes, got)
	}

	// Every row settles; meanwhile the host stays online and nothing pauses.
	var settled []sandbox
	eventually(t, replicaLease+replicaInterval+45*time.Second, "every row running or error", func() (bool, string) {
		if ok, st := hostOnline(); !ok {
			t.Fatalf("host is %s after replica A died", st)
		}
		settled = listAll()
		for _, sb := range settled {
			if sb.Status != "running" && sb.Status != "error" {
				return false, fmt.Sprint(settled)
			}
		}
		return true, ""
	})
	t.Logf("rows settled %s after the kill: %v", time.Since(killed).Round(time.Millisecond), settled)
	// Past the agent's pause threshold: still online, nothing paused.
	time.Sleep(time.Until(killed.Add(5 * time.Second)))
	running := 0
	for _, sb := range listAll() {
		if sb.Status == "paused" {
			t.Fatalf("sandbox %s paused after replica A died", sb.ID)
		}
		if sb.Status == "running" {
			running++
		}
	}
	if ok, st := hostOnline(); !ok {
		t.Fatalf("host is %s after replica A died", st)
	}
	if strings.Contains(ag.p.logs(), "pausing all sandboxes") {
		t.Fatalf("the agent paused its sandboxes:\n%s", ag.p.logs())
	}
	// No VM that no row claims: one qemu per running row, once the
	// reconciler destroyed the VMs of rows settled as error.
	eventually(t, 10*replicaInterval, "one VM per running row", func() (bool, string) {
		n := len(ag.qemuPIDs())
		return n == running, fmt.Sprintf("%d VMs, %d running rows", n, running)
	})

	// The quota is right: settled rows count only while they run, so with
	// the running ones destroyed the team (limit 5, five rows) may create.
	for _, sb := range listAll() {
		if sb.Status == "running" {
			viaB.must(t, http.MethodDelete, "/v1/sandboxes/"+sb.ID, nil, nil, http.StatusNoContent)
		}
	}
	var fresh sandbox
	viaB.must(t, http.MethodPost, "/v1/sandboxes", map[string]any{}, &fresh, http.StatusCreated)
	if fresh.Status != "running" {
		t.Fatalf("create after the settle: %+v", fresh)
	}
	t.Logf("replica B (%s) created %s after A (%s) died", replicaB, fresh.ID, replicaA)
}
