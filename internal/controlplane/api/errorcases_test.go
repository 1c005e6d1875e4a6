package api

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/localsvc"
	"github.com/wrenn-dev/wrenn/internal/testenv"
)

// User errors and a full sandbox disk are answered as such, never as a
// failure of the platform: a full guest disk is 507 sandbox_disk_full, a
// path the guest's kernel refuses is 400 naming "path" (it used to be 502
// agent_error).
func TestGuestRefusalsAreUserErrors(t *testing.T) {
	const diskLimit = 4 << 10
	e := newEnv(t, func(o *envOpts) { o.diskLimit = diskLimit })
	owner := e.signup("owner@example.com")
	key, _ := e.apiKey(owner, "errors")
	c := cred{key: key}
	sb := e.createSandbox(c, nil)
	longName := "/root/" + strings.Repeat("a", 3994) // 4000 bytes, one name
	overPathMax := "/" + strings.Repeat("d/", 2100)

	tests := []struct {
		name         string
		call         func() (int, []byte)
		status       int
		code, field  string
		retryAfterOK bool
	}{
		{"upload past the sandbox's disk", func() (int, []byte) {
			return e.upload(sb.ID, c, []part{{"path", "/root/big"}, {"file", strings.Repeat("x", diskLimit+1)}})
		}, http.StatusInsufficientStorage, "sandbox_disk_full", "", false},
		{"upload to a 4000-byte path", func() (int, []byte) {
			return e.upload(sb.ID, c, []part{{"path", longName}, {"file", "x"}})
		}, http.StatusBadRequest, "invalid_request", "path", false},
		{"read a 4000-byte path", func() (int, []byte) {
			return e.do("POST", sbPath(sb.ID, "/files/read"), map[string]string{"path": longName}, c)
		}, http.StatusBadRequest, "invalid_request", "path", false},
		{"list a path over PATH_MAX", func() (int, []byte) {
			return e.do("POST", sbPath(sb.ID, "/files/list"), map[string]string{"path": overPathMax}, c)
		}, http.StatusBadRequest, "invalid_request", "path", false},
		{"mkdir a 4000-byte path", func() (int, []byte) {
			return e.do("POST", sbPath(sb.ID, "/files/mkdir"), map[string]string{"path": longName}, c)
		}, http.StatusBadRequest, "invalid_request", "path", false},
		{"a small upload still fits", func() (int, []byte) {
			return e.upload(sb.ID, c, []part{{"path", "/root/small"}, {"file", "ok"}})
		}, http.StatusOK, "", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, b := tt.call()
			if st != tt.status {
				t.Fatalf("status %d, want %d: %s", st, tt.status, b)
			}
			if tt.code == "" {
				return
			}
			var ae apiErr
			if err := json.Unmarshal(b, &ae); err != nil || ae.Error.Code != tt.code || ae.Error.Field != tt.field || ae.Error.Message == "" {
				t.Fatalf("error %s, want code %q field %q", b, tt.code, tt.field)
			}
		})
	}
}

// An exec that a pause overtakes answers 409 invalid_state (it used to be
// 503): the sandbox changed state, nothing failed.
func TestExecRacingPauseIsInvalidState(t *testing.T) {
	e := newEnv(t)
	owner := e.signup("owner@example.com")
	key, _ := e.apiKey(owner, "race")
	c := cred{key: key}
	sb := e.createSandbox(c, nil)

	var wg sync.WaitGroup
	var st int
	var body []byte
	wg.Add(1)
	go func() {
		defer wg.Done()
		st, body = e.do("POST", sbPath(sb.ID, "/exec"), map[string]any{"cmd": "sleep", "args": []string{"1"}}, c)
	}()
	time.Sleep(200 * time.Millisecond) // the exec is running on the agent
	e.want("POST", sbPath(sb.ID, "/pause"), nil, c, http.StatusOK, nil)
	wg.Wait()
	var ae apiErr
	if st != http.StatusConflict || json.Unmarshal(body, &ae) != nil || ae.Error.Code != "invalid_state" {
		t.Fatalf("exec racing a pause = %d %s, want 409 invalid_state", st, body)
	}
}

// With PostgreSQL stopped under it the API answers 503
// database_unavailable with Retry-After, never 500 (e.send fails the test
// on any 500), and it works again once PostgreSQL is back.
func TestDatabaseOutageIs503(t *testing.T) {
	_, err := localsvc.PostgresBinDir()
	testenv.Require(t, err == nil, "PostgreSQL: %v", err)
	dir, err := os.MkdirTemp("", "wrenn-outage-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	pg, err := localsvc.StartPostgres(dir, localsvc.PostgresOptions{})
	if err != nil {
		t.Fatalf("start a cluster of our own: %v", err)
	}
	running := true
	t.Cleanup(func() {
		if running {
			pg.Stop()
		}
	})
	e := newEnv(t, func(o *envOpts) { o.dbURL = pg.URL("postgres") })
	owner := e.signup("owner@example.com")
	key, _ := e.apiKey(owner, "outage")
	sb := e.createSandbox(cred{key: key}, nil)

	if err := pg.Stop(); err != nil {
		t.Fatalf("stop postgres: %v", err)
	}
	running = false
	requests := []struct {
		name, method, path string
		body               any
		c                  cred
	}{
		{"list sandboxes with an API key", "GET", "/v1/sandboxes", nil, cred{key: key}},
		{"get a sandbox", "GET", sbPath(sb.ID), nil, cred{key: key}},
		{"exec", "POST", sbPath(sb.ID, "/exec"), map[string]any{"cmd": "echo", "args": []string{"hi"}}, cred{key: key}},
		{"me with a session", "GET", "/v1/me", nil, owner.cred()},
		{"log in", "POST", "/v1/auth/login", map[string]string{"email": "owner@example.com", "password": testPassword}, cred{}},
		{"create a sandbox", "POST", "/v1/sandboxes", nil, cred{key: key}},
	}
	for _, r := range requests {
		t.Run(r.name, func(t *testing.T) {
			req := e.request(r.method, r.path, r.body, r.c)
			resp, b := e.sendResp(req)
			var ae apiErr
			if resp.StatusCode != http.StatusServiceUnavailable || json.Unmarshal(b, &ae) != nil || ae.Error.Code != "database_unavailable" {
				t.Fatalf("%s %s during the outage = %d %s, want 503 database_unavailable", r.method, r.path, resp.StatusCode, b)
			}
			if resp.Header.Get("Retry-After") == "" {
				t.Fatalf("503 database_unavailable without Retry-After")
			}
		})
	}

	pg, err = localsvc.StartPostgres(dir, localsvc.PostgresOptions{Port: pg.Port()})
	if err != nil {
		t.Fatalf("restart postgres: %v", err)
	}
	running = true
	// The pool dials again on its own; allow it a few tries.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		st, b := e.do("GET", "/v1/sandboxes", nil, cred{key: key})
		if st == http.StatusOK {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("after the restart: %d %s", st, b)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
