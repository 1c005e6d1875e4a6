package api

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/controlplane/agenttest"
	"github.com/wrenn-dev/wrenn/internal/controlplane/reconciler"
	"github.com/wrenn-dev/wrenn/internal/db"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

func TestSandboxLifecycle(t *testing.T) {
	e := newEnv(t)
	owner := e.signup("owner@example.com")
	key, keyID := e.apiKey(owner, "sdk")
	c := cred{key: key}

	sb := e.createSandbox(c, map[string]any{"metadata": map[string]string{"app": "web"}, "timeout_sec": 60})
	if sb.Status != "running" || sb.Template != "minimal" || sb.VCPUs != 1 || sb.MemoryMB != 256 || sb.TimeoutSec != 60 || sb.CreatedBy != keyID || sb.Metadata["app"] != "web" {
		t.Fatalf("created %+v", sb)
	}
	if e.agent.State(sb.ID) != pb.SandboxState_SANDBOX_STATE_RUNNING {
		t.Fatal("agent does not run the sandbox")
	}
	// Empty body: all defaults. The capsules alias serves the same API.
	sb2 := e.createSandbox(owner.cred(), nil)
	var got sandboxResp
	e.want("GET", "/v1/capsules/"+sb2.ID, nil, c, 200, &got)
	if got.ID != sb2.ID || got.Status != "running" {
		t.Fatalf("get via alias %+v", got)
	}

	// Exec, text and binary output.
	var ex struct {
		Stdout, Stderr, Encoding string
		ExitCode                 int `json:"exit_code"`
	}
	e.want("POST", sbPath(sb.ID, "/exec"), map[string]any{"cmd": "echo", "args": []string{"hello", "world"}}, c, 200, &ex)
	if ex.Stdout != "hello world\n" || ex.ExitCode != 0 || ex.Encoding != "utf-8" {
		t.Fatalf("exec %+v", ex)
	}
	e.want("POST", sbPath(sb.ID, "/exec"), map[string]any{"cmd": "binary"}, c, 200, &ex)
	raw, err := base64.StdEncoding.DecodeString(ex.Stdout)
	if ex.Encoding != "base64" || err != nil || !bytes.Equal(raw, []byte{0xff, 0xfe, 0x00, 'x'}) {
		t.Fatalf("binary exec %+v", ex)
	}
	e.want("POST", sbPath(sb.ID, "/exec"), map[string]any{"cmd": "stderr", "args": []string{"oops"}}, c, 200, &ex)
	if ex.Stderr != "oops" || ex.ExitCode != 2 {
		t.Fatalf("stderr exec %+v", ex)
	}
	e.want("POST", sbPath(sb.ID, "/exec"), map[string]any{"cmd": "cat", "stdin": "piped"}, c, 200, &ex)
	if ex.Stdout != "piped" {
		t.Fatalf("stdin exec %+v", ex)
	}

	// Background processes.
	var bg struct {
		PID uint32
		Tag string
	}
	e.want("POST", sbPath(sb.ID, "/exec"), map[string]any{"cmd": "sleep", "args": []string{"100"}, "background": true, "tag": "server"}, c, 200, &bg)
	if bg.PID == 0 || bg.Tag != "server" {
		t.Fatalf("background %+v", bg)
	}
	var procs struct {
		Processes []struct {
			PID uint32
			Tag string
		}
	}
	e.want("GET", sbPath(sb.ID, "/processes"), nil, c, 200, &procs)
	if len(procs.Processes) != 1 || procs.Processes[0].Tag != "server" {
		t.Fatalf("processes %+v", procs)
	}
	e.wantErr("DELETE", sbPath(sb.ID, "/processes/server?signal=SIGSTOP"), nil, c, 400, "", "signal")
	e.want("DELETE", sbPath(sb.ID, fmt.Sprintf("/processes/%d?signal=SIGKILL", bg.PID)), nil, c, 204, nil)
	e.wantErr("DELETE", sbPath(sb.ID, "/processes/server"), nil, c, 404, "not_found", "")

	// Metrics and ping.
	var m struct {
		Current *struct {
			CPUPercent float64 `json:"cpu_percent"`
		}
	}
	e.want("GET", sbPath(sb.ID, "/metrics"), nil, c, 200, &m)
	if m.Current == nil || m.Current.CPUPercent != 12.5 {
		t.Fatalf("metrics %+v", m)
	}
	var ping struct {
		LastActiveAt string `json:"last_active_at"`
	}
	e.want("POST", sbPath(sb.ID, "/ping"), nil, c, 200, &ping)
	if ping.LastActiveAt == "" || e.agent.Calls("PingSandbox") != 1 {
		t.Fatalf("ping %+v", ping)
	}

	// Pause / resume, with the state machine enforced.
	e.want("POST", sbPath(sb.ID, "/pause"), nil, c, 200, &got)
	if got.Status != "paused" || e.agent.State(sb.ID) != pb.SandboxState_SANDBOX_STATE_PAUSED {
		t.Fatalf("after pause %+v", got)
	}
	e.wantErr("POST", sbPath(sb.ID, "/pause"), nil, c, 409, "invalid_state", "")
	e.wantErr("POST", sbPath(sb.ID, "/exec"), map[string]any{"cmd": "echo"}, c, 409, "invalid_state", "")
	e.wantErr("POST", sbPath(sb.ID, "/ping"), nil, c, 409, "invalid_state", "")
	e.wantErr("POST", sbPath(sb.ID, "/resume"), map[string]any{"timeout_sec": -1}, c, 400, "", "timeout_sec")
	e.want("POST", sbPath(sb.ID, "/resume"), map[string]any{"timeout_sec": 120}, c, 200, &got)
	if got.Status != "running" || got.TimeoutSec != 120 {
		t.Fatalf("after resume %+v", got)
	}
	e.wantErr("POST", sbPath(sb.ID, "/resume"), nil, c, 409, "invalid_state", "")

	// List, filters and pagination.
	sb3 := e.createSandbox(c, map[string]any{"metadata": map[string]string{"app": "web"}})
	e.want("POST", sbPath(sb2.ID, "/pause"), nil, c, 200, nil)
	var page struct {
		Sandboxes  []sandboxResp `json:"sandboxes"`
		NextCursor string        `json:"next_cursor"`
	}
	e.want("GET", "/v1/sandboxes?status=running", nil, c, 200, &page)
	if len(page.Sandboxes) != 2 {
		t.Fatalf("running = %+v", page.Sandboxes)
	}
	e.want("GET", "/v1/sandboxes?status=paused,running&metadata.app=web", nil, c, 200, &page)
	if len(page.Sandboxes) != 2 || page.Sandboxes[0].ID != sb3.ID {
		t.Fatalf("metadata filter = %+v", page.Sandboxes)
	}
	seen := map[string]bool{}
	cursor := ""
	for i := 0; i < 5; i++ {
		page.Sandboxes, page.NextCursor = nil, ""
		e.want("GET", "/v1/sandboxes?limit=1&cursor="+cursor, nil, c, 200, &page)
		for _, s := range page.Sandboxes {
			if seen[s.ID] {
				t.Fatalf("page repeats %s", s.ID)
			}
			seen[s.ID] = true
		}
		if page.NextCursor == "" {
			break
		}
		cursor = page.NextCursor
	}
	if len(seen) != 3 {
		t.Fatalf("pagination saw %d sandboxes, want 3", len(seen))
	}
	e.wantErr("GET", "/v1/sandboxes?limit=0", nil, c, 400, "", "limit")
	e.wantErr("GET", "/v1/sandboxes?limit=abc", nil, c, 400, "", "limit")
	e.wantErr("GET", "/v1/sandboxes?limit=1000", nil, c, 400, "", "limit")
	e.wantErr("GET", "/v1/sandboxes?status=sleeping", nil, c, 400, "", "status")
	e.wantErr("GET", "/v1/sandboxes?cursor=%21%21", nil, c, 400, "", "cursor")

	// Destroy: idempotent, and the agent forgets the VM.
	e.want("DELETE", sbPath(sb.ID), nil, c, 204, nil)
	e.want("DELETE", sbPath(sb.ID), nil, c, 204, nil)
	if e.agent.State(sb.ID) != pb.SandboxState_SANDBOX_STATE_UNSPECIFIED {
		t.Fatal("agent still has the sandbox")
	}
	e.want("GET", sbPath(sb.ID), nil, c, 200, &got)
	if got.Status != "stopped" {
		t.Fatalf("after delete %+v", got)
	}
	e.want("DELETE", sbPath(sb2.ID), nil, owner.cred(), 204, nil) // paused sandboxes too
}

