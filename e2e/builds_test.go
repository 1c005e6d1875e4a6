package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"
)

type buildView struct {
	ID         string  `json:"id"`
	Status     string  `json:"status"`
	Kind       string  `json:"kind"`
	Error      string  `json:"error"`
	Attempts   int     `json:"attempts"`
	SandboxID  *string `json:"sandbox_id"`
	TemplateID *string `json:"template_id"`
	Progress   struct {
		Done, Total int
	} `json:"progress"`
	Steps []struct {
		Status   string `json:"status"`
		ExitCode *int   `json:"exit_code"`
		Stdout   string `json:"stdout"`
		Stderr   string `json:"stderr"`
		Error    string `json:"error"`
		// For the benchmark's phases.
		StartedAt  *time.Time `json:"started_at"`
		DurationMS int64      `json:"duration_ms"`
	} `json:"steps"`
	StartedAt  *time.Time `json:"started_at"`
	FinishedAt *time.Time `json:"finished_at"`
}

// buildPlatform is one control plane (restartable) and one agent.
type buildPlatform struct {
	t     testing.TB
	bin   string
	env   []string
	base  string
	cp    *proc
	admin client
	// adminEmail signed up first (a platform admin); its password is
	// e2ePassword(adminEmail).
	adminEmail string
	agent      *e2eAgent
	cpStarts   int
}

func (p *buildPlatform) startCP() {
	p.t.Helper()
	p.cpStarts++
	cp := startProc(p.t, fmt.Sprintf("wrenn-server-%d", p.cpStarts), p.env, p.bin, "server")
	p.cp = cp
	p.t.Cleanup(func() {
		if cp.running() {
			p.destroyAll()
			cp.stop(syscall.SIGTERM, 30*time.Second)
		}
		if p.t.Failed() {
			p.t.Logf("logs of control plane %s:\n%s", cp.name, cp.logs())
		}
	})
	eventually(p.t, time.Minute, "the control plane answers /health", func() (bool, string) {
		if !cp.running() {
			p.t.Fatalf("wrenn server exited\n%s", cp.logs())
		}
		resp, err := http.Get(p.base + "/health")
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, resp.Status
	})
}

