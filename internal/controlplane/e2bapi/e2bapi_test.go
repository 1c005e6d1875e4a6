package e2bapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/wrenn-dev/wrenn/internal/controlplane/agenttest"
	"github.com/wrenn-dev/wrenn/internal/controlplane/api"
	"github.com/wrenn-dev/wrenn/internal/controlplane/audit"
	"github.com/wrenn-dev/wrenn/internal/controlplane/auth"
	"github.com/wrenn-dev/wrenn/internal/controlplane/e2bapi"
	"github.com/wrenn-dev/wrenn/internal/controlplane/proxy/proxyurl"
	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
	"github.com/wrenn-dev/wrenn/internal/db"
	"github.com/wrenn-dev/wrenn/internal/envdwire"
	"github.com/wrenn-dev/wrenn/internal/testenv"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

// env is the control plane (Wrenn's API and the E2B routes on one router)
// on real PostgreSQL, with the in-memory agent over real Connect.
type env struct {
	t *testing.T
	// forwarded records what header routing handed to the proxy.
	forwarded chan forwarded
	url       string
	svc       *service.Service
	agent     *agenttest.Agent
	q         *db.Queries
}

func newEnv(t *testing.T) *env {
	t.Helper()
	pool, _ := testenv.MigratedPool(t)
	q := db.New(pool)
	agent := agenttest.Serve(t)
	ctx := context.Background()
	if _, err := q.UpsertHost(ctx, db.UpsertHostParams{ID: "host-test", Name: "test", Address: agent.Address(), Status: "online", Vmm: "test"}); err != nil {
		t.Fatal(err)
	}
	if _, err := q.HeartbeatHost(ctx, db.HeartbeatHostParams{ID: "host-test"}); err != nil {
		t.Fatal(err)
	}
	logger := slog.New(slog.DiscardHandler)
	tokens, err := auth.NewTokens("test-secret-test-secret-test-secret!", time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	al := audit.New()
	svc, err := service.New(service.Deps{Pool: pool, States: service.NewAuditedStates(pool, al, logger), Audit: al, Tokens: tokens,
		Passwords: auth.Passwords{Cost: bcrypt.MinCost}, Limits: service.Limits{MaxRunningPerTeam: 10}, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	h, err := api.New(api.Deps{Logger: logger, Service: svc})
	if err != nil {
		t.Fatal(err)
	}
	fw := make(chan forwarded, 16)
	names, err := proxyurl.New("sandbox.test", "", []byte("test-secret-test-secret-test-secret!"), nil)
	if err != nil {
		t.Fatal(err)
	}
	e2b := e2bapi.New(e2bapi.Deps{Logger: logger, Service: svc, Names: names,
		Forward: func(w http.ResponseWriter, r *http.Request, team, id string, port int, envd bool) {
			fw <- forwarded{team: team, id: id, port: port, envd: envd, path: r.URL.Path}
			w.WriteHeader(http.StatusTeapot)
		}})
	e2b.Mount(h.Router())
	srv := httptest.NewServer(e2b.Wrap(h))
	t.Cleanup(srv.Close)
	return &env{t: t, url: srv.URL, svc: svc, agent: agent, q: q, forwarded: fw}
}

// port is the control plane's port (sandbox hostnames carry it).
func (e *env) port() string {
	u, _ := url.Parse(e.url)
	return u.Port()
}

// in is e reporting to t (a subtest).
func (e *env) in(t *testing.T) *env {
	c := *e
	c.t = t
	return &c
}

// team signs a user up through Wrenn's API and returns a Wrenn API key of
// their team and the session token.
func (e *env) team(email string) (key, jwt string) {
	e.t.Helper()
	var s struct{ Token string }
	e.call("POST", "/v1/auth/signup", map[string]string{"email": email, "password": "correct horse battery", "name": "T"}, map[string]string{}, 201, &s)
	var k struct{ Key string }
	e.call("POST", "/v1/api-keys", map[string]string{"name": "e2b"}, map[string]string{"Authorization": "Bearer " + s.Token}, 201, &k)
	return k.Key, s.Token
}

// do sends a request; body is marshalled unless it is a string.
func (e *env) do(method, path string, body any, hdr map[string]string) (*http.Response, []byte) {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		raw, _ := json.Marshal(b)
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, e.url+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 500 {
		e.t.Errorf("%s %s = %d: %s", method, path, resp.StatusCode, b)
	}
	return resp, b
}

func (e *env) call(method, path string, body any, hdr map[string]string, want int, out any) http.Header {
	e.t.Helper()
	resp, b := e.do(method, path, body, hdr)
	if resp.StatusCode != want {
		e.t.Fatalf("%s %s = %d, want %d: %s", method, path, resp.StatusCode, want, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			e.t.Fatalf("%s %s: decode %s: %v", method, path, b, err)
		}
	}
	return resp.Header
}

// wantErr checks E2B's error format: {"code": <status>, "message": "..."}.
func (e *env) wantErr(method, path string, body any, hdr map[string]string, want int) {
	e.t.Helper()
	resp, b := e.do(method, path, body, hdr)
	var eb struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	}
	if resp.StatusCode != want || json.Unmarshal(b, &eb) != nil || eb.Code != want || eb.Message == "" {
		e.t.Fatalf("%s %s = %d %s, want %d in E2B's error format", method, path, resp.StatusCode, b, want)
	}
}

type created struct {
	TemplateID      string  `json:"templateID"`
	SandboxID       string  `json:"sandboxID"`
	ClientID        string  `json:"clientID"`
	EnvdVersion     string  `json:"envdVersion"`
	EnvdAccessToken string  `json:"envdAccessToken"`
	Domain          *string `json:"domain"`
}

type detail struct {
	SandboxID       string            `json:"sandboxID"`
	TemplateID      string            `json:"templateID"`
	State           string            `json:"state"`
	StartedAt       time.Time         `json:"startedAt"`
	EndAt           *time.Time        `json:"endAt"`
	CPUCount        int               `json:"cpuCount"`
	MemoryMB        int               `json:"memoryMB"`
	DiskSizeMB      int               `json:"diskSizeMB"`
	EnvdVersion     string            `json:"envdVersion"`
	EnvdAccessToken string            `json:"envdAccessToken"`
	Metadata        map[string]string `json:"metadata"`
	Lifecycle       struct {
		OnTimeout string `json:"onTimeout"`
	} `json:"lifecycle"`
}

func key(k string) map[string]string { return map[string]string{"X-API-KEY": k} }

func TestCreateAndGet(t *testing.T) {
	e := newEnv(t)
	k, jwt := e.team("a@example.com")
	for _, path := range []string{"/v2/sandboxes", "/sandboxes"} {
		t.Run(path, func(t *testing.T) {
			e := e.in(t)
			var c created
			before := time.Now()
			e.call("POST", path, map[string]any{"templateID": "minimal", "timeout": 60, "metadata": map[string]string{"user": "ann"},
				"envVars": map[string]string{"GREETING": "hi"}, "secure": true, "mcp": nil, "autoResume": map[string]bool{"enabled": false}}, key(k), 201, &c)
			if c.TemplateID != "minimal" || c.SandboxID == "" || c.EnvdVersion != envdwire.E2BVersion || c.ClientID != "host-test" || c.Domain == nil || *c.Domain != "sandbox.test:"+e.port() {
				t.Fatalf("create answered %+v", c)
			}
			// The control plane minted envd's token and gave it to the agent.
			req := e.agent.Created(c.SandboxID)
			if len(c.EnvdAccessToken) != 64 || req == nil || req.GetEnvdAccessToken() != c.EnvdAccessToken {
				t.Fatalf("envd token %q, the agent got %v", c.EnvdAccessToken, req)
			}
			if req.GetEnvVars()["GREETING"] != "hi" {
				t.Fatalf("env vars at the agent: %v", req.GetEnvVars())
			}
			var d detail
			e.call("GET", "/sandboxes/"+c.SandboxID, nil, key(k), 200, &d)
			if d.State != "running" || d.CPUCount < 1 || d.MemoryMB < 128 || d.Metadata["user"] != "ann" || d.EnvdAccessToken != c.EnvdAccessToken || d.Lifecycle.OnTimeout != "kill" {
				t.Fatalf("detail %+v", d)
			}
			if d.EndAt == nil || d.EndAt.Before(before.Add(59*time.Second)) || d.EndAt.After(time.Now().Add(61*time.Second)) {
				t.Fatalf("endAt %v, want about 60 s after the create", d.EndAt)
			}
			// Wrenn's own API never shows the token.
			_, b := e.do("GET", "/v1/sandboxes/"+c.SandboxID, nil, map[string]string{"Authorization": "Bearer " + jwt})
			if bytes.Contains(b, []byte(c.EnvdAccessToken)) {
				t.Fatalf("Wrenn's API shows the envd token: %s", b)
			}
		})
	}
}

func TestErrors(t *testing.T) {
	e := newEnv(t)
	k, _ := e.team("a@example.com")
	other, _ := e.team("b@example.com")
	var c created
	e.call("POST", "/v2/sandboxes", map[string]any{"templateID": "minimal"}, key(k), 201, &c)
	tests := []struct {
		name, method, path string
		body               any
		hdr                map[string]string
		want               int
	}{
		{"no key", "GET", "/sandboxes/" + c.SandboxID, nil, nil, 401},
		{"bad key", "GET", "/sandboxes/" + c.SandboxID, nil, key("wrn_notakey"), 401},
		{"lower-case header", "GET", "/sandboxes/" + c.SandboxID, nil, map[string]string{"x-api-key": "bad"}, 401},
		{"unknown template", "POST", "/v2/sandboxes", map[string]any{"templateID": "nosuch"}, key(k), 400},
		{"no template", "POST", "/v2/sandboxes", map[string]any{}, key(k), 400},
		{"timeout out of range", "POST", "/v2/sandboxes", map[string]any{"templateID": "minimal", "timeout": 0}, key(k), 400},
		{"malformed body", "POST", "/v2/sandboxes", "{", key(k), 400},
		{"another team's sandbox", "GET", "/sandboxes/" + c.SandboxID, nil, key(other), 404},
		{"another team's kill", "DELETE", "/sandboxes/" + c.SandboxID, nil, key(other), 404},
		{"unknown sandbox", "GET", "/sandboxes/sb-doesnotexist", nil, key(k), 404},
		{"bad state filter", "GET", "/v2/sandboxes?state=stopped", nil, key(k), 400},
		{"bad limit", "GET", "/v2/sandboxes?limit=0", nil, key(k), 400},
		{"bad next token", "GET", "/v2/sandboxes?nextToken=zz", nil, key(k), 400},
		{"timeout without a value", "POST", "/sandboxes/" + c.SandboxID + "/timeout", map[string]any{}, key(k), 400},
		{"resume of a running sandbox", "POST", "/sandboxes/" + c.SandboxID + "/resume", map[string]any{"timeout": 30}, key(k), 409},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { e.in(t).wantErr(tc.method, tc.path, tc.body, tc.hdr, tc.want) })
	}
	// The other team's attempt left the sandbox running.
	if st := e.agent.State(c.SandboxID); st != pb.SandboxState_SANDBOX_STATE_RUNNING {
		t.Fatalf("sandbox is %v", st)
	}
}

func TestKill(t *testing.T) {
	e := newEnv(t)
	k, _ := e.team("a@example.com")
	var c created
	e.call("POST", "/v2/sandboxes", map[string]any{"templateID": "minimal"}, key(k), 201, &c)
	e.call("DELETE", "/sandboxes/"+c.SandboxID, nil, key(k), 204, nil)
	if e.agent.Has(c.SandboxID) {
		t.Fatal("the agent still has the killed sandbox")
	}
	// A killed sandbox is gone for E2B's API, as in E2B.
	for _, tc := range []struct{ method, path string }{
		{"DELETE", "/sandboxes/" + c.SandboxID},
		{"GET", "/sandboxes/" + c.SandboxID},
		{"POST", "/v2/sandboxes/" + c.SandboxID + "/connect"},
		{"POST", "/sandboxes/" + c.SandboxID + "/pause"},
		{"POST", "/sandboxes/" + c.SandboxID + "/timeout"},
	} {
		e.wantErr(tc.method, tc.path, map[string]any{"timeout": 10}, key(k), 404)
	}
}

func TestPauseConnect(t *testing.T) {
	e := newEnv(t)
	k, _ := e.team("a@example.com")
	var c created
	e.call("POST", "/v2/sandboxes", map[string]any{"templateID": "minimal", "timeout": 30}, key(k), 201, &c)
	id := c.SandboxID
	e.call("POST", "/sandboxes/"+id+"/pause", map[string]any{}, key(k), 204, nil)
	e.wantErr("POST", "/sandboxes/"+id+"/pause", map[string]any{}, key(k), 409)
	var d detail
	e.call("GET", "/sandboxes/"+id, nil, key(k), 200, &d)
	if d.State != "paused" || d.EndAt != nil {
		t.Fatalf("paused sandbox: %+v (a pause stops the end-of-life timer)", d)
	}
	var m []map[string]any
	e.call("GET", "/sandboxes/"+id+"/metrics", nil, key(k), 200, &m)
	if len(m) != 0 {
		t.Fatalf("a paused sandbox's metrics: %v", m)
	}
	for _, tc := range []struct {
		path string
		want int
	}{
		{"/v2/sandboxes/" + id + "/connect", 201}, // resumed
		{"/v2/sandboxes/" + id + "/connect", 200}, // already running
		{"/sandboxes/" + id + "/connect", 200},
	} {
		var got created
		e.call("POST", tc.path, map[string]any{"timeout": 120}, key(k), tc.want, &got)
		if got.SandboxID != id || got.EnvdAccessToken != c.EnvdAccessToken {
			t.Fatalf("connect answered %+v; the token must survive the pause", got)
		}
	}
	if st := e.agent.State(id); st != pb.SandboxState_SANDBOX_STATE_RUNNING {
		t.Fatalf("after connect the agent has the sandbox %v", st)
	}
	e.call("GET", "/sandboxes/"+id, nil, key(k), 200, &d)
	if d.State != "running" || d.EndAt == nil || time.Until(*d.EndAt) < 110*time.Second {
		t.Fatalf("connected sandbox: %+v, want running with about 120 s to live", d)
	}
	// A connect asking for less never shortens the life; setTimeout does.
	e.call("POST", "/v2/sandboxes/"+id+"/connect", map[string]any{"timeout": 5}, key(k), 200, nil)
	e.call("POST", "/sandboxes/"+id+"/refreshes", map[string]any{"duration": 5}, key(k), 204, nil)
	e.call("GET", "/sandboxes/"+id, nil, key(k), 200, &d)
	if time.Until(*d.EndAt) < 100*time.Second {
		t.Fatalf("connect or refresh shortened the life to %v", d.EndAt)
	}
	e.call("POST", "/sandboxes/"+id+"/timeout", map[string]any{"timeout": 5}, key(k), 204, nil)
	e.call("GET", "/sandboxes/"+id, nil, key(k), 200, &d)
	if left := time.Until(*d.EndAt); left > 6*time.Second || left < 3*time.Second {
		t.Fatalf("after setTimeout(5 s) the sandbox has %v left", left)
	}
	// The deprecated resume takes a paused sandbox too.
	e.call("POST", "/sandboxes/"+id+"/pause", nil, key(k), 204, nil)
	e.call("POST", "/sandboxes/"+id+"/resume", map[string]any{"timeout": 60, "autoPause": false}, key(k), 201, nil)
	e.call("GET", "/sandboxes/"+id+"/metrics", nil, key(k), 200, &m)
}

func TestEndOfLife(t *testing.T) {
	e := newEnv(t)
	k, _ := e.team("a@example.com")
	tests := []struct {
		name      string
		autoPause bool
		state     pb.SandboxState
		status    string // on E2B's GET
	}{
		{"killed", false, pb.SandboxState_SANDBOX_STATE_UNSPECIFIED, ""},
		{"paused", true, pb.SandboxState_SANDBOX_STATE_PAUSED, "paused"},
	}
	ids := map[string]string{}
	for _, tc := range tests {
		var c created
		e.call("POST", "/v2/sandboxes", map[string]any{"templateID": "minimal", "timeout": 1, "autoPause": tc.autoPause}, key(k), 201, &c)
		ids[tc.name] = c.SandboxID
	}
	var long created
	e.call("POST", "/v2/sandboxes", map[string]any{"templateID": "minimal", "timeout": 3600}, key(k), 201, &long)
	time.Sleep(1100 * time.Millisecond)
	n, err := e.svc.EndSandboxes(context.Background())
	if err != nil || n != 2 {
		t.Fatalf("EndSandboxes = %d, %v; want the 2 ended ones", n, err)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := e.in(t)
			id := ids[tc.name]
			if st := e.agent.State(id); st != tc.state {
				t.Fatalf("agent state %v, want %v", st, tc.state)
			}
			if tc.status == "" {
				e.wantErr("GET", "/sandboxes/"+id, nil, key(k), 404)
				return
			}
			var d detail
			e.call("GET", "/sandboxes/"+id, nil, key(k), 200, &d)
			if d.State != tc.status {
				t.Fatalf("state %q, want %q", d.State, tc.status)
			}
		})
	}
	if st := e.agent.State(long.SandboxID); st != pb.SandboxState_SANDBOX_STATE_RUNNING {
		t.Fatalf("the sandbox with an hour to live is %v", st)
	}
}