func TestSandboxBadInput(t *testing.T) {
	e := newEnv(t, func(o *envOpts) { o.limits.MaxRunningPerTeam = 2; o.limits.MaxVCPUs = 4 })
	owner := e.signup("owner@example.com")
	c := owner.cred()
	other := e.signup("other@example.com")
	sb := e.createSandbox(c, nil)

	create := []struct {
		name   string
		body   any
		status int
		code   string
		field  string
	}{
		{"malformed", `{"template":`, 400, "invalid_request", ""},
		{"unknown field", `{"templat":"minimal"}`, 400, "invalid_request", "templat"},
		{"vcpus string", `{"vcpus":"two"}`, 400, "invalid_request", "vcpus"},
		{"vcpus float", `{"vcpus":1.5}`, 400, "invalid_request", "vcpus"},
		{"vcpus too many", `{"vcpus":64}`, 400, "invalid_request", "vcpus"},
		{"vcpus zero", `{"vcpus":0}`, 400, "invalid_request", "vcpus"},
		{"memory too small", `{"memory_mb":1}`, 400, "invalid_request", "memory_mb"},
		{"negative timeout", `{"timeout_sec":-5}`, 400, "invalid_request", "timeout_sec"},
		{"huge timeout", `{"timeout_sec":99999999999999999999}`, 400, "invalid_request", "timeout_sec"},
		{"metadata not strings", `{"metadata":{"a":1}}`, 400, "invalid_request", "metadata"},
		{"metadata array", `{"metadata":["a"]}`, 400, "invalid_request", "metadata"},
		{"unknown template", `{"template":"nope"}`, 400, "unknown_template", "template"},
		{"template not a name", `{"template":"../etc"}`, 400, "invalid_request", "template"},
		{"template upper case", `{"template":"Minimal"}`, 400, "invalid_request", "template"},
		{"body too large", `{"template":"` + strings.Repeat("a", 70<<10) + `"}`, 413, "too_large", ""},
	}
	for _, tt := range create {
		t.Run("create "+tt.name, func(t *testing.T) {
			e.wantErr("POST", "/v1/sandboxes", tt.body, c, tt.status, tt.code, tt.field)
		})
	}
	exec := []struct {
		name  string
		body  any
		field string
	}{
		{"missing cmd", `{}`, "cmd"},
		{"blank cmd", `{"cmd":"  "}`, "cmd"},
		{"args not array", `{"cmd":"echo","args":"a b"}`, "args"},
		{"args numbers", `{"cmd":"echo","args":[1]}`, "args"},
		{"env with =", `{"cmd":"echo","env":{"A=B":"c"}}`, "env"},
		{"unknown field", `{"cmd":"echo","command":"x"}`, "command"},
		{"background string", `{"cmd":"echo","background":"yes"}`, "background"},
		{"nul in cmd", `{"cmd":"ec\u0000ho"}`, "cmd"},
	}
	for _, tt := range exec {
		t.Run("exec "+tt.name, func(t *testing.T) {
			e.wantErr("POST", sbPath(sb.ID, "/exec"), tt.body, c, 400, "invalid_request", tt.field)
		})
	}

	// Unknown or another team's sandbox: 404, never a hint that it exists.
	for _, path := range []string{sbPath(sb.ID), sbPath(sb.ID, "/exec"), sbPath(sb.ID, "/pause"), sbPath(sb.ID, "/files/read")} {
		method := "POST"
		var body any = map[string]any{"cmd": "echo", "path": "/x"}
		if path == sbPath(sb.ID) {
			method, body = "GET", nil
		}
		if strings.HasSuffix(path, "/exec") {
			body = map[string]any{"cmd": "echo"}
		}
		if strings.HasSuffix(path, "/pause") {
			body = nil
		}
		if strings.HasSuffix(path, "/read") {
			body = map[string]any{"path": "/x"}
		}
		e.wantErr(method, path, body, other.cred(), 404, "sandbox_not_found", "")
	}
	e.wantErr("GET", sbPath("sb-doesnotexist"), nil, c, 404, "sandbox_not_found", "")
	e.wantErr("GET", sbPath("sb-aaaaaaaaaaaaaaaaaaaa"), nil, c, 404, "sandbox_not_found", "")
	e.wantErr("DELETE", sbPath("sb-aaaaaaaaaaaaaaaaaaaa"), nil, c, 404, "sandbox_not_found", "")

	// Team limit: two live sandboxes at most (pending+running).
	e.createSandbox(c, nil)
	e.wantErr("POST", "/v1/sandboxes", nil, c, 429, "sandbox_limit", "")

	// Agent down: 503 with agent_unavailable, never 500; the failed create
	// is recorded as an error.
	e.want("DELETE", sbPath(sb.ID), nil, c, 204, nil)
	e.agent.Close()
	e.wantErr("POST", "/v1/sandboxes", nil, c, 503, "agent_unavailable", "")
	var page struct{ Sandboxes []sandboxResp }
	e.want("GET", "/v1/sandboxes?status=error", nil, c, 200, &page)
	if len(page.Sandboxes) != 1 || page.Sandboxes[0].ErrorMessage == "" {
		t.Fatalf("failed create not recorded: %+v", page.Sandboxes)
	}
	running := e.want("GET", "/v1/sandboxes?status=running", nil, c, 200, nil)
	var rp struct{ Sandboxes []sandboxResp }
	_ = jsonUnmarshal(running, &rp)
	e.wantErr("POST", sbPath(rp.Sandboxes[0].ID, "/exec"), map[string]any{"cmd": "echo"}, c, 503, "agent_unavailable", "")
	// An error sandbox can be forgotten while its agent is away.
	e.want("DELETE", sbPath(page.Sandboxes[0].ID), nil, c, 204, nil)
	// No host at all.
	if _, err := e.pool.Exec(context.Background(), "UPDATE hosts SET status = 'offline'"); err != nil {
		t.Fatal(err)
	}
	e.wantErr("POST", "/v1/sandboxes", nil, c, 503, "agent_unavailable", "")
	e.wantErr("POST", sbPath(rp.Sandboxes[0].ID, "/exec"), map[string]any{"cmd": "echo"}, c, 503, "agent_unavailable", "")
}

