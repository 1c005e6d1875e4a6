package api

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/controlplane/ids"
	"github.com/wrenn-dev/wrenn/internal/db"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// keyed sends a POST with an Idempotency-Key (and extra headers).
func (e *env) keyed(path, key, body string, c cred, hdr ...string) (*http.Response, []byte) {
	e.t.Helper()
	req := e.request("POST", path, body, c)
	req.Header.Set("Idempotency-Key", key)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	return e.sendResp(req)
}

func (e *env) teamSandboxes(teamID string) int {
	e.t.Helper()
	var n int
	if err := e.pool.QueryRow(context.Background(), "SELECT count(*) FROM sandboxes WHERE team_id = $1", teamID).Scan(&n); err != nil {
		e.t.Fatal(err)
	}
	return n
}

// The rules of Idempotency-Key, one request sequence each, on the routes
// that take it.
func TestIdempotencyKey(t *testing.T) {
	e := newEnv(t, func(o *envOpts) { o.limits.MaxRunningPerTeam = 20 })
	owner := e.signup("idem@example.com")
	c := owner.cred()
	first := e.createSandbox(c, nil)
	paused := e.createSandbox(c, nil)
	team := first.TeamID
	body := `{"metadata":{"run":"1"}}`

	type step struct {
		path, key, body string
		status          int
		code            string // error code, when an error is wanted
		replayed        bool
	}
	cases := []struct {
		name  string
		steps []step
		// made is how many sandboxes the sequence leaves more.
		made int
	}{
		{"same key and body: the first answer again", []step{
			{"/v1/sandboxes", "k-same", body, 201, "", false},
			{"/v1/sandboxes", "k-same", body, 201, "", true},
			{"/v1/capsules", "k-same", body, 201, "", true},
		}, 1},
		{"same key, another body: 422", []step{
			{"/v1/sandboxes", "k-other", body, 201, "", false},
			{"/v1/sandboxes", "k-other", `{"metadata":{"run":"2"}}`, 422, "idempotency_key_reused", false},
		}, 1},
		{"a key of 255 bytes is taken, 256 is not", []step{
			{"/v1/sandboxes", strings.Repeat("k", 255), body, 201, "", false},
			{"/v1/sandboxes", strings.Repeat("k", 256), body, 400, "invalid_request", false},
		}, 1},
		{"not printable ASCII: 400", []step{
			{"/v1/sandboxes", "k\u00e9", body, 400, "invalid_request", false},
		}, 0},
		{"errors below 500 are kept too", []step{
			{"/v1/sandboxes", "k-bad", `{"vcpus":0}`, 400, "invalid_request", false},
			{"/v1/sandboxes", "k-bad", `{"vcpus":0}`, 400, "invalid_request", true},
		}, 0},
		{"pause: replayed per sandbox, the key free for another", []step{
			{sbPath(first.ID, "/pause"), "k-pause", "", 200, "", false},
			{sbPath(first.ID, "/pause"), "k-pause", "", 200, "", true},
			{sbPath(paused.ID, "/pause"), "k-pause", "", 200, "", false},
			{sbPath(first.ID, "/resume"), "k-pause", "", 200, "", false},
		}, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := e.teamSandboxes(team)
			var firstBody []byte
			for i, s := range tc.steps {
				resp, b := e.keyed(s.path, s.key, s.body, c)
				if resp.StatusCode != s.status {
					t.Fatalf("step %d: %s = %d, want %d: %s", i, s.path, resp.StatusCode, s.status, b)
				}
				if got := resp.Header.Get("Idempotent-Replayed") == "true"; got != s.replayed {
					t.Fatalf("step %d: replayed = %v, want %v", i, got, s.replayed)
				}
				if s.code != "" {
					var ae apiErr
					if err := json.Unmarshal(b, &ae); err != nil || ae.Error.Code != s.code {
						t.Fatalf("step %d: %s, want code %s", i, b, s.code)
					}
				}
				if i == 0 {
					firstBody = b
				} else if s.replayed && string(b) != string(firstBody) {
					t.Fatalf("step %d replayed %s, first answer was %s", i, b, firstBody)
				}
			}
			if got := e.teamSandboxes(team) - before; got != tc.made {
				t.Fatalf("%d sandboxes made, want %d", got, tc.made)
			}
		})
	}

	t.Run("after 24 h the key is free again", func(t *testing.T) {
		e.keyed("/v1/sandboxes", "k-old", body, c)
		if _, err := e.pool.Exec(context.Background(), "UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = 'k-old'"); err != nil {
			t.Fatal(err)
		}
		resp, b := e.keyed("/v1/sandboxes", "k-old", `{}`, c)
		if resp.StatusCode != 201 || resp.Header.Get("Idempotent-Replayed") != "" {
			t.Fatalf("reuse after the window = %d: %s", resp.StatusCode, b)
		}
	})
}

