package api

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"mime/multipart"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/controlplane/auth"
	"github.com/wrenn-dev/wrenn/internal/controlplane/builds"
	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
)

type buildResp struct {
	ID       string `json:"id"`
	Status   string `json:"status"`
	Kind     string `json:"kind"`
	Error    string `json:"error"`
	Progress struct{ Done, Total int }
	Steps    []struct {
		Index    int    `json:"index"`
		Cmd      string `json:"cmd"`
		Status   string `json:"status"`
		ExitCode *int   `json:"exit_code"`
		Stderr   string `json:"stderr"`
	} `json:"steps"`
	SandboxID  *string `json:"sandbox_id"`
	TemplateID *string `json:"template_id"`
}

func tarOf(t *testing.T, files map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for name, body := range files {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// multipartBuild sends config and archive parts.
func (e *env) multipartBuild(c cred, config string, archive []byte) (int, []byte) {
	e.t.Helper()
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	if config != "" {
		w, _ := mw.CreateFormField("config")
		w.Write([]byte(config))
	}
	if archive != nil {
		w, _ := mw.CreateFormFile("archive", "site.tar")
		w.Write(archive)
	}
	mw.Close()
	req := e.request("POST", "/v1/admin/builds", body.Bytes(), c)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	return e.send(req)
}

func TestBuildRequestsRefused(t *testing.T) {
	e := newEnv(t, func(o *envOpts) { o.builds = &builds.Config{MaxArchiveBytes: 4 << 10} })
	admin := e.signup("admin@example.com")
	user := e.signup("user@example.com")
	ok := map[string]any{"name": "web", "recipe": []string{"true"}}
	with := func(k string, v any) map[string]any {
		m := map[string]any{}
		for k, v := range ok {
			m[k] = v
		}
		if v == nil {
			delete(m, k)
		} else {
			m[k] = v
		}
		return m
	}
	cases := []struct {
		name   string
		body   any
		status int
		code   string
		field  string
	}{
		{"not an admin", ok, 403, "admin_required", ""},
		{"no name", with("name", nil), 400, "invalid_request", "name"},
		{"bad name", with("name", "Web App"), 400, "invalid_request", "name"},
		{"no recipe", with("recipe", nil), 400, "invalid_request", "recipe"},
		{"empty recipe", with("recipe", []string{}), 400, "invalid_request", "recipe"},
		{"both recipes", with("recipe_text", "true"), 400, "invalid_request", "recipe"},
		{"unknown instruction", with("recipe", []string{"true", "FROM debian"}), 400, "invalid_request", "recipe"},
		{"line too long", with("recipe", []string{strings.Repeat("x", builds.MaxLineBytes+1)}), 400, "invalid_request", "recipe"},
		{"too many steps", with("recipe", make([]string, builds.MaxSteps+1)), 400, "invalid_request", "recipe"},
		{"bad healthcheck", with("healthcheck", map[string]any{"cmd": "true", "retries": -2}), 400, "invalid_request", "healthcheck.retries"},
		{"healthcheck without cmd", with("healthcheck", map[string]any{"interval": "1s"}), 400, "invalid_request", "healthcheck.cmd"},
		{"unknown base", with("base_template", "nope"), 400, "unknown_template", "base_template"},
		{"too many vcpus", with("vcpus", 99), 400, "invalid_request", "vcpus"},
		{"disk shrink", with("disk_mb", 512), 400, "invalid_request", "disk_mb"},
		{"disk too large", with("disk_mb", 1<<21), 400, "invalid_request", "disk_mb"},
		{"COPY without archive", with("recipe", []string{"COPY site /srv"}), 400, "invalid_request", "archive"},
		{"unknown field", with("shell", "bash"), 400, "invalid_request", "shell"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			who := admin
			if c.code == "admin_required" {
				who = user
			}
			if b, isMap := c.body.(map[string]any); isMap && c.name == "too many steps" {
				steps := make([]string, builds.MaxSteps+1)
				for i := range steps {
					steps[i] = "true"
				}
				b["recipe"] = steps
			}
			e.wantErr("POST", "/v1/admin/builds", c.body, who.cred(), c.status, c.code, c.field)
		})
	}

	// Multipart: archives are checked whole at upload.
	cfg := `{"name":"site","recipe":["COPY site /srv"]}`
	for _, c := range []struct {
		name    string
		config  string
		archive []byte
		status  int
		field   string
	}{
		{"escaping path", cfg, tarOf(t, map[string]string{"../etc/passwd": "x"}), 400, "archive"},
		{"absolute path", cfg, tarOf(t, map[string]string{"/etc/passwd": "x"}), 400, "archive"},
		{"not an archive", cfg, []byte("hello, not a tar file at all"), 400, "archive"},
		{"COPY source missing", cfg, tarOf(t, map[string]string{"other/a": "x"}), 400, "archive"},
		{"over the limit", cfg, tarOf(t, map[string]string{"site/big": strings.Repeat("x", 8<<10)}), 413, "archive"},
		{"no config", "", tarOf(t, map[string]string{"site/a": "x"}), 400, "config"},
		{"bad config", `{"name":`, tarOf(t, map[string]string{"site/a": "x"}), 400, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			status, b := e.multipartBuild(admin.cred(), c.config, c.archive)
			var ae apiErr
			_ = json.Unmarshal(b, &ae)
			if status != c.status || (c.field != "" && ae.Error.Field != c.field) {
				t.Fatalf("= %d %s; want %d on %q", status, b, c.status, c.field)
			}
		})
	}
	// A good archive is accepted (and nothing runs: no workers here).
	var queued buildResp
	status, b := e.multipartBuild(admin.cred(), cfg, tarOf(t, map[string]string{"site/index.html": "hi"}))
	if status != http.StatusAccepted || json.Unmarshal(b, &queued) != nil || queued.Status != "queued" || queued.Progress.Total != 1 {
		t.Fatalf("multipart build = %d %s", status, b)
	}
	// The name is taken while the build lives.
	e.wantErr("POST", "/v1/admin/builds", map[string]any{"name": "site", "recipe": []string{"true"}}, admin.cred(), 409, "name_taken", "name")
	e.wantErr("POST", "/v1/admin/builds", map[string]any{"name": "minimal", "recipe": []string{"true"}}, admin.cred(), 409, "name_taken", "name")
	// Cancelling a queued build ends it at once; a second cancel is a 409.
	var cancelled buildResp
	e.want("POST", "/v1/admin/builds/"+queued.ID+"/cancel", nil, admin.cred(), http.StatusAccepted, &cancelled)
	if cancelled.Status != "cancelled" {
		t.Fatalf("cancelled = %+v", cancelled)
	}
	e.wantErr("POST", "/v1/admin/builds/"+queued.ID+"/cancel", nil, admin.cred(), 409, "build_finished", "")
	e.wantAudit(admin, queued.ID, []string{"template.build_cancelled"}, "user", admin.User.ID)
	e.wantErr("GET", "/v1/admin/builds/bld-nope", nil, admin.cred(), 404, "build_not_found", "")
	e.wantErr("GET", "/v1/admin/builds/"+queued.ID, nil, user.cred(), 403, "admin_required", "")
	e.wantErr("GET", "/v1/admin/builds?status=done", nil, admin.cred(), 400, "invalid_request", "status")
	e.wantErr("GET", "/v1/admin/builds?limit=0", nil, admin.cred(), 400, "invalid_request", "limit")
	e.wantErr("GET", "/v1/admin/builds?cursor=zzz", nil, admin.cred(), 400, "invalid_request", "cursor")
	// Logs of an ended build: the build, then its end.
	code, logs := e.do("GET", "/v1/admin/builds/"+queued.ID+"/logs", nil, admin.cred())
	if code != 200 || !strings.Contains(string(logs), "event: build\n") || !strings.Contains(string(logs), "event: end\ndata: {\"type\":\"end\",\"index\":0,\"status\":\"cancelled\"}") {
		t.Fatalf("logs = %d %s", code, logs)
	}
	// Templates: the built-in base and minimal are listed; minimal cannot be deleted.
	var list struct {
		Templates []struct{ Name, Kind, Scope string }
	}
	e.want("GET", "/v1/templates", nil, user.cred(), http.StatusOK, &list)
	if len(list.Templates) != 2 || list.Templates[0].Name != "base" || list.Templates[1].Name != "minimal" || list.Templates[0].Scope != "builtin" || list.Templates[1].Scope != "builtin" {
		t.Fatalf("templates = %+v", list)
	}
	e.wantErr("DELETE", "/v1/admin/templates/minimal", nil, admin.cred(), 409, "template_builtin", "")
	e.wantErr("DELETE", "/v1/admin/templates/nope", nil, admin.cred(), 404, "template_not_found", "")
	e.wantErr("DELETE", "/v1/admin/templates/minimal", nil, user.cred(), 403, "admin_required", "")
	// A built template (on no host) is deleted with its audit row; the
	// refused deletes above wrote none.
	if _, err := e.pool.Exec(context.Background(), "INSERT INTO templates (id, name, kind, build_id) VALUES ('tpl-built', 'built', 'image', $1)", queued.ID); err != nil {
		t.Fatal(err)
	}
	e.want("DELETE", "/v1/admin/templates/built", nil, admin.cred(), http.StatusNoContent, nil)
	e.wantAudit(admin, "tpl-built", []string{"template.deleted"}, "user", admin.User.ID)
	e.wantAudit(admin, "tpl-minimal", nil, "", "")
}