func TestConcurrentTransitionsNeverLoseUpdates(t *testing.T) {
	e := newEnv(t)
	owner := e.signup("owner@example.com")
	c := owner.cred()
	for round := 0; round < 3; round++ {
		sb := e.createSandbox(c, nil)
		const n = 8
		statuses := make([]int, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				statuses[i], _ = e.do("POST", sbPath(sb.ID, "/pause"), nil, c)
			}()
		}
		wg.Wait()
		ok := 0
		for _, st := range statuses {
			switch st {
			case 200:
				ok++
			case 409:
			default:
				t.Fatalf("concurrent pause answered %d", st)
			}
		}
		if ok != 1 {
			t.Fatalf("%d pauses succeeded, want exactly 1 (%v)", ok, statuses)
		}
		// Resume and destroy race: the sandbox must end stopped, on the agent too.
		var wg2 sync.WaitGroup
		var resumeStatus, deleteStatus int
		wg2.Add(2)
		go func() { defer wg2.Done(); resumeStatus, _ = e.do("POST", sbPath(sb.ID, "/resume"), nil, c) }()
		go func() { defer wg2.Done(); deleteStatus, _ = e.do("DELETE", sbPath(sb.ID), nil, c) }()
		wg2.Wait()
		if deleteStatus != 204 || (resumeStatus != 200 && resumeStatus != 409 && resumeStatus != 404) {
			t.Fatalf("resume %d, delete %d", resumeStatus, deleteStatus)
		}
		var got sandboxResp
		e.want("GET", sbPath(sb.ID), nil, c, 200, &got)
		// Whatever the interleaving, the destroy wins in the database and on
		// the agent: a late resume finds no VM (404) or no paused row (409).
		if got.Status != "stopped" || e.agent.State(sb.ID) != pb.SandboxState_SANDBOX_STATE_UNSPECIFIED {
			t.Fatalf("after race: db %s, agent %v", got.Status, e.agent.State(sb.ID))
		}
	}
}