// destroyAll destroys the sandboxes left at the end while the control
// plane and the agent still run; it only logs what fails.
func (p *buildPlatform) destroyAll() {
	list := func() []sandbox {
		req, _ := http.NewRequest(http.MethodGet, p.base+"/v1/sandboxes?status=running,paused,missing,pending", nil)
		req.Header = p.admin.hdr.Clone()
		resp, err := p.admin.hc.Do(req)
		if err != nil {
			p.t.Logf("cleanup: list sandboxes: %v", err)
			return nil
		}
		defer resp.Body.Close()
		var l struct {
			Sandboxes []sandbox `json:"sandboxes"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&l)
		return l.Sandboxes
	}
	for _, sb := range list() {
		req, _ := http.NewRequest(http.MethodDelete, p.base+"/v1/sandboxes/"+sb.ID, nil)
		req.Header = p.admin.hdr.Clone()
		if resp, err := p.admin.hc.Do(req); err == nil {
			resp.Body.Close()
		}
	}
}

func startBuildPlatform(t testing.TB) *buildPlatform {
	src := requirePlatform(t)
	bin := wrennBin(t)
	dbURL, redisURL := migratedDB(t)
	cpPort := freePort(t)
	p := &buildPlatform{t: t, bin: bin, base: fmt.Sprintf("http://127.0.0.1:%d", cpPort),
		env: childEnv("DATABASE_URL="+dbURL, "REDIS_URL="+redisURL, "WRENN_JWT_SECRET="+randomHex(t, 32),
			fmt.Sprintf("WRENN_CP_LISTEN_ADDR=127.0.0.1:%d", cpPort), "WRENN_RECONCILE_INTERVAL=500ms",
			"WRENN_BUILD_WORKERS=2", "WRENN_BUILDS_PER_HOST=2")}
	p.startCP()
	anon := newClient(p.base)
	p.adminEmail = "e2e-builds-" + randomHex(t, 4) + "@example.com"
	p.admin = anon.withSession(anon.signup(t, p.adminEmail))
	a := &e2eAgent{name: "builds", prefix: fmt.Sprintf("wbd%d-", testID), netRange: fmt.Sprintf("10.234.%d.0/24", testID)}
	a.dir = agentDir(t, src)
	t.Cleanup(func() { scrub(t, a.dir, a.prefix, a.netRange) })
	a.register(t, p.admin, []string{p.base})
	p.agent = a
	eventually(t, time.Minute, "host online", func() (bool, string) {
		var h hostView
		status, b := p.admin.do(t, http.MethodGet, "/v1/hosts/"+a.hostID, nil)
		_ = json.Unmarshal(b, &h)
		return status == http.StatusOK && h.Status == "online", string(b)
	})
	return p
}

func (p *buildPlatform) submit(body map[string]any) buildView {
	p.t.Helper()
	var b buildView
	p.admin.must(p.t, http.MethodPost, "/v1/admin/builds", body, &b, http.StatusAccepted)
	return b
}

func (p *buildPlatform) get(id string) buildView {
	p.t.Helper()
	var b buildView
	p.admin.must(p.t, http.MethodGet, "/v1/admin/builds/"+id, nil, &b, http.StatusOK)
	return b
}

// wait polls a build until cond holds, logging progress now and then.
func (p *buildPlatform) wait(id string, timeout time.Duration, what string, cond func(buildView) bool) buildView {
	p.t.Helper()
	var b buildView
	last := time.Now()
	eventually(p.t, timeout, what, func() (bool, string) {
		b = p.get(id)
		if time.Since(last) > 10*time.Second {
			p.t.Logf("build %s: %s, %d/%d steps", id, b.Status, b.Progress.Done, b.Progress.Total)
			last = time.Now()
		}
		return cond(b), fmt.Sprintf("%+v", b)
	})
	return b
}

func (p *buildPlatform) ended(id string, timeout time.Duration) buildView {
	p.t.Helper()
	return p.wait(id, timeout, "build "+id+" ends", func(b buildView) bool {
		return b.Status == "succeeded" || b.Status == "failed" || b.Status == "cancelled"
	})
}

// sandboxGone: the build sandbox was destroyed, in the database and on the host.
func (p *buildPlatform) sandboxGone(b buildView) {
	p.t.Helper()
	if b.SandboxID == nil {
		p.t.Fatalf("build %s recorded no sandbox", b.ID)
	}
	eventually(p.t, 30*time.Second, "build sandbox destroyed", func() (bool, string) {
		sb := p.admin.getSandbox(p.t, *b.SandboxID)
		return sb.Status == "stopped" && len(p.agent.qemuPIDs()) == p.liveVMs(), fmt.Sprintf("%+v, %d VMMs", sb, len(p.agent.qemuPIDs()))
	})
}

// liveVMs counts the admin's live sandboxes (the only ones on the host).
func (p *buildPlatform) liveVMs() int {
	var list struct {
		Sandboxes []sandbox `json:"sandboxes"`
	}
	p.admin.must(p.t, http.MethodGet, "/v1/sandboxes?status=running,pending", nil, &list, http.StatusOK)
	return len(list.Sandboxes)
}

// TestTemplateBuilds builds templates from recipes on a real agent with
// QEMU VMs: an image template and a snapshot template built at the same
// time by the two workers, their defaults and contents seen by new
// sandboxes, a failing step, a step timeout, a cancel, and a control plane
// killed mid-build whose build is retried by the next one. No recipe
// needs the internet.
func TestTemplateBuilds(t *testing.T) {
	p := startBuildPlatform(t)
	// Live logs, followed from the start of the image build.
	img := p.submit(map[string]any{"name": "app-image", "recipe": []string{
		"mkdir -p /opt/app", "echo built > /opt/app/marker", "ENV GREETING=hello", "WORKDIR /opt/app", "USER user", "echo step-output-$GREETING"}})
	web := p.submit(map[string]any{"name": "web",
		"recipe_text": "# a static site\nmkdir -p /srv\necho hi-from-httpd > /srv/index.html\nSTART busybox httpd -p 8080 -h /srv\n",
		"healthcheck": map[string]any{"cmd": "wget -qO- 127.0.0.1:8080", "interval": "500ms", "retries": 20}})
	events := make(chan string, 256)
	go func() {
		defer close(events)
		req, _ := http.NewRequest(http.MethodGet, p.base+"/v1/admin/builds/"+img.ID+"/logs", nil)
		req.Header = p.admin.hdr.Clone()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return
		}
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			events <- sc.Text()
		}
	}()
	img = p.ended(img.ID, 4*time.Minute)
	web = p.ended(web.ID, 4*time.Minute)
	for _, b := range []buildView{img, web} {
		if b.Status != "succeeded" || b.TemplateID == nil || b.Progress.Done != b.Progress.Total {
			t.Fatalf("build = %+v", b)
		}
		p.sandboxGone(b)
	}
	if img.Kind != "image" || web.Kind != "snapshot" {
		t.Fatalf("kinds: %s %s", img.Kind, web.Kind)
	}
	// The two workers ran them at the same time.
	if !img.StartedAt.Before(*web.FinishedAt) || !web.StartedAt.Before(*img.FinishedAt) {
		t.Fatalf("builds did not overlap: image %v-%v, web %v-%v", img.StartedAt, img.FinishedAt, web.StartedAt, web.FinishedAt)
	}
	var log strings.Builder
	for line := range events {
		log.WriteString(line + "\n")
	}
	for _, want := range []string{"event: build", "event: step", `"data":"step-output-hello\n"`, `event: end` + "\n" + `data: {"type":"end","index":0,"status":"succeeded"}`} {
		if !strings.Contains(log.String(), want) {
			t.Fatalf("live log lacks %q:\n%s", want, log.String())
		}
	}

	var list struct {
		Templates []struct {
			Name, Kind, Scope, Workdir, User string
			BuildID                          *string  `json:"build_id"`
			EnvNames                         []string `json:"env_names"`
		}
	}
	p.admin.must(t, http.MethodGet, "/v1/templates", nil, &list, http.StatusOK)
	seen := map[string]string{}
	for _, tpl := range list.Templates {
		seen[tpl.Name] = tpl.Kind + "/" + tpl.Scope
		if tpl.Name == "app-image" && (tpl.Workdir != "/opt/app" || tpl.User != "user" || len(tpl.EnvNames) != 1 || tpl.BuildID == nil || *tpl.BuildID != img.ID) {
			t.Fatalf("app-image template = %+v", tpl)
		}
	}
	if seen["app-image"] != "image/platform" || seen["web"] != "snapshot/platform" || seen["minimal"] != "image/builtin" {
		t.Fatalf("templates = %v", seen)
	}

	// New sandboxes: the image's file and defaults; the snapshot's server
	// answers without anything being started.
	var fromImage, fromWeb sandbox
	p.admin.must(t, http.MethodPost, "/v1/sandboxes", map[string]any{"template": "app-image"}, &fromImage, http.StatusCreated)
	if r := p.admin.sh(t, fromImage.ID, `cat /opt/app/marker; pwd; id -un; echo "$GREETING"`); r.ExitCode != 0 || r.Stdout != "built\n/opt/app\nuser\nhello\n" {
		t.Fatalf("sandbox from the image template: %+v", r)
	}
	p.admin.must(t, http.MethodPost, "/v1/sandboxes", map[string]any{"template": "web"}, &fromWeb, http.StatusCreated)
	if r := p.admin.sh(t, fromWeb.ID, "wget -qO- 127.0.0.1:8080"); r.ExitCode != 0 || r.Stdout != "hi-from-httpd\n" {
		t.Fatalf("sandbox from the snapshot template: %+v", r)
	}
	// A template in use is not deleted; once its sandbox is gone it is.
	status, b := p.admin.do(t, http.MethodDelete, "/v1/admin/templates/app-image", nil)
	if status != http.StatusConflict || !strings.Contains(string(b), "template_in_use") {
		t.Fatalf("delete a used template = %d %s", status, b)
	}
	p.admin.must(t, http.MethodDelete, "/v1/sandboxes/"+fromImage.ID, nil, nil, http.StatusNoContent)
	p.admin.must(t, http.MethodDelete, "/v1/admin/templates/app-image", nil, nil, http.StatusNoContent)
	p.admin.must(t, http.MethodDelete, "/v1/sandboxes/"+fromWeb.ID, nil, nil, http.StatusNoContent)
	p.admin.must(t, http.MethodDelete, "/v1/admin/templates/web", nil, nil, http.StatusNoContent)
	if status, b := p.admin.do(t, http.MethodPost, "/v1/sandboxes", map[string]any{"template": "app-image"}); status != http.StatusBadRequest {
		t.Fatalf("create from a deleted template = %d %s", status, b)
	}

	// A failing step and a step past its timeout: both builds fail with
	// the step's outcome, later steps do not run, nothing is left.
	failing := p.submit(map[string]any{"name": "fails", "recipe": []string{"echo before", "echo boom >&2; exit 3", "echo never > /never"}})
	slow := p.submit(map[string]any{"name": "slow", "recipe": []string{"RUN --timeout=2s sleep 30", "echo never"}})
	failing, slow = p.ended(failing.ID, 2*time.Minute), p.ended(slow.ID, 2*time.Minute)
	if failing.Status != "failed" || !strings.Contains(failing.Error, "exit code 3: boom") || failing.Steps[1].ExitCode == nil || *failing.Steps[1].ExitCode != 3 ||
		failing.Steps[1].Stderr != "boom\n" || failing.Steps[0].Stdout != "before\n" || failing.Steps[2].Status != "skipped" || failing.TemplateID != nil {
		t.Fatalf("failing build = %+v", failing)
	}
	if slow.Status != "failed" || !strings.Contains(slow.Error, "timed out after 2s") || slow.Steps[1].Status != "skipped" {
		t.Fatalf("slow build = %+v", slow)
	}
	p.sandboxGone(failing)
	p.sandboxGone(slow)

	// Cancel while running: the sandbox is destroyed within seconds.
	long := p.submit(map[string]any{"name": "long", "recipe": []string{"sleep 300"}})
	p.wait(long.ID, 2*time.Minute, "long build runs its step", func(b buildView) bool { return len(b.Steps) == 1 && b.Steps[0].Status == "running" })
	asked := time.Now()
	p.admin.must(t, http.MethodPost, "/v1/admin/builds/"+long.ID+"/cancel", nil, nil, http.StatusAccepted)
	long = p.ended(long.ID, 30*time.Second)
	if long.Status != "cancelled" {
		t.Fatalf("cancelled build = %+v", long)
	}
	p.sandboxGone(long)
	t.Logf("cancel to sandbox destroyed: %s", time.Since(asked).Round(100*time.Millisecond))

	// The control plane killed mid-build: the next one finds the expired
	// lease, destroys the orphaned sandbox and runs the build again.
	killed := p.submit(map[string]any{"name": "survivor", "recipe": []string{"sleep 6", "echo done"}})
	first := p.wait(killed.ID, 2*time.Minute, "build runs its first step", func(b buildView) bool { return len(b.Steps) == 2 && b.Steps[0].Status == "running" })
	p.cp.signal(syscall.SIGKILL)
	p.cp.wait(10 * time.Second)
	p.startCP()
	killed = p.ended(killed.ID, 3*time.Minute)
	if killed.Status != "succeeded" || killed.Attempts != 2 || killed.Steps[1].Stdout != "done\n" {
		t.Fatalf("build after the control plane was killed = %+v", killed)
	}
	if orphan := p.admin.getSandbox(t, *first.SandboxID); orphan.Status != "stopped" || *first.SandboxID == *killed.SandboxID {
		t.Fatalf("first attempt's sandbox %s is %s", *first.SandboxID, orphan.Status)
	}
	p.sandboxGone(killed)
}

// BenchmarkTemplateBuild compares a snapshot-template build with the same
// steps run by hand through the API (exec, a background process, the
// healthcheck polled, POST /v1/snapshots, destroy), in the same run on the
// same agent, one after the other. Run with -benchtime=1x (each iteration
// boots two VMs under TCG).
func BenchmarkTemplateBuild(b *testing.B) {
	p := startBuildPlatform(b)
	steps := []string{"mkdir -p /srv", "echo hi-from-httpd > /srv/index.html"}
	start := "busybox httpd -p 8080 -h /srv"
	health := "wget -qO- 127.0.0.1:8080"
	var (
		built, manual         time.Duration
		boot, stepsT, finishT time.Duration
		n                     int
	)
	for i := 0; b.Loop(); i++ {
		n++
		t0 := time.Now()
		bv := p.submit(map[string]any{"name": fmt.Sprintf("bench-built-%d", i), "recipe": append(append([]string{}, steps...), "START "+start),
			"healthcheck": map[string]any{"cmd": health, "interval": "200ms", "retries": 50}})
		bv = p.ended(bv.ID, 4*time.Minute)
		if bv.Status != "succeeded" {
			b.Fatalf("build = %+v", bv)
		}
		built += time.Since(t0)
		first, last := bv.Steps[0], bv.Steps[len(bv.Steps)-1]
		lastEnd := last.StartedAt.Add(time.Duration(last.DurationMS) * time.Millisecond)
		boot += first.StartedAt.Sub(*bv.StartedAt)
		stepsT += lastEnd.Sub(*first.StartedAt)
		finishT += bv.FinishedAt.Sub(lastEnd)
		p.sandboxGone(bv)

		t0 = time.Now()
		var sb sandbox
		p.admin.must(b, http.MethodPost, "/v1/sandboxes", map[string]any{"template": "minimal"}, &sb, http.StatusCreated)
		for _, st := range steps {
			if r := p.admin.sh(b, sb.ID, st); r.ExitCode != 0 {
				b.Fatalf("%s: %+v", st, r)
			}
		}
		p.admin.must(b, http.MethodPost, "/v1/sandboxes/"+sb.ID+"/exec", map[string]any{"cmd": "/bin/sh", "args": []string{"-c", start}, "background": true}, nil, http.StatusOK)
		for try := 0; p.admin.sh(b, sb.ID, health).ExitCode != 0; try++ {
			if try == 50 {
				b.Fatal("the server never answered")
			}
			time.Sleep(200 * time.Millisecond)
		}
		p.admin.must(b, http.MethodPost, "/v1/snapshots", map[string]any{"sandbox_id": sb.ID, "name": fmt.Sprintf("bench-manual-%d", i)}, nil, http.StatusCreated)
		p.admin.must(b, http.MethodDelete, "/v1/sandboxes/"+sb.ID, nil, nil, http.StatusNoContent)
		manual += time.Since(t0)
	}
	b.ReportMetric(float64(built.Milliseconds())/float64(n), "build-ms/op")
	b.ReportMetric(float64(manual.Milliseconds())/float64(n), "manual-ms/op")
	b.ReportMetric(float64(built)/float64(manual), "build/manual")
	// Where a build's time goes: its sandbox's start, the steps, and the
	// healthcheck, snapshot and sandbox destroy after them.
	b.ReportMetric(float64(boot.Milliseconds())/float64(n), "build-boot-ms/op")
	b.ReportMetric(float64(stepsT.Milliseconds())/float64(n), "build-steps-ms/op")
	b.ReportMetric(float64(finishT.Milliseconds())/float64(n), "build-finish-ms/op")
}
