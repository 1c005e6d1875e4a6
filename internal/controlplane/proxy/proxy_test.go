package proxy

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/wrenn-dev/wrenn/internal/agent/agenterr"
	agentproxy "github.com/wrenn-dev/wrenn/internal/agent/proxy"
	"github.com/wrenn-dev/wrenn/internal/controlplane/auth"
	"github.com/wrenn-dev/wrenn/internal/controlplane/hosts"
	"github.com/wrenn-dev/wrenn/internal/controlplane/ids"
	"github.com/wrenn-dev/wrenn/internal/controlplane/proxy/proxyurl"
	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
	"github.com/wrenn-dev/wrenn/internal/db"
	"github.com/wrenn-dev/wrenn/internal/testenv"
)

// loopGuest is the agent half's view of one sandbox: every port is that
// port on 127.0.0.1 (real servers on loopback play the guest).
type loopGuest struct{ id string }

func (g loopGuest) GuestPort(id string, port uint16) (string, func(), error) {
	if id != g.id {
		return "", nil, agenterr.New(agenterr.ErrNotFound, "no sandbox %s", id)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port))), func() {}, nil
}

func port(t *testing.T, addr string) int {
	_, p, _ := net.SplitHostPort(addr)
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// The control plane half against the real agent half and a guest on
// loopback, with the sandbox, its team, key and host in PostgreSQL:
// what the guest receives, and the answers when the agent is down or
// nothing listens.
func TestProxyThroughAgent(t *testing.T) {
	pool, _ := testenv.MigratedPool(t)
	ctx := context.Background()
	q := db.New(pool)
	tokens, err := auth.NewTokens(strings.Repeat("s", 32), time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	states := service.NewStates(pool, nil)
	hp := hosts.NewPool(q, nil)
	svc, err := service.New(service.Deps{Pool: pool, States: states, Hosts: hp, Tokens: tokens, Passwords: auth.Passwords{Cost: bcrypt.MinCost}})
	if err != nil {
		t.Fatal(err)
	}
	sess, err := svc.Signup(ctx, service.SignupInput{Email: "p@example.com", Password: "correct horse battery"})
	if err != nil {
		t.Fatal(err)
	}
	ac, err := svc.AuthenticateJWT(ctx, sess.Token)
	if err != nil {
		t.Fatal(err)
	}
	key, err := svc.CreateAPIKey(ctx, ac, service.APIKeyInput{Name: "k"})
	if err != nil {
		t.Fatal(err)
	}

	var seen http.Header
	guest := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = r.Header.Clone()
		io.WriteString(w, "guest:"+r.Host+r.URL.RequestURI())
	}))
	t.Cleanup(guest.Close)
	id := ids.New(ids.Sandbox)
	agent := httptest.NewServer(agentproxy.New(loopGuest{id}, agentproxy.Config{DialRetry: 200 * time.Millisecond}))
	t.Cleanup(agent.Close)
	// An address nothing listens on: the agent that is down.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	downAddr := ln.Addr().String()
	ln.Close()

	for _, h := range []struct{ id, addr string }{{"host-up", strings.TrimPrefix(agent.URL, "http://")}, {"host-down", downAddr}} {
		if _, err := q.UpsertHost(ctx, db.UpsertHostParams{ID: h.id, Name: h.id, Address: h.addr, Status: hosts.StatusOnline, Vmm: "test"}); err != nil {
			t.Fatal(err)
		}
	}
	run := func(sbID, hostID string) {
		t.Helper()
		if _, err := q.InsertSandbox(ctx, db.InsertSandboxParams{ID: sbID, TeamID: ac.TeamID, HostID: &hostID, Template: "minimal",
			Vcpus: 1, MemoryMb: 256, DiskMb: 1024, Metadata: []byte("{}"), OpID: "op", OpOwner: "test", OpTtlSeconds: 60}); err != nil {
			t.Fatal(err)
		}
		if _, ok, err := states.Change(ctx, service.Change{SandboxID: sbID, From: []service.Status{service.StatusPending}, To: service.StatusRunning,
			Actor: service.ActorReconciler, Reason: "test"}); err != nil || !ok {
			t.Fatalf("sandbox running: %v %v", ok, err)
		}
	}
	run(id, "host-up")
	downID := ids.New(ids.Sandbox)
	run(downID, "host-down")

	names, err := proxyurl.New("", "", []byte(strings.Repeat("s", 32)), nil)
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(Config{Service: svc, States: states, Hosts: hp, Names: names, Tokens: tokens})
	if err != nil {
		t.Fatal(err)
	}
	cp := httptest.NewServer(p.Wrap(http.NotFoundHandler()))
	t.Cleanup(cp.Close)

	get := func(host string, hdr http.Header) (int, string, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, cp.URL+"/a%2Fb?x=1", nil)
		req.Host = host
		for k, v := range hdr {
			req.Header[k] = v
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var e struct {
			Error struct{ Code string } `json:"error"`
		}
		_ = json.Unmarshal(b, &e)
		return resp.StatusCode, string(b), e.Error.Code
	}
	withKey := http.Header{"X-Api-Key": {key.Key}, "Authorization": {"Bearer " + sess.Token}, "Cookie": {"wrenn_session=x; app=1"}}
	host := names.Host(id, port(t, guest.Listener.Addr().String()))
	status, body, _ := get(host, withKey)
	if status != http.StatusOK || body != "guest:"+host+"/a%2Fb?x=1" {
		t.Fatalf("through the agent = %d %q", status, body)
	}
	if seen.Get("X-Api-Key") != "" || seen.Get("Authorization") != "" || seen.Get("Cookie") != "app=1" ||
		seen.Get("X-Forwarded-For") != "127.0.0.1" || seen.Get("X-Forwarded-Host") != host || seen.Get("X-Forwarded-Proto") != "http" {
		t.Fatalf("the guest received %v", seen)
	}

	closedPort := port(t, downAddr)
	cases := []struct {
		name   string
		host   string
		hdr    http.Header
		status int
		code   string
	}{
		{"agent down", names.Host(downID, 8080), withKey, http.StatusServiceUnavailable, "agent_unavailable"},
		{"nothing listens in the guest", names.Host(id, closedPort), withKey, http.StatusBadGateway, "guest_unreachable"},
		{"no credentials", host, nil, http.StatusUnauthorized, "unauthenticated"},
		{"a forged preview cookie", host, http.Header{"Cookie": {"wrenn_preview=forged.sig"}}, http.StatusUnauthorized, "invalid_preview_token"},
		{"envd's port", names.Host(id, service.EnvdPort), withKey, http.StatusForbidden, "port_not_allowed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if status, body, code := get(tc.host, tc.hdr); status != tc.status || code != tc.code {
				t.Fatalf("= %d %s, want %d %s", status, body, tc.status, tc.code)
			}
		})
	}

	// Forward with AllowEnvdPort reaches the port the hostname route refuses.
	envdLike := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "envd") }))
	t.Cleanup(envdLike.Close)
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodGet, "/health", nil)
	p.Forward(rec, req, ac.TeamID, id, port(t, envdLike.Listener.Addr().String()), ForwardOptions{AllowEnvdPort: true})
	if rec.Code != http.StatusOK || rec.Body.String() != "envd" {
		t.Fatalf("Forward = %d %q", rec.Code, rec.Body.String())
	}
	rec = httptest.NewRecorder()
	p.Forward(rec, req, "team-other", id, 8080, ForwardOptions{})
	if rec.Code != http.StatusNotFound {
		t.Fatalf("Forward for another team = %d %s", rec.Code, rec.Body.String())
	}
}