func TestReconciler(t *testing.T) {
	e := newEnv(t)
	owner := e.signup("owner@example.com")
	c := owner.cred()
	auto := e.createSandbox(c, nil)
	gone := e.createSandbox(c, nil)
	kept := e.createSandbox(c, nil)
	e.agent.AutoPause(auto.ID)
	e.agent.Forget(gone.ID)
	res := e.rec.Pass(context.Background())
	if res.Paused != 1 || res.Stopped != 1 {
		t.Fatalf("reconcile result %+v", res)
	}
	for id, want := range map[string]string{auto.ID: "paused", gone.ID: "stopped", kept.ID: "running"} {
		var got sandboxResp
		e.want("GET", sbPath(id), nil, c, 200, &got)
		if got.Status != want {
			t.Fatalf("%s is %s, want %s", id, got.Status, want)
		}
	}
	// Idempotent: a second pass changes nothing; an auto-paused sandbox resumes.
	if res := e.rec.Pass(context.Background()); res != (reconciler.PassResult{}) {
		t.Fatalf("second pass changed %+v", res)
	}
	e.want("POST", sbPath(auto.ID, "/resume"), nil, c, 200, nil)
	// An unreachable agent is skipped, nothing is marked stopped.
	e.agent.Close()
	if res := e.rec.Pass(context.Background()); res.HostsFailed != 1 || res.Stopped != 0 {
		t.Fatalf("agent down: %+v", res)
	}
}

