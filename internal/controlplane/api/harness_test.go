package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/bcrypt"

	"github.com/wrenn-dev/wrenn/internal/agent/sandbox/sandboxtest"
	"github.com/wrenn-dev/wrenn/internal/controlplane/agenttest"
	"github.com/wrenn-dev/wrenn/internal/controlplane/audit"
	"github.com/wrenn-dev/wrenn/internal/controlplane/auth"
	"github.com/wrenn-dev/wrenn/internal/controlplane/auth/oauth"
	"github.com/wrenn-dev/wrenn/internal/controlplane/auth/oauth/githubtest"
	"github.com/wrenn-dev/wrenn/internal/controlplane/builds"
	"github.com/wrenn-dev/wrenn/internal/controlplane/channels"
	"github.com/wrenn-dev/wrenn/internal/controlplane/hosts"
	"github.com/wrenn-dev/wrenn/internal/controlplane/metrics"
	"github.com/wrenn-dev/wrenn/internal/controlplane/proxy/proxyurl"
	"github.com/wrenn-dev/wrenn/internal/controlplane/reconciler"
	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
	"github.com/wrenn-dev/wrenn/internal/db"
	"github.com/wrenn-dev/wrenn/internal/testenv"
)

type exchange struct {
	method, path string
	status       int
	body         string
}

// env is a control plane on real PostgreSQL talking to an in-process agent
// over real Connect RPC.
type env struct {
	t      testing.TB
	srv    *httptest.Server
	svc    *service.Service
	rec    *reconciler.Reconciler
	pool   *pgxpool.Pool
	q      *db.Queries
	agent  *agenttest.Agent
	logs   *testenv.SyncBuffer
	builds *builds.Service
	// rdb is the Redis of the OAuth flows (envOpts.github).
	rdb *redis.Client

	mu        sync.Mutex
	exchanges []exchange
}

type envOpts struct {
	limits      service.Limits
	rateLimiter RateLimiter
	maxUpload   int64
	// realAgent serves the host from a real agent with real envd processes
	// (sandboxtest.StartAgent) instead of the in-memory one.
	realAgent bool
	// dbURL, when set, is the (empty) database to use instead of a fresh
	// one on the shared test cluster.
	dbURL string
	// diskLimit is the agent's per-sandbox disk (agenttest.Agent.SetDiskLimit).
	diskLimit int64
	// agent configures the in-memory agent before it starts.
	agent func(*agenttest.Agent)
	// github, when set, configures sign-in with GitHub against this fake;
	// oauthNow is the state cookies' clock (nil: time.Now).
	github        *githubtest.Server
	oauthNow      func() time.Time
	secureCookies bool
	// noAudit runs without the audit trail (the benchmarks' baseline).
	noAudit bool
	// channels, when set, turns notification channels on.
	channels *channelOpts
	// builds, when set, serves template builds with this config on a
	// Redis database of its own; the workers are not started.
	builds *builds.Config
}

type channelOpts struct {
	allowPrivate bool
	testLimiter  channels.Limiter
}

const testSecret = "test-secret-test-secret-test-secret!"