// Concurrent requests with one key make one sandbox: the others get its
// answer or 409 idempotency_key_in_progress.
func TestIdempotencyKeyConcurrent(t *testing.T) {
	e := newEnv(t)
	c := e.signup("conc@example.com").cred()
	const n = 8
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		codes = map[int]int{}
		made  = map[string]bool{}
	)
	for range n {
		wg.Go(func() {
			resp, b := e.keyed("/v1/sandboxes", "k-conc", `{}`, c)
			mu.Lock()
			defer mu.Unlock()
			codes[resp.StatusCode]++
			if resp.StatusCode == 201 {
				var sb sandboxResp
				_ = json.Unmarshal(b, &sb)
				made[sb.ID] = true
			} else if resp.StatusCode != 409 || !strings.Contains(string(b), "idempotency_key_in_progress") || resp.Header.Get("Retry-After") == "" {
				t.Errorf("answer %d: %s", resp.StatusCode, b)
			}
		})
	}
	wg.Wait()
	if len(made) != 1 || codes[201]+codes[409] != n {
		t.Fatalf("answers %v, sandboxes %v: want one sandbox", codes, made)
	}
	var total int
	if err := e.pool.QueryRow(context.Background(), "SELECT count(*) FROM sandboxes").Scan(&total); err != nil || total != 1 {
		t.Fatalf("%d sandbox rows (%v), want 1", total, err)
	}
}

// A create whose replica died after recording its key, its pending row and
// the VM: a retry with the same key, once the lease expired, takes the
// request over, waits for the reconciler to settle the row from the
// agent's truth and answers with that sandbox; no second one is made.
func TestIdempotencyKeyTakenOverAfterReplicaDied(t *testing.T) {
	e := newEnv(t)
	c := e.signup("dead@example.com").cred()
	team := e.createSandbox(c, nil).TeamID
	ctx := context.Background()
	id := ids.New(ids.Sandbox)
	host := "host-test"
	body := `{"metadata":{"job":"7"}}`
	sum := sha256.Sum256([]byte(body))
	// What the dead replica left: key in progress, row pending, both leases expired.
	if _, err := e.q.BeginIdempotencyKey(ctx, db.BeginIdempotencyKeyParams{TeamID: team, Route: "sandboxes.create", Key: "k-dead",
		RequestHash: hex.EncodeToString(sum[:]), ResourceID: id, Owner: "cp-dead", Attempt: ids.New(ids.Operation), TtlSeconds: 0, WindowSeconds: 86400}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.q.InsertSandbox(ctx, db.InsertSandboxParams{ID: id, TeamID: team, HostID: &host, Template: "minimal", Vcpus: 1, MemoryMb: 256,
		DiskMb: 1024, Metadata: json.RawMessage(`{"job":"7"}`), OpID: ids.New(ids.Operation), OpOwner: "cp-dead", OpTtlSeconds: 0}); err != nil {
		t.Fatal(err)
	}
	e.agent.Put(id, pb.SandboxState_SANDBOX_STATE_RUNNING)
	before := e.teamSandboxes(team)

	// The one loop runs meanwhile, as in another replica.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
				e.rec.Pass(ctx)
			}
		}
	})
	resp, b := e.keyed("/v1/sandboxes", "k-dead", body, c)
	close(stop)
	wg.Wait()
	var sb sandboxResp
	if err := json.Unmarshal(b, &sb); err != nil || resp.StatusCode != 201 || sb.ID != id || sb.Status != "running" {
		t.Fatalf("retry = %d %s, want 201 with %s running", resp.StatusCode, b, id)
	}
	if got := e.teamSandboxes(team); got != before {
		t.Fatalf("%d sandboxes after the retry, want %d", got, before)
	}
	// The answer is now kept.
	resp, b2 := e.keyed("/v1/sandboxes", "k-dead", body, c)
	if resp.StatusCode != 201 || resp.Header.Get("Idempotent-Replayed") != "true" || string(b2) != string(b) {
		t.Fatalf("second retry = %d %s", resp.StatusCode, b2)
	}
}