func TestFilesRoundTrip(t *testing.T) {
	e := newEnv(t)
	owner := e.signup("owner@example.com")
	key, _ := e.apiKey(owner, "files")
	c := cred{key: key}
	sb := e.createSandbox(c, nil)

	payload := make([]byte, 1<<20+123)
	_, _ = rand.Read(payload)
	var wr struct {
		Path string
		Size int64
	}
	st, b := e.upload(sb.ID, c, []part{{"path", "/root/data.bin"}, {"mode", "600"}, {"file", string(payload)}})
	if st != 200 {
		t.Fatalf("upload = %d %s", st, b)
	}
	_ = jsonUnmarshal(b, &wr)
	if wr.Path != "/root/data.bin" || wr.Size != int64(len(payload)) {
		t.Fatalf("upload result %+v", wr)
	}
	req, _ := http.NewRequest("POST", e.srv.URL+sbPath(sb.ID, "/files/read"), strings.NewReader(`{"path":"/root/data.bin"}`))
	c.apply(req)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Equal(got, payload) || resp.ContentLength != int64(len(payload)) {
		t.Fatalf("read back %d bytes (status %d, length %d), want %d", len(got), resp.StatusCode, resp.ContentLength, len(payload))
	}

	e.want("POST", sbPath(sb.ID, "/files/mkdir"), map[string]string{"path": "/root/sub/dir"}, c, 200, nil)
	var ls struct{ Entries []struct{ Name, Type string } }
	e.want("POST", sbPath(sb.ID, "/files/list"), map[string]any{"path": "/root"}, c, 200, &ls)
	if len(ls.Entries) != 2 || ls.Entries[0].Name != "data.bin" || ls.Entries[1].Type != "dir" {
		t.Fatalf("list %+v", ls)
	}
	e.want("POST", sbPath(sb.ID, "/files/remove"), map[string]string{"path": "/root/data.bin"}, c, 204, nil)
	e.wantErr("POST", sbPath(sb.ID, "/files/read"), map[string]string{"path": "/root/data.bin"}, c, 404, "not_found", "")
	e.wantErr("POST", sbPath(sb.ID, "/files/remove"), map[string]string{"path": "/root/data.bin"}, c, 404, "not_found", "")
	e.wantErr("POST", sbPath(sb.ID, "/files/read"), map[string]string{"path": "/root"}, c, 400, "invalid_request", "")
	e.wantErr("POST", sbPath(sb.ID, "/files/read"), map[string]string{}, c, 400, "", "path")
	e.wantErr("POST", sbPath(sb.ID, "/files/read"), map[string]any{"path": "/x", "depth": 2}, c, 400, "", "depth")
	e.wantErr("POST", sbPath(sb.ID, "/files/list"), map[string]any{"path": "/root", "depth": 99}, c, 400, "", "depth")
	e.wantErr("POST", sbPath(sb.ID, "/files/list"), map[string]any{"path": "/nope"}, c, 404, "not_found", "")

	// Upload mistakes.
	uploads := []struct {
		name   string
		parts  []part
		status int
		field  string
	}{
		{"file before path", []part{{"file", "x"}, {"path", "/root/a"}}, 400, "path"},
		{"no file", []part{{"path", "/root/a"}}, 400, "file"},
		{"bad mode", []part{{"path", "/root/a"}, {"mode", "rwx"}, {"file", "x"}}, 400, "mode"},
		{"unknown part", []part{{"path", "/root/a"}, {"colour", "red"}, {"file", "x"}}, 400, "colour"},
		{"missing dir", []part{{"path", "/nope/a"}, {"file", "x"}}, 404, ""},
		{"path not utf-8", []part{{"path", "/root/\xff"}, {"file", "x"}}, 400, "path"},
	}
	for _, tt := range uploads {
		t.Run(tt.name, func(t *testing.T) {
			st, b := e.upload(sb.ID, c, tt.parts)
			var ae apiErr
			_ = jsonUnmarshal(b, &ae)
			if st != tt.status || (tt.field != "" && ae.Error.Field != tt.field) {
				t.Fatalf("upload = %d %s, want %d field %s", st, b, tt.status, tt.field)
			}
		})
	}
	req, _ = http.NewRequest("POST", e.srv.URL+sbPath(sb.ID, "/files/write"), strings.NewReader("not multipart"))
	req.Header.Set("Content-Type", "text/plain")
	c.apply(req)
	if st, _ := e.send(req); st != 400 {
		t.Fatalf("non-multipart upload = %d", st)
	}
}