// wantAudit checks the platform audit rows of a resource (oldest first) and
// that each is by the actor.
func (e *env) wantAudit(admin session, resourceID string, want []string, actorType, actorID string) {
	e.t.Helper()
	rows := e.auditLogs(admin.cred(), "scope=platform&resource_id="+resourceID, 50)
	if got := types(rows); !slices.Equal(got, want) {
		e.t.Fatalf("events of %s = %v, want %v", resourceID, got, want)
	}
	for _, r := range rows {
		if r.Actor.Type != actorType || r.Actor.ID != actorID || r.TeamID != "" || r.Scope != "admin" {
			e.t.Errorf("%s row %+v", r.typ(), r)
		}
	}
}

// TestBuildFailsAndPages runs real workers against the in-memory agent
// (whose exec knows a few commands: /bin/sh is not one of them): a step
// that fails ends the build with its exit code and stderr, skips the
// rest, destroys the build sandbox and leaves no template.
func TestBuildFailsAndPages(t *testing.T) {
	e := newEnv(t, func(o *envOpts) { o.builds = &builds.Config{Workers: 2, LeaseTTL: 3 * time.Second} })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); e.builds.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	admin := e.signup("admin@example.com")
	ids := make([]string, 3)
	for i := range ids {
		var b buildResp
		e.want("POST", "/v1/admin/builds", map[string]any{"name": fmt.Sprintf("fails-%d", i), "recipe_text": "# env first\nENV A=1\nls /\necho never"}, admin.cred(), http.StatusAccepted, &b)
		ids[i] = b.ID
	}
	for _, id := range ids {
		var b buildResp
		deadline := time.Now().Add(30 * time.Second)
		for {
			e.want("GET", "/v1/admin/builds/"+id, nil, admin.cred(), http.StatusOK, &b)
			if b.Status == "failed" || time.Now().After(deadline) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if b.Status != "failed" || !strings.Contains(b.Error, "step 2 (line 3, ls /) failed: exit code 127") || b.TemplateID != nil {
			t.Fatalf("build = %+v", b)
		}
		if len(b.Steps) != 3 || b.Steps[0].Status != "succeeded" || b.Steps[1].Status != "failed" || b.Steps[1].ExitCode == nil || *b.Steps[1].ExitCode != 127 ||
			!strings.Contains(b.Steps[1].Stderr, "command not found") || b.Steps[2].Status != "skipped" || b.Progress.Done != 1 {
			t.Fatalf("steps = %+v", b.Steps)
		}
		if b.SandboxID == nil || e.agent.Has(*b.SandboxID) {
			t.Fatalf("build sandbox %v not destroyed", b.SandboxID)
		}
		if _, err := e.q.GetPlatformTemplate(context.Background(), "fails-0"); err == nil {
			t.Fatal("a failed build left a template")
		}
		e.wantAudit(admin, id, []string{"template.build_started", "template.build_failed"}, "system", "build-worker")
	}
	// Paged, newest first, filtered.
	var page struct {
		Builds []buildResp `json:"builds"`
		Next   string      `json:"next_cursor"`
	}
	e.want("GET", "/v1/admin/builds?limit=2&status=failed", nil, admin.cred(), http.StatusOK, &page)
	if len(page.Builds) != 2 || page.Next == "" || page.Builds[0].ID != ids[2] {
		t.Fatalf("page 1 = %+v", page)
	}
	next := page.Next
	page.Next = ""
	e.want("GET", "/v1/admin/builds?limit=2&status=failed&cursor="+next, nil, admin.cred(), http.StatusOK, &page)
	if len(page.Builds) != 1 || page.Next != "" || page.Builds[0].ID != ids[0] {
		t.Fatalf("page 2 = %+v", page)
	}
	e.want("GET", "/v1/admin/builds?name=fails-1", nil, admin.cred(), http.StatusOK, &page)
	if len(page.Builds) != 1 || page.Builds[0].ID != ids[1] {
		t.Fatalf("by name = %+v", page)
	}
	// The reaper: a running build whose lease expired is retried once, then
	// failed; a queued build nobody took is pushed again.
	row, err := e.q.GetBuild(context.Background(), ids[0])
	if err != nil {
		t.Fatal(err)
	}
	cancel() // no worker may take the retried build
	<-done
	for attempt, want := range []string{"queued", "failed"} {
		if _, err := e.pool.Exec(context.Background(), `UPDATE template_builds SET status = 'running', attempts = $2, worker = 'cp-dead/w0', lease_expires_at = now() - interval '1 second' WHERE id = $1`, row.ID, attempt+1); err != nil {
			t.Fatal(err)
		}
		if err := e.builds.ReapOnce(context.Background()); err != nil {
			t.Fatal(err)
		}
		got, _ := e.q.GetBuild(context.Background(), row.ID)
		if got.Status != want || !strings.Contains(got.ErrorMessage, "stopped renewing its lease") {
			t.Fatalf("after reaping attempt %d: %s %q", attempt+1, got.Status, got.ErrorMessage)
		}
	}
	// Failed again, by the reaper this time, after the worker's own failure.
	rows := e.auditLogs(admin.cred(), "scope=platform&resource_id="+row.ID, 50)
	if got := types(rows); !slices.Equal(got, []string{"template.build_started", "template.build_failed", "template.build_failed"}) ||
		rows[0].Actor.ID != "build-reaper" || rows[0].Status != "error" || !strings.Contains(fmt.Sprint(rows[0].Metadata["error"]), "not retried again") {
		t.Fatalf("reaped build rows %+v", rows)
	}
}