func TestList(t *testing.T) {
	e := newEnv(t)
	k, _ := e.team("a@example.com")
	other, _ := e.team("b@example.com")
	e.call("POST", "/v2/sandboxes", map[string]any{"templateID": "minimal", "metadata": map[string]string{"app": "x y&z"}}, key(other), 201, nil)
	made := map[string]string{}
	for _, app := range []string{"x y&z", "x y&z", "other"} {
		var c created
		e.call("POST", "/v2/sandboxes", map[string]any{"templateID": "minimal", "metadata": map[string]string{"app": app}}, key(k), 201, &c)
		made[c.SandboxID] = app
	}
	var paused string
	for id, app := range made {
		if app == "other" {
			paused = id
		}
	}
	e.call("POST", "/sandboxes/"+paused+"/pause", nil, key(k), 204, nil)
	// The SDK's encoding: pairs percent-encoded, joined as a query string,
	// and that string encoded once more as the parameter's value.
	sdkMetadata := func(k, v string) string {
		return url.QueryEscape(url.Values{url.QueryEscape(k): {url.QueryEscape(v)}}.Encode())
	}
	tests := []struct {
		name  string
		query string
		want  int
	}{
		{"all of the team's", "", 3},
		{"running", "?state=running", 2},
		{"paused", "?state=paused", 1},
		{"both", "?state=running,paused", 3},
		{"metadata", "?metadata=" + sdkMetadata("app", "x y&z"), 2},
		{"metadata and state", "?metadata=" + sdkMetadata("app", "other") + "&state=running", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := e.in(t)
			var got []detail
			e.call("GET", "/v2/sandboxes"+tc.query, nil, key(k), 200, &got)
			if len(got) != tc.want {
				t.Fatalf("%d sandboxes, want %d: %+v", len(got), tc.want, got)
			}
			for _, d := range got {
				if _, ok := made[d.SandboxID]; !ok || d.EnvdAccessToken != "" {
					t.Fatalf("listed %+v: not the team's, or shows a token", d)
				}
			}
		})
	}
	var v1 []detail
	e.call("GET", "/sandboxes", nil, key(k), 200, &v1)
	if len(v1) != 2 {
		t.Fatalf("the v1 list shows %d sandboxes, want the 2 running", len(v1))
	}
	// Pages of one, chained by X-Next-Token.
	seen := map[string]bool{}
	next := ""
	for range 4 {
		var page []detail
		h := e.call("GET", "/v2/sandboxes?limit=1&nextToken="+url.QueryEscape(next), nil, key(k), 200, &page)
		for _, d := range page {
			seen[d.SandboxID] = true
		}
		if next = h.Get("X-Next-Token"); next == "" {
			break
		}
	}
	if len(seen) != 3 {
		t.Fatalf("paging saw %d sandboxes, want 3", len(seen))
	}
}