func TestUploadLimit(t *testing.T) {
	e := newEnv(t, func(o *envOpts) { o.maxUpload = 64 << 10 })
	owner := e.signup("owner@example.com")
	sb := e.createSandbox(owner.cred(), nil)
	st, b := e.upload(sb.ID, owner.cred(), []part{{"path", "/root/big"}, {"file", strings.Repeat("x", 200<<10)}})
	if st != 413 {
		t.Fatalf("oversized upload = %d %s", st, b)
	}
}

func TestSnapshots(t *testing.T) {
	e := newEnv(t)
	owner := e.signup("owner@example.com")
	other := e.signup("other@example.com")
	c := owner.cred()
	sb := e.createSandbox(c, map[string]any{"vcpus": 2, "memory_mb": 512})

	e.wantErr("POST", "/v1/snapshots", map[string]string{"sandbox_id": sb.ID, "name": "Bad Name!"}, c, 400, "", "name")
	e.wantErr("POST", "/v1/snapshots", map[string]string{"name": "snap"}, c, 400, "", "sandbox_id")
	e.wantErr("POST", "/v1/snapshots", map[string]string{"sandbox_id": sb.ID, "name": "minimal"}, c, 409, "name_taken", "name")
	e.wantErr("POST", "/v1/snapshots", map[string]string{"sandbox_id": sb.ID, "name": "snap"}, other.cred(), 404, "sandbox_not_found", "")

	var snap struct {
		Name, ID string
		VCPUs    int `json:"vcpus"`
	}
	e.want("POST", "/v1/snapshots", map[string]string{"sandbox_id": sb.ID, "name": "snap"}, c, 201, &snap)
	if snap.Name != "snap" || snap.VCPUs != 2 || !e.agent.HasTemplate(snap.ID) {
		t.Fatalf("snapshot %+v", snap)
	}
	// The agent stops the guest only while it takes the snapshot (as the
	// real agent does, checked by internal/agentconformance): the source
	// keeps running, and the database says so.
	var got sandboxResp
	e.want("GET", sbPath(sb.ID), nil, c, 200, &got)
	if got.Status != "running" || e.agent.State(sb.ID) != pb.SandboxState_SANDBOX_STATE_RUNNING {
		t.Fatalf("source sandbox is %s after snapshot", got.Status)
	}
	e.wantErr("POST", "/v1/snapshots", map[string]string{"sandbox_id": sb.ID, "name": "snap"}, c, 409, "name_taken", "name")
	var list struct{ Snapshots []struct{ Name string } }
	e.want("GET", "/v1/snapshots", nil, c, 200, &list)
	if len(list.Snapshots) != 1 {
		t.Fatalf("list %+v", list)
	}
	e.want("GET", "/v1/snapshots", nil, other.cred(), 200, &list)
	if len(list.Snapshots) != 0 {
		t.Fatalf("other team sees %+v", list)
	}

	// Sandboxes start from the snapshot with its size.
	e.wantErr("POST", "/v1/sandboxes", map[string]any{"template": "snap", "vcpus": 1}, c, 400, "", "vcpus")
	from := e.createSandbox(c, map[string]any{"template": "snap"})
	if from.Template != "snap" || from.VCPUs != 2 || from.MemoryMB != 512 {
		t.Fatalf("from snapshot %+v", from)
	}
	e.wantErr("POST", "/v1/sandboxes", map[string]any{"template": "snap"}, other.cred(), 400, "unknown_template", "template")
	e.wantErr("DELETE", "/v1/snapshots/snap", nil, c, 409, "snapshot_in_use", "")
	e.wantErr("DELETE", "/v1/snapshots/snap", nil, other.cred(), 404, "snapshot_not_found", "")
	e.want("DELETE", sbPath(from.ID), nil, c, 204, nil)
	e.want("DELETE", "/v1/snapshots/snap", nil, c, 204, nil)
	if e.agent.HasTemplate(snap.ID) {
		t.Fatal("agent still has the snapshot")
	}
	e.wantErr("DELETE", "/v1/snapshots/snap", nil, c, 404, "snapshot_not_found", "")
	e.wantErr("DELETE", "/v1/snapshots/..%2F..%2Fetc", nil, c, 404, "snapshot_not_found", "")
}