// TestBuildSandboxesOutsideTeamLimit: a build's own sandbox needs no room
// under its team's running-sandbox limit and takes none, and it gets the
// build's disk_mb (larger than its template's).
func TestBuildSandboxesOutsideTeamLimit(t *testing.T) {
	e := newEnv(t, func(o *envOpts) { o.limits = service.Limits{MaxRunningPerTeam: 1} })
	admin := e.signup("admin@example.com")
	a := auth.AuthContext{Method: auth.MethodJWT, UserID: admin.User.ID, UserEmail: admin.User.Email, TeamID: admin.Team.ID, Role: admin.Team.Role}
	first := e.createSandbox(admin.cred(), nil)
	e.wantErr("POST", "/v1/sandboxes", nil, admin.cred(), 429, "sandbox_limit", "")
	for i, disk := range []int{0, 2048} {
		sb, err := e.svc.CreateSandbox(context.Background(), a, service.CreateSandboxInput{Template: "minimal",
			Build: &service.BuildPlacement{BuildID: fmt.Sprintf("bld-limit-%d", i), PerHost: 2, DiskMB: disk}})
		if err != nil {
			t.Fatalf("build sandbox %d with the team at its limit: %v", i, err)
		}
		if want := max(int32(disk), 1024); sb.Status != "running" || sb.DiskMB != want {
			t.Fatalf("build sandbox %d = %+v, want running with %d MiB", i, sb, want)
		}
	}
	// The two build sandboxes do not count: one user sandbox fits again.
	e.want("DELETE", sbPath(first.ID), nil, admin.cred(), http.StatusNoContent, nil)
	e.createSandbox(admin.cred(), nil)
	e.wantErr("POST", "/v1/sandboxes", nil, admin.cred(), 429, "sandbox_limit", "")
}
