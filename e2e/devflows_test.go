package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/controlplane/channels/webhookverify"
)

// webhookHit is one POST the test's webhook receiver got.
type webhookHit struct {
	eventID, eventType, resourceID string
	signed                         bool
}

// webhookReceiver is a loopback receiver that checks each POST's
// X-WRENN-SIGNATURE the way docs/webhooks.md tells receivers to.
type webhookReceiver struct {
	srv    *httptest.Server
	mu     sync.Mutex
	secret string
	hits   []webhookHit
}

func newWebhookReceiver(t *testing.T) *webhookReceiver {
	r := &webhookReceiver{}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, err := io.ReadAll(req.Body)
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		var ev struct {
			ID       string `json:"id"`
			Type     string `json:"type"`
			Resource struct {
				ID string `json:"id"`
			} `json:"resource"`
		}
		_ = json.Unmarshal(body, &ev)
		r.mu.Lock()
		defer r.mu.Unlock()
		r.hits = append(r.hits, webhookHit{eventID: req.Header.Get("X-Wrenn-Event-Id"), eventType: req.Header.Get("X-Wrenn-Event-Type"),
			resourceID: ev.Resource.ID, signed: r.secret != "" && ev.ID == req.Header.Get("X-Wrenn-Event-Id") && ev.Type == req.Header.Get("X-Wrenn-Event-Type") &&
				webhookverify.Valid(req.Header.Get("X-WRENN-SIGNATURE"), body, r.secret, time.Now())})
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *webhookReceiver) setSecret(s string) {
	r.mu.Lock()
	r.secret = s
	r.mu.Unlock()
}

// typesFor is the types of the distinct events about one resource in the
// order they first arrived (delivery is at least once: a repeat has the
// same event id), and the hits that failed the signature check.
func (r *webhookReceiver) typesFor(resourceID string) (types []string, unsigned []webhookHit) {
	r.mu.Lock()
	defer r.mu.Unlock()
	seen := map[string]bool{}
	for _, h := range r.hits {
		if h.resourceID != resourceID {
			continue
		}
		if !h.signed {
			unsigned = append(unsigned, h)
		}
		if !seen[h.eventID] {
			seen[h.eventID] = true
			types = append(types, h.eventType)
		}
	}
	return types, unsigned
}

type templateView struct {
	Name    string  `json:"name"`
	Kind    string  `json:"kind"`
	DiskMB  int     `json:"disk_mb"`
	BuildID *string `json:"build_id"`
}