type part struct{ name, value string }

// upload posts a multipart body with the parts in order.
func (e *env) upload(id string, c cred, parts []part) (int, []byte) {
	e.t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for _, p := range parts {
		var w io.Writer
		var err error
		if p.name == "file" {
			w, err = mw.CreateFormFile("file", "upload.bin")
		} else {
			w, err = mw.CreateFormField(p.name)
		}
		if err != nil {
			e.t.Fatal(err)
		}
		_, _ = io.WriteString(w, p.value)
	}
	_ = mw.Close()
	req, _ := http.NewRequest("POST", e.srv.URL+sbPath(id, "/files/write"), &buf)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	c.apply(req)
	return e.send(req)
}

// A snapshot's files live on the host that took it: sandboxes from it start
// there whatever the scheduler would pick, and not at all when that host is
// offline or gone.
func TestSandboxesFromASnapshotStartOnItsHost(t *testing.T) {
	e := newEnv(t)
	owner := e.signup("owner@example.com")
	c := owner.cred()
	sb := e.createSandbox(c, nil)
	if sb.HostID != "host-test" {
		t.Fatalf("first sandbox on %q", sb.HostID)
	}
	var snap struct{ ID string }
	e.want("POST", "/v1/snapshots", map[string]string{"sandbox_id": sb.ID, "name": "snap"}, c, 201, &snap)

	// A second online host: round-robin would alternate between the two.
	second := agenttest.New()
	if err := second.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(second.Close)
	ctx := context.Background()
	if _, err := e.q.UpsertHost(ctx, db.UpsertHostParams{ID: "host-second", Name: "second", Address: second.Address(), Status: "online", Vmm: "test"}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		from := e.createSandbox(c, map[string]any{"template": "snap"})
		if from.HostID != "host-test" {
			t.Fatalf("sandbox %d from the snapshot placed on %q, want host-test", i, from.HostID)
		}
		e.want("DELETE", sbPath(from.ID), nil, c, 204, nil)
	}
	// Image templates still spread over both hosts.
	seen := map[string]bool{}
	for i := 0; i < 4; i++ {
		seen[e.createSandbox(c, nil).HostID] = true
	}
	if !seen["host-test"] || !seen["host-second"] {
		t.Fatalf("image sandboxes landed on %v, want both hosts", seen)
	}

	if err := e.q.SetHostStatus(ctx, db.SetHostStatusParams{ID: "host-test", Status: "unreachable"}); err != nil {
		t.Fatal(err)
	}
	e.wantErr("POST", "/v1/sandboxes", map[string]any{"template": "snap"}, c, 503, "agent_unavailable", "")
	if _, err := e.pool.Exec(ctx, "UPDATE templates SET host_id = NULL WHERE id = $1", snap.ID); err != nil {
		t.Fatal(err)
	}
	e.wantErr("POST", "/v1/sandboxes", map[string]any{"template": "snap"}, c, 409, "snapshot_unavailable", "template")
}