func newEnv(t testing.TB, opt ...func(*envOpts)) *env {
	t.Helper()
	o := envOpts{limits: service.Limits{MaxRunningPerTeam: 5}, maxUpload: 8 << 20}
	for _, f := range opt {
		f(&o)
	}
	var pool *pgxpool.Pool
	if o.dbURL != "" {
		pool = testenv.MigratedPoolAt(t, o.dbURL)
	} else {
		pool, _ = testenv.MigratedPool(t)
	}
	q := db.New(pool)
	var agentOpts []func(*agenttest.Agent)
	if o.agent != nil {
		agentOpts = append(agentOpts, o.agent)
	}
	agent := agenttest.Serve(t, agentOpts...)
	agent.SetDiskLimit(o.diskLimit)
	addr := agent.Address()
	if o.realAgent {
		addr = sandboxtest.StartAgent(t)
	}
	if _, err := q.UpsertHost(context.Background(), db.UpsertHostParams{ID: "host-test", Name: "test", Address: addr, Status: "online", Vmm: "test"}); err != nil {
		t.Fatalf("register host: %v", err)
	}
	if _, err := q.HeartbeatHost(context.Background(), db.HeartbeatHostParams{ID: "host-test"}); err != nil {
		t.Fatalf("host heartbeat: %v", err)
	}
	logs := &testenv.SyncBuffer{}
	logger := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	tokens, err := auth.NewTokens(testSecret, time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	al := audit.New()
	if o.noAudit {
		al = audit.Disabled()
	}
	states := service.NewAuditedStates(pool, al, logger)
	svc, err := service.New(service.Deps{Pool: pool, States: states, Audit: al, Tokens: tokens, Passwords: auth.Passwords{Cost: bcrypt.MinCost}, Limits: o.limits, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	// The server's address is known before it starts: OAuth redirects to it.
	srv := httptest.NewUnstartedServer(nil)
	t.Cleanup(srv.Close)
	var chans *channels.Service
	if o.channels != nil {
		chans = newChannels(t, pool, *o.channels, logger)
	}
	var flows *service.OAuth
	var rdb *redis.Client
	if o.github != nil {
		flows, rdb = testOAuth(t, svc, o, "http://"+srv.Listener.Addr().String())
	}
	var bs *builds.Service
	if o.builds != nil {
		ropts, err := redis.ParseURL(testenv.RedisURL(t))
		if err != nil {
			t.Fatal(err)
		}
		brdb := redis.NewClient(ropts)
		t.Cleanup(func() { brdb.Close() })
		bs = builds.New(pool, brdb, svc, al, *o.builds, logger)
	}
	names, err := proxyurl.New("", "", []byte(testSecret), nil)
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Deps{Logger: logger, Service: svc, HostUserAuth: svc, Stats: metrics.NewReader(pool, nil), RateLimiter: o.rateLimiter, MaxBodyBytes: 64 << 10, MaxUploadBytes: o.maxUpload,
		OAuth: flows, SecureCookies: o.secureCookies, Channels: chans, Builds: bs, ProxyNames: names})
	if err != nil {
		t.Fatal(err)
	}
	srv.Config.Handler = specCheckedUnlessBench(t, s)
	srv.Start()
	rec := reconciler.New(pool, states, hosts.NewPool(q, nil), reconciler.Config{Samples: metrics.NewSampleStore(pool)}, logger)
	return &env{t: t, srv: srv, svc: svc, rec: rec, pool: pool, q: q, agent: agent, logs: logs, rdb: rdb, builds: bs}
}

// testOAuth is sign-in with GitHub against o.github for a control plane at
// publicURL, whose own / is the dashboard.
func testOAuth(t testing.TB, svc *service.Service, o envOpts, publicURL string) (*service.OAuth, *redis.Client) {
	t.Helper()
	ropts, err := redis.ParseURL(testenv.RedisURL(t))
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(ropts)
	t.Cleanup(func() { _ = rdb.Close() })
	gh, err := oauth.NewGitHub(oauth.GitHubConfig{ClientID: githubtest.ClientID, ClientSecret: githubtest.ClientSecret,
		RedirectURL: publicURL + "/v1/auth/oauth/github/callback", BaseURL: o.github.URL, APIURL: o.github.URL})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := oauth.NewRegistry(gh)
	if err != nil {
		t.Fatal(err)
	}
	flows, err := service.NewOAuth(svc, service.OAuthConfig{Providers: reg, States: oauth.NewStateSigner(testSecret, o.oauthNow),
		Store: oauth.NewStore(rdb), DashboardURL: publicURL + "/"})
	if err != nil {
		t.Fatal(err)
	}
	return flows, rdb
}

// specCheckedUnlessBench checks every response of a test against the
// OpenAPI spec (see specChecked); benchmarks measure the API alone.
func specCheckedUnlessBench(tb testing.TB, h http.Handler) http.Handler {
	if _, bench := tb.(*testing.B); bench {
		return h
	}
	return specChecked(tb, h)
}

// cred is how a request authenticates: a Bearer JWT, an API key, or a
// browser session cookie with (or without) its CSRF header.
type cred struct {
	jwt, key     string
	cookie, csrf string
}

func (c cred) apply(r *http.Request) {
	if c.cookie != "" {
		r.AddCookie(&http.Cookie{Name: SessionCookie, Value: c.cookie})
	}
	if c.csrf != "" {
		r.Header.Set(CSRFHeader, c.csrf)
	}
	if c.jwt != "" {
		r.Header.Set("Authorization", "Bearer "+c.jwt)
	}
	if c.key != "" {
		r.Header.Set("X-API-Key", c.key)
	}
}

// do sends a request; body may be nil, a string (sent raw) or a value
// (sent as JSON).
func (e *env) do(method, path string, body any, c cred) (int, []byte) {
	e.t.Helper()
	return e.send(e.request(method, path, body, c))
}

// request builds what do sends.
func (e *env) request(method, path string, body any, c cred) *http.Request {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			e.t.Fatal(err)
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, e.srv.URL+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	c.apply(req)
	return req
}

func (e *env) send(req *http.Request) (int, []byte) {
	e.t.Helper()
	resp, b := e.sendResp(req)
	return resp.StatusCode, b
}

// sendResp is send that also returns the response (its body read).
func (e *env) sendResp(req *http.Request) (*http.Response, []byte) {
	e.t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", req.Method, req.URL.Path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatalf("read body: %v", err)
	}
	e.mu.Lock()
	e.exchanges = append(e.exchanges, exchange{method: req.Method, path: req.URL.Path, status: resp.StatusCode, body: string(b)})
	e.mu.Unlock()
	// 503 (try again) and 507 (the sandbox's disk is full) are answers the
	// client can act on; any other 5xx is a failure of the platform.
	if resp.StatusCode >= 500 && resp.StatusCode != http.StatusServiceUnavailable && resp.StatusCode != http.StatusInsufficientStorage {
		e.t.Errorf("%s %s answered %d: %s", req.Method, req.URL.Path, resp.StatusCode, b)
	}
	return resp, b
}

// want asserts the status and decodes the body into out (if not nil).
func (e *env) want(method, path string, body any, c cred, status int, out any) []byte {
	e.t.Helper()
	got, b := e.do(method, path, body, c)
	if got != status {
		e.t.Fatalf("%s %s = %d, want %d: %s", method, path, got, status, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			e.t.Fatalf("%s %s: decode %s: %v", method, path, b, err)
		}
	}
	return b
}

type apiErr struct {
	Error struct {
		Code, Message, Field string
	} `json:"error"`
}

// wantErr asserts an error status, code (if not empty) and field (if not empty).
func (e *env) wantErr(method, path string, body any, c cred, status int, code, field string) {
	e.t.Helper()
	var ae apiErr
	e.want(method, path, body, c, status, &ae)
	if ae.Error.Message == "" || (code != "" && ae.Error.Code != code) || (field != "" && ae.Error.Field != field) {
		e.t.Fatalf("%s %s: error %+v, want code %q field %q", method, path, ae.Error, code, field)
	}
}

type session struct {
	Token string `json:"token"`
	User  struct {
		ID      string `json:"id"`
		Email   string `json:"email"`
		IsAdmin bool   `json:"is_admin"`
	} `json:"user"`
	Team struct {
		ID   string `json:"id"`
		Role string `json:"role"`
	} `json:"team"`
}

func (s session) cred() cred { return cred{jwt: s.Token} }

const testPassword = "correct horse battery"

func (e *env) signup(email string) session {
	e.t.Helper()
	var s session
	e.want("POST", "/v1/auth/signup", map[string]string{"email": email, "password": testPassword, "name": "T " + email}, cred{}, http.StatusCreated, &s)
	return s
}

// apiKey creates a key in the session's current team.
func (e *env) apiKey(s session, name string) (key, id string) {
	e.t.Helper()
	var k struct{ Key, ID string }
	e.want("POST", "/v1/api-keys", map[string]string{"name": name}, s.cred(), http.StatusCreated, &k)
	return k.Key, k.ID
}

type sandboxResp struct {
	ID           string            `json:"id"`
	TeamID       string            `json:"team_id"`
	HostID       string            `json:"host_id"`
	Status       string            `json:"status"`
	Template     string            `json:"template"`
	VCPUs        int               `json:"vcpus"`
	MemoryMB     int               `json:"memory_mb"`
	TimeoutSec   int               `json:"timeout_sec"`
	Metadata     map[string]string `json:"metadata"`
	CreatedBy    string            `json:"created_by"`
	ErrorMessage string            `json:"error_message"`
	LastActiveAt *time.Time        `json:"last_active_at"`
}

func (e *env) createSandbox(c cred, body any) sandboxResp {
	e.t.Helper()
	var sb sandboxResp
	e.want("POST", "/v1/sandboxes", body, c, http.StatusCreated, &sb)
	return sb
}

// join adds a user to a team with a role through the API (as the owner).
func (e *env) join(owner session, teamID string, member session, role string) {
	e.t.Helper()
	e.want("POST", "/v1/teams/"+teamID+"/members", map[string]string{"email": member.User.Email, "role": role}, owner.cred(), http.StatusCreated, nil)
}

// switchTo returns a session of member in teamID.
func (e *env) switchTo(s session, teamID string) session {
	e.t.Helper()
	var out session
	e.want("POST", "/v1/auth/switch-team", map[string]string{"team_id": teamID}, s.cred(), http.StatusOK, &out)
	return out
}

func sbPath(id string, rest ...string) string {
	return fmt.Sprintf("/v1/sandboxes/%s%s", id, strings.Join(rest, ""))
}
