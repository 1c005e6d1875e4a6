package registration_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/agent/registration"
	"github.com/wrenn-dev/wrenn/internal/config"
	"github.com/wrenn-dev/wrenn/internal/controlplane/agenttest"
	"github.com/wrenn-dev/wrenn/internal/controlplane/app"
	"github.com/wrenn-dev/wrenn/internal/testenv"
)

func call(t *testing.T, method, url, bearer string, body any) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		raw, _ := json.Marshal(body)
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

// The real control plane (app.Run: API, services, host registration, host
// monitor) with an agent that registers through the public flow: a sandbox
// created over REST lands on it, goes missing when the agent falls silent
// and comes back when it returns.
func TestControlPlaneWithRegisteredAgent(t *testing.T) {
	ctx := t.Context()
	dbURL := testenv.MigratedURL(t)
	env := map[string]string{
		"DATABASE_URL": dbURL, "REDIS_URL": testenv.RedisURL(t), "WRENN_JWT_SECRET": strings.Repeat("j", 40),
		"WRENN_CP_LISTEN_ADDR": "127.0.0.1:0", "WRENN_HOST_UNREACHABLE_AFTER": "1s",
		"WRENN_RECONCILE_INTERVAL": "100ms",
	}
	cfg, err := config.LoadControlPlane(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	cpCtx, stopCP := context.WithCancel(ctx)
	addrc := make(chan net.Addr, 1)
	cpDone := make(chan error, 1)
	go func() {
		cpDone <- app.Run(cpCtx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), func(s app.Started) { addrc <- s.Addr })
	}()
	t.Cleanup(func() { stopCP(); <-cpDone })
	var base string
	select {
	case a := <-addrc:
		base = "http://" + a.String()
	case err := <-cpDone:
		t.Fatalf("control plane: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("control plane did not start")
	}

	st, sess := call(t, "POST", base+"/v1/auth/signup", "", map[string]any{"email": "admin@example.test", "password": "correct horse battery", "name": "Admin"})
	if st != 201 && st != 200 {
		t.Fatalf("signup: %d %v", st, sess)
	}
	jwt, _ := sess["token"].(string)
	st, h := call(t, "POST", base+"/v1/hosts", jwt, map[string]any{"name": "stub", "shared": true})
	if st != 201 {
		t.Fatalf("create host: %d %v", st, h)
	}
	host := h["host"].(map[string]any)["id"].(string)

	agent := agenttest.Serve(t)
	opts := registration.Options{Dir: t.TempDir(), CPURLs: []string{base}, RegisterToken: h["registration_token"].(string),
		Address: agent.Address(), Specs: specs, Interval: 200 * time.Millisecond}
	aCtx, stopAgent := context.WithCancel(ctx)
	first := &run{done: make(chan struct{})}
	go func() { defer close(first.done); first.err = registration.Run(aCtx, opts) }()
	t.Cleanup(stopAgent)
	hostStatus := func() string {
		_, b := call(t, "GET", base+"/v1/hosts/"+host, jwt, nil)
		s, _ := b["status"].(string)
		return s
	}
	waitFor(t, 5*time.Second, "host online", func() bool { return hostStatus() == "online" })

	st, sb := call(t, "POST", base+"/v1/sandboxes", jwt, map[string]any{"template": "minimal"})
	if st != 201 && st != 200 {
		t.Fatalf("create sandbox: %d %v", st, sb)
	}
	sbID, _ := sb["id"].(string)
	if sbID == "" || !agent.Has(sbID) {
		t.Fatalf("sandbox %v not on the registered agent", sb)
	}
	sbStatus := func() string {
		_, b := call(t, "GET", base+"/v1/sandboxes/"+sbID, jwt, nil)
		s, _ := b["status"].(string)
		return s
	}
	if s := sbStatus(); s != "running" {
		t.Fatalf("sandbox = %s", s)
	}

	// The agent process dies: no heartbeats, and no answer to the
	// control plane's calls.
	stopAgent()
	<-first.done
	agent.SetReachable(false)
	waitFor(t, 4*time.Second, "host unreachable and sandbox missing", func() bool {
		return hostStatus() == "unreachable" && sbStatus() == "missing"
	})

	agent.SetReachable(true)
	a2Ctx, stop2 := context.WithCancel(ctx)
	second := &run{done: make(chan struct{})}
	go func() { defer close(second.done); second.err = registration.Run(a2Ctx, opts) }()
	t.Cleanup(func() { stop2(); <-second.done })
	waitFor(t, 4*time.Second, "host online and sandbox running", func() bool {
		return hostStatus() == "online" && sbStatus() == "running"
	})

	// Forced delete destroys the sandbox on the agent and stops the agent's loop.
	if st, b := call(t, "DELETE", base+"/v1/hosts/"+host, jwt, nil); st != 409 {
		t.Fatalf("unforced delete: %d %v", st, b)
	}
	if st, b := call(t, "DELETE", base+"/v1/hosts/"+host+"?force=true", jwt, nil); st != 200 {
		t.Fatalf("forced delete: %d %v", st, b)
	}
	if agent.Has(sbID) {
		t.Fatal("forced delete left the sandbox on the agent")
	}
	select {
	case <-second.done:
		if !errors.Is(second.err, registration.ErrHostDeleted) {
			t.Fatalf("agent loop ended with %v, want ErrHostDeleted", second.err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("agent loop did not stop after its host was deleted")
	}
	if s := sbStatus(); s != "stopped" {
		t.Fatalf("sandbox after forced delete = %s", s)
	}
}