// The reconciler reads the agent's state and may record a pause before the
// pause call itself returns: the caller still gets 200, not a 409. (It
// leaves a row with an operation in flight alone, so it does so only
// once the pause outlived its lease, as a frozen replica's does: the hook
// expires the lease.)
func TestPauseRecordedFirstByTheReconciler(t *testing.T) {
	e := newEnv(t)
	owner := e.signup("owner@example.com")
	c := owner.cred()
	sb := e.createSandbox(c, nil)
	var reconciled int
	e.agent.AfterPause = func(id string) {
		if _, err := e.pool.Exec(context.Background(), "UPDATE sandboxes SET op_expires_at = now() WHERE id = $1", id); err != nil {
			t.Error(err)
		}
		reconciled = e.rec.Pass(context.Background()).Paused
	}
	var got sandboxResp
	e.want("POST", sbPath(sb.ID, "/pause"), nil, c, 200, &got)
	if reconciled != 1 {
		t.Fatalf("the reconciler recorded %d pauses during the call, want 1 (the race this test is about did not happen)", reconciled)
	}
	if got.Status != "paused" {
		t.Fatalf("pause answered status %q", got.Status)
	}
	// The audit trail has the owner's pause, as theirs, besides the
	// reconciler's observation of it.
	var byUser, byReconciler int
	for _, r := range e.auditLogs(c, "resource_id="+sb.ID+"&action=paused", 50) {
		switch {
		case r.Actor.Type == "user" && r.Actor.ID == owner.User.ID:
			byUser++
		case r.Actor.Type == "system" && r.Actor.ID == "reconciler":
			byReconciler++
		}
	}
	if byUser != 1 || byReconciler != 1 {
		t.Fatalf("paused rows by the user %d, by the reconciler %d; want 1 and 1", byUser, byReconciler)
	}
	// A resume with a new timeout still records the timeout.
	e.want("POST", sbPath(sb.ID, "/resume"), map[string]any{"timeout_sec": 120}, c, 200, &got)
	if got.Status != "running" || got.TimeoutSec != 120 {
		t.Fatalf("resume answered %+v", got)
	}
}

// Activity the agent sees (here an exec) reaches the database's
// last_active_at through the reconciler, not through a write per request.
func TestReconcilerRecordsActivity(t *testing.T) {
	e := newEnv(t)
	owner := e.signup("owner@example.com")
	c := owner.cred()
	sb := e.createSandbox(c, nil)
	var before sandboxResp
	e.want("GET", sbPath(sb.ID), nil, c, 200, &before)
	if before.LastActiveAt == nil {
		t.Fatal("a running sandbox has no last_active_at")
	}
	e.want("POST", sbPath(sb.ID, "/exec"), map[string]any{"cmd": "true"}, c, 200, nil)
	e.rec.Pass(context.Background())
	var after sandboxResp
	e.want("GET", sbPath(sb.ID), nil, c, 200, &after)
	if after.LastActiveAt == nil || !after.LastActiveAt.After(*before.LastActiveAt) {
		t.Fatalf("last_active_at %v after an exec and a reconcile, was %v", after.LastActiveAt, before.LastActiveAt)
	}
	// Nothing new on the agent: another pass changes nothing.
	e.rec.Pass(context.Background())
	var again sandboxResp
	e.want("GET", sbPath(sb.ID), nil, c, 200, &again)
	if !again.LastActiveAt.Equal(*after.LastActiveAt) {
		t.Fatalf("last_active_at moved from %v to %v without activity", after.LastActiveAt, again.LastActiveAt)
	}
}
