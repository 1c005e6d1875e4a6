package api

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wrenn-dev/wrenn/internal/controlplane/agenttest"
	"github.com/wrenn-dev/wrenn/internal/controlplane/auth"
	"github.com/wrenn-dev/wrenn/internal/controlplane/hostauth"
	"github.com/wrenn-dev/wrenn/internal/controlplane/hosts"
	"github.com/wrenn-dev/wrenn/internal/controlplane/ids"
	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
	"github.com/wrenn-dev/wrenn/internal/db"
	"github.com/wrenn-dev/wrenn/internal/testenv"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

const hostsTestSecret = "hosts-test-secret-0123456789abcdefghij"

type hostsEnv struct {
	url    string
	q      *db.Queries
	states *service.States
	tokens *auth.Tokens
}

func newHostsEnv(t *testing.T) *hostsEnv {
	t.Helper()
	pool, _ := testenv.MigratedPool(t)
	opts, err := redis.ParseURL(testenv.RedisURL(t))
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opts)
	t.Cleanup(func() { rdb.Close() })
	q := db.New(pool)
	tokens, err := auth.NewTokens(hostsTestSecret, time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	hp := hosts.NewPool(q, nil)
	svc, err := service.New(service.Deps{Pool: pool, Hosts: hp, Scheduler: hosts.NewRoundRobin(hosts.Overcommit{}), Tokens: tokens})
	if err != nil {
		t.Fatal(err)
	}
	hostTokens, err := hostauth.NewHostTokens(hostauth.DeriveHostKey(hostsTestSecret), 7*24*time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	s := mustNew(t, Deps{Logger: logger, Service: svc, Hosts: hostauth.New(pool, rdb, hostTokens, hp, hostauth.Config{}, logger)})
	srv := httptest.NewServer(specChecked(t, s))
	t.Cleanup(srv.Close)
	return &hostsEnv{url: srv.URL, q: q, states: service.NewStates(pool, nil), tokens: tokens}
}

// member creates a user in team with role and returns its id.
func (e *hostsEnv) member(t *testing.T, teamID, role string) string {
	t.Helper()
	ctx := context.Background()
	u, err := e.q.CreateUser(ctx, db.CreateUserParams{ID: ids.New(ids.User), Email: ids.New("") + "@example.test", Name: "u"})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.q.AddMember(ctx, db.AddMemberParams{UserID: u.ID, TeamID: teamID, Role: role, IsDefault: true}); err != nil {
		t.Fatal(err)
	}
	return u.ID
}

// user creates a user in team with role and returns a session token.
func (e *hostsEnv) user(t *testing.T, teamID, role string) string {
	t.Helper()
	tok, _, err := e.tokens.Issue(e.member(t, teamID, role), teamID, 0)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func (e *hostsEnv) team(t *testing.T, byoc bool) string {
	t.Helper()
	ctx := context.Background()
	tm, err := e.q.CreateTeam(ctx, db.CreateTeamParams{ID: ids.New(ids.Team), Name: "t"})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.q.SetTeamBYOC(ctx, db.SetTeamBYOCParams{ID: tm.ID, ByocEnabled: byoc}); err != nil {
		t.Fatal(err)
	}
	return tm.ID
}

func (e *hostsEnv) apiKey(t *testing.T, teamID string) string {
	t.Helper()
	plain, prefix, hash, err := auth.NewAPIKey()
	if err != nil {
		t.Fatal(err)
	}
	// A key works only while its creator is a member of the team.
	creator := e.member(t, teamID, "member")
	if _, err := e.q.CreateAPIKey(context.Background(), db.CreateAPIKeyParams{ID: ids.New(ids.APIKey), TeamID: teamID, Name: "k", KeyHash: hash, KeyPrefix: prefix, CreatedBy: &creator}); err != nil {
		t.Fatal(err)
	}
	return plain
}

// cred is how a request authenticates: "Bearer x" or "key:wrn_...".
func (e *hostsEnv) do(t *testing.T, method, path, cred string, body any) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, e.url+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if k, ok := strings.CutPrefix(cred, "key:"); ok {
		req.Header.Set("X-API-Key", k)
	} else if cred != "" {
		req.Header.Set("Authorization", "Bearer "+cred)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &out); err != nil {
			t.Fatalf("%s %s: body %q is not JSON: %v", method, path, raw, err)
		}
	}
	return resp.StatusCode, out
}