// Prefer: respond-async answers 202 with the pending sandbox at once; the
// boot finishes in the background.
func TestCreateRespondAsync(t *testing.T) {
	e := newEnv(t)
	c := e.signup("async@example.com").cred()
	resp, b := e.keyed("/v1/sandboxes", "k-async", `{}`, c, "Prefer", "respond-async")
	var sb sandboxResp
	if err := json.Unmarshal(b, &sb); err != nil || resp.StatusCode != 202 || sb.Status != "pending" || resp.Header.Get("Preference-Applied") != "respond-async" {
		t.Fatalf("async create = %d %s", resp.StatusCode, b)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		var now sandboxResp
		e.want("GET", sbPath(sb.ID), nil, c, 200, &now)
		if now.Status == "running" {
			break
		}
		if now.Status != "pending" || time.Now().After(deadline) {
			t.Fatalf("after the async create the sandbox is %s", now.Status)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := e.svc.WaitBackground(context.Background()); err != nil {
		t.Fatal(err)
	}
	var op *string
	if err := e.pool.QueryRow(context.Background(), "SELECT op FROM sandboxes WHERE id = $1", sb.ID).Scan(&op); err != nil || op != nil {
		t.Fatalf("op after the boot = %v (%v), want none", op, err)
	}
}

// A 5xx is not kept: once the host is back, the same key creates.
func TestIdempotencyKeyServerErrorNotKept(t *testing.T) {
	e := newEnv(t)
	c := e.signup("down@example.com").cred()
	e.agent.SetReachable(false)
	resp, b := e.keyed("/v1/sandboxes", "k-down", `{}`, c)
	if resp.StatusCode < 500 {
		t.Fatalf("create with the agent down = %d %s", resp.StatusCode, b)
	}
	e.agent.SetReachable(true)
	resp, b = e.keyed("/v1/sandboxes", "k-down", `{}`, c)
	if resp.StatusCode != 201 || resp.Header.Get("Idempotent-Replayed") != "" {
		t.Fatalf("retry once the agent is back = %d %s", resp.StatusCode, b)
	}
}

// A pause whose replica died after the agent paused the sandbox: the
// retry that takes it over answers the paused sandbox, as the first call
// would have; a new key on the same paused sandbox is a 409.
func TestIdempotencyKeyPauseTakenOver(t *testing.T) {
	e := newEnv(t)
	c := e.signup("pdead@example.com").cred()
	sb := e.createSandbox(c, nil)
	e.want("POST", sbPath(sb.ID, "/pause"), nil, c, 200, nil)
	sum := sha256.Sum256(nil)
	if _, err := e.q.BeginIdempotencyKey(context.Background(), db.BeginIdempotencyKeyParams{TeamID: sb.TeamID, Route: "sandboxes.pause:" + sb.ID,
		Key: "k-pdead", RequestHash: hex.EncodeToString(sum[:]), Owner: "cp-dead", Attempt: ids.New(ids.Operation), TtlSeconds: 0, WindowSeconds: 86400}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		key    string
		status int
	}{{"k-pdead", 200}, {"k-pnew", 409}} {
		resp, b := e.keyed(sbPath(sb.ID, "/pause"), tc.key, "", c)
		if resp.StatusCode != tc.status || (tc.status == 200 && !strings.Contains(string(b), `"status":"paused"`)) {
			t.Fatalf("pause with %s = %d %s, want %d", tc.key, resp.StatusCode, b, tc.status)
		}
	}
}