func TestTemplates(t *testing.T) {
	e := newEnv(t)
	k, _ := e.team("a@example.com")
	var ts []struct {
		TemplateID  string   `json:"templateID"`
		Aliases     []string `json:"aliases"`
		EnvdVersion string   `json:"envdVersion"`
		CPUCount    int      `json:"cpuCount"`
	}
	e.call("GET", "/templates", nil, key(k), 200, &ts)
	found := false
	for _, tp := range ts {
		found = found || (tp.TemplateID == "minimal" && tp.EnvdVersion == envdwire.E2BVersion && tp.CPUCount > 0)
	}
	if !found {
		t.Fatalf("templates %+v lack minimal", ts)
	}
}

type forwarded struct {
	team, id, path string
	port           int
	envd           bool
}

func TestHeaderRouting(t *testing.T) {
	e := newEnv(t)
	k, jwt := e.team("a@example.com")
	other, _ := e.team("b@example.com")
	var me struct {
		Team struct{ ID string } `json:"team"`
	}
	e.call("GET", "/v1/me", nil, map[string]string{"Authorization": "Bearer " + jwt}, 200, &me)
	var c created
	e.call("POST", "/v2/sandboxes", map[string]any{"templateID": "minimal"}, key(k), 201, &c)
	var c2 created
	e.call("POST", "/v2/sandboxes", map[string]any{"templateID": "minimal"}, key(other), 201, &c2)
	route := func(port, tok, apiKey string) map[string]string {
		h := map[string]string{"E2b-Sandbox-Id": c.SandboxID, "E2b-Sandbox-Port": port}
		if tok != "" {
			h["X-Access-Token"] = tok
		}
		if apiKey != "" {
			h["X-API-Key"] = apiKey
		}
		return h
	}
	tests := []struct {
		name, method, path string
		hdr                map[string]string
		want               int // 418: forwarded
		envd               bool
	}{
		{"envd RPC with the token", "POST", "/process.Process/Start", route("49983", c.EnvdAccessToken, ""), 418, true},
		{"envd files with the token", "GET", "/files", route("49983", c.EnvdAccessToken, ""), 418, true},
		{"envd health with the token", "GET", "/health", route("49983", c.EnvdAccessToken, ""), 418, true},
		{"envd without a token", "POST", "/process.Process/Start", route("49983", "", ""), 401, false},
		{"envd with an API key only", "POST", "/process.Process/Start", route("49983", "", k), 401, false},
		{"envd with another sandbox's token", "POST", "/process.Process/Start", route("49983", c2.EnvdAccessToken, ""), 401, false},
		{"envd /init", "POST", "/init", route("49983", c.EnvdAccessToken, ""), 403, false},
		{"envd's Wrenn-only paths", "POST", "/wrenn/poweroff", route("49983", c.EnvdAccessToken, ""), 403, false},
		{"a dot segment towards /init", "POST", "/process.Process/../init", route("49983", c.EnvdAccessToken, ""), 403, false},
		{"another port with the owner's key", "GET", "/index.html", route("8080", "", k), 418, false},
		{"another port without a key", "GET", "/index.html", route("8080", c.EnvdAccessToken, ""), 401, false},
		{"another port with a bad key", "GET", "/", route("8080", "", "wrn_bad"), 401, false},
		{"not a port", "GET", "/", route("http", c.EnvdAccessToken, ""), 400, false},
		{"port out of range", "GET", "/", route("70000", c.EnvdAccessToken, ""), 400, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := e.in(t)
			req, _ := http.NewRequest(tc.method, e.url+tc.path, nil)
			for k, v := range tc.hdr {
				req.Header.Set(k, v)
			}
			// Go's client would clean the dot segment; send it as is.
			req.URL.Opaque = tc.path
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("%s %s = %d, want %d: %s", tc.method, tc.path, resp.StatusCode, tc.want, b)
			}
			if tc.want != 418 {
				var eb struct{ Code int }
				if json.Unmarshal(b, &eb) != nil || eb.Code != tc.want {
					t.Fatalf("answer %s is not in E2B's error format", b)
				}
				return
			}
			f := <-e.forwarded
			if f.team != me.Team.ID || f.id != c.SandboxID || f.path != tc.path || f.envd != tc.envd {
				t.Fatalf("forwarded %+v, want team %s sandbox %s path %s envd %v", f, me.Team.ID, c.SandboxID, tc.path, tc.envd)
			}
		})
	}
	// Without the header, requests reach the API.
	e.call("GET", "/sandboxes/"+c.SandboxID, nil, key(k), 200, nil)
}