func str(m map[string]any, path ...string) string {
	var cur any = m
	for _, p := range path {
		mm, _ := cur.(map[string]any)
		cur = mm[p]
	}
	s, _ := cur.(string)
	return s
}

func TestHostsAuthorizationMatrix(t *testing.T) {
	e := newHostsEnv(t)
	adminTeam := e.team(t, false)
	admin := e.user(t, adminTeam, "owner") // first user: platform admin
	byoc := e.team(t, true)
	byocOwner, byocAdmin, byocMember := e.user(t, byoc, "owner"), e.user(t, byoc, "admin"), e.user(t, byoc, "member")
	plain := e.team(t, false)
	plainOwner := e.user(t, plain, "owner")
	key := "key:" + e.apiKey(t, byoc)

	st, shared := e.do(t, "POST", "/v1/hosts", admin, map[string]any{"name": "shared-1", "shared": true})
	if st != 201 {
		t.Fatalf("admin creates shared host: %d %v", st, shared)
	}
	sharedID := str(shared, "host", "id")
	st, own := e.do(t, "POST", "/v1/hosts", byocOwner, map[string]any{"name": "own-1"})
	if st != 201 || str(own, "host", "team_id") != byoc {
		t.Fatalf("owner creates byoc host: %d %v", st, own)
	}
	ownID := str(own, "host", "id")
	// A host JWT, valid for some host, must never pass as a user.
	reg := str(own, "registration_token")
	st, creds := e.do(t, "POST", "/v1/hosts/register", "", map[string]any{"token": reg, "address": "127.0.0.1:1", "specs": map[string]any{"cpu_count": 1}})
	if st != 200 {
		t.Fatalf("register: %d %v", st, creds)
	}
	hostJWT := str(creds, "token")

	cases := []struct {
		name   string
		method string
		path   string
		cred   string
		body   any
		want   int
	}{
		{"no credentials list", "GET", "/v1/hosts", "", nil, 401},
		{"host jwt list", "GET", "/v1/hosts", hostJWT, nil, 401},
		{"api key list", "GET", "/v1/hosts", key, nil, 403},
		{"garbage bearer", "GET", "/v1/hosts", "nope", nil, 401},
		{"member list", "GET", "/v1/hosts", byocMember, nil, 200},
		{"owner shared create", "POST", "/v1/hosts", byocOwner, map[string]any{"name": "x", "shared": true}, 403},
		{"admin role byoc create", "POST", "/v1/hosts", byocAdmin, map[string]any{"name": "x"}, 201},
		{"member byoc create", "POST", "/v1/hosts", byocMember, map[string]any{"name": "x"}, 403},
		{"non-byoc owner create", "POST", "/v1/hosts", plainOwner, map[string]any{"name": "x"}, 403},
		{"api key create", "POST", "/v1/hosts", key, map[string]any{"name": "x"}, 403},
		{"host jwt create", "POST", "/v1/hosts", hostJWT, map[string]any{"name": "x"}, 401},
		{"unknown field", "POST", "/v1/hosts", byocOwner, map[string]any{"name": "x", "extra": 1}, 400},
		{"missing name", "POST", "/v1/hosts", byocOwner, map[string]any{}, 400},
		{"member gets own team host", "GET", "/v1/hosts/" + ownID, byocMember, nil, 200},
		{"other team gets host", "GET", "/v1/hosts/" + ownID, plainOwner, nil, 404},
		{"owner gets shared host", "GET", "/v1/hosts/" + sharedID, byocOwner, nil, 404},
		{"admin gets team host", "GET", "/v1/hosts/" + ownID, admin, nil, 200},
		{"bad id", "GET", "/v1/hosts/host-nope", admin, nil, 404},
		{"member regenerates", "POST", "/v1/hosts/" + ownID + "/token", byocMember, nil, 403},
		{"other team regenerates", "POST", "/v1/hosts/" + ownID + "/token", plainOwner, nil, 404},
		{"owner regenerates shared", "POST", "/v1/hosts/" + sharedID + "/token", byocOwner, nil, 404},
		{"admin regenerates shared", "POST", "/v1/hosts/" + sharedID + "/token", admin, nil, 200},
		{"member deletes", "DELETE", "/v1/hosts/" + ownID, byocMember, nil, 403},
		{"other team deletes", "DELETE", "/v1/hosts/" + ownID, plainOwner, nil, 404},
		{"bad force", "DELETE", "/v1/hosts/" + ownID + "?force=maybe", byocOwner, nil, 400},
		{"user jwt heartbeat", "POST", "/v1/hosts/" + ownID + "/heartbeat", byocOwner, nil, 401},
		{"api key heartbeat", "POST", "/v1/hosts/" + ownID + "/heartbeat", key, nil, 401},
		{"host heartbeat for another host", "POST", "/v1/hosts/" + sharedID + "/heartbeat", hostJWT, nil, 403},
		{"host heartbeat", "POST", "/v1/hosts/" + ownID + "/heartbeat", hostJWT, nil, 200},
		{"user jwt on refresh body", "POST", "/v1/hosts/auth/refresh", "", map[string]any{"refresh_token": byocOwner}, 401},
		{"malformed refresh", "POST", "/v1/hosts/auth/refresh", "", "not an object", 401},
		{"register garbage token", "POST", "/v1/hosts/register", "", map[string]any{"token": "x", "address": "127.0.0.1:1"}, 401},
		{"register garbage token and bad address", "POST", "/v1/hosts/register", "", map[string]any{"token": "x", "address": "nope"}, 401},
		{"register bad address", "POST", "/v1/hosts/register", "", map[string]any{"token": hostauth.RegistrationTokenPrefix + strings.Repeat("A", 43), "address": "nope"}, 400},
		{"register unknown field", "POST", "/v1/hosts/register", "", map[string]any{"token": "x", "address": "a:1", "extra": true}, 400},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st, body := e.do(t, c.method, c.path, c.cred, c.body)
			if st != c.want {
				t.Fatalf("%s %s = %d %v, want %d", c.method, c.path, st, body, c.want)
			}
			if st >= 400 && str(body, "error", "code") == "" {
				t.Fatalf("error without code: %v", body)
			}
		})
	}

	// Listings are scoped: admins see every host, a team its own.
	count := func(cred string) int {
		st, body := e.do(t, "GET", "/v1/hosts", cred, nil)
		if st != 200 {
			t.Fatalf("list: %d", st)
		}
		hs, _ := body["hosts"].([]any)
		return len(hs)
	}
	if n := count(admin); n != 3 {
		t.Fatalf("admin sees %d hosts, want 3", n)
	}
	if n := count(byocMember); n != 2 {
		t.Fatalf("byoc member sees %d hosts, want 2", n)
	}
	if n := count(plainOwner); n != 0 {
		t.Fatalf("other team sees %d hosts, want 0", n)
	}
}