// TestDevChannelsAndBuilds drives `wrenn dev` as the admin its banner
// prints: a webhook channel on sandbox.* to a receiver on loopback (dev
// lets channels reach it, WRENN_CHANNELS_ALLOW_PRIVATE), a template build
// with a larger disk followed through its live log, and a sandbox from the
// built template, paused, resumed and destroyed: the receiver gets each of
// its events, signed, in order.
func TestDevChannelsAndBuilds(t *testing.T) {
	src := requirePlatform(t)
	ds := newDevSetup(t, src, "flows", "wdf", 234)
	dev := startDev(t, ds.env, ds.dataDir, ds.port)
	anon := newClient(dev.base)
	m := bannerLogin.FindStringSubmatch(dev.p.stdout())
	var login struct {
		Token string `json:"token"`
	}
	anon.must(t, http.MethodPost, "/v1/auth/login", map[string]string{"email": m[1], "password": m[2]}, &login, http.StatusOK)
	admin := anon.withSession(login.Token)

	// The channel: created without a secret, so one is made and shown once.
	recv := newWebhookReceiver(t)
	var ch struct {
		ID     string `json:"id"`
		Secret string `json:"secret"`
	}
	admin.must(t, http.MethodPost, "/v1/channels", map[string]any{"name": "e2e-hook", "provider": "webhook",
		"config": map[string]any{"url": recv.srv.URL + "/hook"}, "events": []string{"sandbox.*"}}, &ch, http.StatusCreated)
	if !strings.HasPrefix(ch.Secret, "whsec_") {
		t.Fatalf("channel create answered secret %q, want a generated whsec_ one", ch.Secret)
	}
	recv.setSecret(ch.Secret)
	if _, b := admin.do(t, http.MethodGet, "/v1/channels/"+ch.ID, nil); strings.Contains(string(b), ch.Secret) {
		t.Fatalf("GET of the channel shows its secret: %s", b)
	}

	// A build whose template has twice the base's disk, its log followed live.
	var tpls struct {
		Templates []templateView `json:"templates"`
	}
	admin.must(t, http.MethodGet, "/v1/templates", nil, &tpls, http.StatusOK)
	i := slices.IndexFunc(tpls.Templates, func(v templateView) bool { return v.Name == "minimal" })
	if i < 0 {
		t.Fatalf("no minimal template: %+v", tpls.Templates)
	}
	baseDisk := tpls.Templates[i].DiskMB
	var bv buildView
	admin.must(t, http.MethodPost, "/v1/admin/builds", map[string]any{"name": "flows-app", "disk_mb": 2 * baseDisk,
		"recipe": []string{"mkdir -p /opt/app", "echo built-in-dev > /opt/app/marker", "echo step-says-$((6*7))"}}, &bv, http.StatusAccepted)
	log := followBuildLog(t, admin, bv.ID)
	for _, want := range []string{"event: build", "event: step", `"data":"step-says-42\n"`, "event: end\n" + `data: {"type":"end","index":0,"status":"succeeded"}`} {
		if !strings.Contains(log, want) {
			t.Fatalf("live build log lacks %q:\n%s", want, log)
		}
	}
	admin.must(t, http.MethodGet, "/v1/admin/builds/"+bv.ID, nil, &bv, http.StatusOK)
	if bv.Status != "succeeded" || bv.Kind != "image" || bv.TemplateID == nil || bv.Progress.Done != 3 {
		t.Fatalf("build = %+v", bv)
	}
	admin.must(t, http.MethodGet, "/v1/templates", nil, &tpls, http.StatusOK)
	i = slices.IndexFunc(tpls.Templates, func(v templateView) bool { return v.Name == "flows-app" })
	if i < 0 || tpls.Templates[i].DiskMB != 2*baseDisk || tpls.Templates[i].BuildID == nil || *tpls.Templates[i].BuildID != bv.ID {
		t.Fatalf("templates after the build: %+v", tpls.Templates)
	}

	// A sandbox from it sees the file and the larger disk, then goes
	// through pause, resume and destroy.
	var sb sandbox
	admin.must(t, http.MethodPost, "/v1/sandboxes", map[string]any{"template": "flows-app"}, &sb, http.StatusCreated)
	if r := admin.sh(t, sb.ID, "cat /opt/app/marker"); r.ExitCode != 0 || r.Stdout != "built-in-dev\n" {
		t.Fatalf("marker in a sandbox from the built template: %+v", r)
	}
	r := admin.sh(t, sb.ID, "df -k / | tail -n 1 | awk '{print $2}'")
	rootKiB, err := strconv.Atoi(strings.TrimSpace(r.Stdout))
	// ext4 keeps a few percent for itself: more than 1.5x the base's disk
	// is only reachable through the larger disk.
	if err != nil || rootKiB < baseDisk*1024*3/2 {
		t.Fatalf("root filesystem %q KiB (%v), want near %d MiB", r.Stdout, err, 2*baseDisk)
	}
	t.Logf("root filesystem of a sandbox from the %d MiB template: %d MiB", 2*baseDisk, rootKiB/1024)
	admin.must(t, http.MethodPost, "/v1/sandboxes/"+sb.ID+"/pause", nil, nil, http.StatusOK)
	admin.must(t, http.MethodPost, "/v1/sandboxes/"+sb.ID+"/resume", map[string]any{}, nil, http.StatusOK)
	admin.must(t, http.MethodDelete, "/v1/sandboxes/"+sb.ID, nil, nil, http.StatusNoContent, http.StatusOK)

	want := []string{"sandbox.created", "sandbox.running", "sandbox.paused", "sandbox.resumed", "sandbox.destroyed"}
	eventually(t, 30*time.Second, "the webhook receives the sandbox's events", func() (bool, string) {
		got, _ := recv.typesFor(sb.ID)
		return len(got) >= len(want), fmt.Sprint(got)
	})
	got, unsigned := recv.typesFor(sb.ID)
	if !slices.Equal(got, want) {
		t.Errorf("events of %s in arrival order: %v, want %v", sb.ID, got, want)
	}
	if len(unsigned) > 0 {
		t.Errorf("deliveries without a valid signature: %+v", unsigned)
	}
	// The build's own sandbox is the admin team's too: its events came.
	if got, _ := recv.typesFor(*bv.SandboxID); !slices.Contains(got, "sandbox.destroyed") {
		t.Errorf("events of the build sandbox %s: %v, want its destroy among them", *bv.SandboxID, got)
	}
	// The outcomes are recorded just after the receiver answered.
	eventually(t, 10*time.Second, "every delivery recorded delivered", func() (bool, string) {
		var deliveries struct {
			Deliveries []struct {
				Status string `json:"status"`
			} `json:"deliveries"`
		}
		admin.must(t, http.MethodGet, "/v1/channels/"+ch.ID+"/deliveries", nil, &deliveries, http.StatusOK)
		for _, d := range deliveries.Deliveries {
			if d.Status != "delivered" {
				return false, fmt.Sprintf("%+v", deliveries.Deliveries)
			}
		}
		return len(deliveries.Deliveries) > 0, "none"
	})
	stopDev(t, dev, ds.dataDir, ds.wrennDir, ds.prefix)
}

// followBuildLog reads a build's SSE log until the stream ends (it closes
// after the build's end event) and returns it.
func followBuildLog(t *testing.T, c client, buildID string) string {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, c.base+"/v1/admin/builds/"+buildID+"/logs", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header = c.hdr.Clone()
	resp, err := (&http.Client{Timeout: 5 * time.Minute}).Do(req)
	if err != nil {
		t.Fatalf("build log: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("build log: %d %s %s", resp.StatusCode, resp.Header.Get("Content-Type"), b)
	}
	var log strings.Builder
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		log.WriteString(sc.Text() + "\n")
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("build log after %q: %v", log.String(), err)
	}
	return log.String()
}