func TestHostRegistrationFlowOverHTTP(t *testing.T) {
	e := newHostsEnv(t)
	admin := e.user(t, e.team(t, false), "owner")
	st, h := e.do(t, "POST", "/v1/hosts", admin, map[string]any{"name": "h", "shared": true})
	if st != 201 {
		t.Fatalf("create: %d %v", st, h)
	}
	id, reg := str(h, "host", "id"), str(h, "registration_token")
	body := map[string]any{"token": reg, "address": "127.0.0.1:7000", "specs": map[string]any{"vmm": "qemu", "cpu_count": 2, "memory_mb": 2048}}
	st, c1 := e.do(t, "POST", "/v1/hosts/register", "", body)
	if st != 200 || str(c1, "host_id") != id {
		t.Fatalf("register: %d %v", st, c1)
	}
	// Reused token: 401, nothing changes.
	body["address"] = "127.0.0.1:7001"
	if st, b := e.do(t, "POST", "/v1/hosts/register", "", body); st != 401 || str(b, "error", "code") != "invalid_registration_token" {
		t.Fatalf("reused token: %d %v", st, b)
	}
	if st, got := e.do(t, "GET", "/v1/hosts/"+id, admin, nil); st != 200 || str(got, "address") != "127.0.0.1:7000" || str(got, "status") != "online" {
		t.Fatalf("host after reuse attempt: %d %v", st, got)
	}
	st, c2 := e.do(t, "POST", "/v1/hosts/auth/refresh", "", map[string]any{"refresh_token": str(c1, "refresh_token")})
	if st != 200 || str(c2, "refresh_token") == str(c1, "refresh_token") {
		t.Fatalf("refresh: %d %v", st, c2)
	}
	if st, _ := e.do(t, "POST", "/v1/hosts/"+id+"/heartbeat", str(c2, "token"), nil); st != 200 {
		t.Fatalf("heartbeat with refreshed jwt: %d", st)
	}
	// Replaying the first refresh token revokes the family.
	if st, b := e.do(t, "POST", "/v1/hosts/auth/refresh", "", map[string]any{"refresh_token": str(c1, "refresh_token")}); st != 401 || str(b, "error", "code") != "refresh_token_reused" {
		t.Fatalf("reuse: %d %v", st, b)
	}
	if st, _ := e.do(t, "POST", "/v1/hosts/auth/refresh", "", map[string]any{"refresh_token": str(c2, "refresh_token")}); st != 401 {
		t.Fatalf("family member after reuse: %d", st)
	}
}

func TestDeleteHostForcedAndUnforced(t *testing.T) {
	e := newHostsEnv(t)
	ctx := context.Background()
	adminTeam := e.team(t, false)
	admin := e.user(t, adminTeam, "owner")
	agent := agenttest.Serve(t)
	st, h := e.do(t, "POST", "/v1/hosts", admin, map[string]any{"name": "h", "shared": true})
	if st != 201 {
		t.Fatalf("create: %d %v", st, h)
	}
	id := str(h, "host", "id")
	st, creds := e.do(t, "POST", "/v1/hosts/register", "", map[string]any{"token": str(h, "registration_token"), "address": agent.Address()})
	if st != 200 {
		t.Fatalf("register: %d %v", st, creds)
	}
	var sbs []string
	for _, status := range []string{"running", "paused"} {
		sb, err := e.q.InsertSandbox(ctx, db.InsertSandboxParams{ID: ids.New(ids.Sandbox), TeamID: adminTeam, HostID: &id,
			Template: "minimal", Vcpus: 1, MemoryMb: 256, DiskMb: 1024, Metadata: json.RawMessage(`{}`)})
		if err != nil {
			t.Fatal(err)
		}
		if _, ok, err := e.states.Change(ctx, service.Change{SandboxID: sb.ID, From: []service.Status{service.StatusPending},
			To: service.Status(status), Actor: service.ActorReconciler, Reason: "test set-up"}); err != nil || !ok {
			t.Fatal(ok, err)
		}
		agent.Put(sb.ID, pb.SandboxState_SANDBOX_STATE_RUNNING)
		sbs = append(sbs, sb.ID)
	}
	slices.Sort(sbs)

	st, body := e.do(t, "DELETE", "/v1/hosts/"+id, admin, nil)
	if st != 409 || str(body, "error", "code") != "host_has_sandboxes" {
		t.Fatalf("unforced delete: %d %v", st, body)
	}
	var listed []string
	for _, s := range body["sandboxes"].([]any) {
		listed = append(listed, s.(map[string]any)["id"].(string))
	}
	slices.Sort(listed)
	if !slices.Equal(listed, sbs) {
		t.Fatalf("409 lists %v, want %v", listed, sbs)
	}
	if len(agent.Destroyed()) != 0 {
		t.Fatal("unforced delete destroyed sandboxes")
	}
	if st, _ := e.do(t, "GET", "/v1/hosts/"+id, admin, nil); st != 200 {
		t.Fatalf("host gone after unforced delete: %d", st)
	}

	st, body = e.do(t, "DELETE", "/v1/hosts/"+id+"?force=true", admin, nil)
	if st != 200 {
		t.Fatalf("forced delete: %d %v", st, body)
	}
	if got := agent.Destroyed(); !slices.Equal(got, sbs) {
		t.Fatalf("agent destroyed %v, want %v", got, sbs)
	}
	for _, sb := range sbs {
		row, err := e.q.GetSandbox(ctx, db.GetSandboxParams{ID: sb, TeamID: adminTeam})
		if err != nil || row.Status != "stopped" || row.HostID != nil {
			t.Fatalf("sandbox after forced delete = %s host %v (%v)", row.Status, row.HostID, err)
		}
	}
	if st, _ := e.do(t, "GET", "/v1/hosts/"+id, admin, nil); st != 404 {
		t.Fatalf("host after forced delete: %d", st)
	}
	// The deleted host's agent is told so: 404 on heartbeat.
	if st, b := e.do(t, "POST", "/v1/hosts/"+id+"/heartbeat", str(creds, "token"), nil); st != 404 {
		t.Fatalf("heartbeat of deleted host: %d %v", st, b)
	}
	// An empty host deletes without force.
	st, h2 := e.do(t, "POST", "/v1/hosts", admin, map[string]any{"name": "empty", "shared": true})
	if st != 201 {
		t.Fatal(st)
	}
	if st, b := e.do(t, "DELETE", "/v1/hosts/"+str(h2, "host", "id"), admin, nil); st != 200 {
		t.Fatalf("delete empty host: %d %v", st, b)
	}
}
