package api

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
)

type checkFunc func(context.Context) error

func (f checkFunc) Ping(ctx context.Context) error { return f(ctx) }

func mustNew(t testing.TB, deps Deps) *Server {
	t.Helper()
	s, err := New(deps)
	if err != nil {
		t.Fatalf("new server: %v", err)
	}
	return s
}

func newTestServer(t testing.TB, checks map[string]HealthChecker) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(specCheckedUnlessBench(t, mustNew(t, Deps{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Checks: checks, Version: "test"})))
	t.Cleanup(srv.Close)
	return srv
}

func TestHealth(t *testing.T) {
	tests := []struct {
		name       string
		checks     map[string]HealthChecker
		wantStatus int
		wantBody   string
	}{
		{"all ok", map[string]HealthChecker{"postgres": checkFunc(func(context.Context) error { return nil })}, http.StatusOK, "ok"},
		{"dependency down", map[string]HealthChecker{
			"postgres": checkFunc(func(context.Context) error { return nil }),
			"redis":    checkFunc(func(context.Context) error { return errors.New("connection refused") }),
		}, http.StatusServiceUnavailable, "degraded"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newTestServer(t, tt.checks)
			defer srv.Close()
			resp, err := http.Get(srv.URL + "/health")
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var body struct {
				Status string            `json:"status"`
				Checks map[string]string `json:"checks"`
			}
			if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
				t.Fatalf("decode: %v", err)
			}
			if resp.StatusCode != tt.wantStatus || body.Status != tt.wantBody {
				t.Fatalf("got %d %q, want %d %q", resp.StatusCode, body.Status, tt.wantStatus, tt.wantBody)
			}
			if len(body.Checks) != len(tt.checks) {
				t.Fatalf("checks = %v", body.Checks)
			}
		})
	}
}

func TestUnknownRouteUsesErrorFormat(t *testing.T) {
	srv := newTestServer(t, nil)
	defer srv.Close()
	for _, tc := range []struct {
		method, path string
		status       int
		code         string
	}{
		{http.MethodGet, "/v1/nothing-here", http.StatusNotFound, "not_found"},
		{http.MethodPost, "/health", http.StatusMethodNotAllowed, "method_not_allowed"},
		{http.MethodGet, "/docs/../../etc/passwd", http.StatusNotFound, "not_found"},
	} {
		req, _ := http.NewRequest(tc.method, srv.URL+tc.path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var body errorBody
		err = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != tc.status || body.Error.Code != tc.code || body.Error.Message == "" {
			t.Errorf("%s %s: status %d body %+v err %v; want %d %s", tc.method, tc.path, resp.StatusCode, body, err, tc.status, tc.code)
		}
	}
}

func TestOpenAPIServed(t *testing.T) {
	srv := newTestServer(t, nil)
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	want, _ := buildSpec()
	if resp.StatusCode != http.StatusOK || string(b) != string(want) {
		t.Fatalf("status %d, %d bytes; want the embedded spec", resp.StatusCode, len(b))
	}
}

func TestPanicBecomes500WithoutStack(t *testing.T) {
	s := mustNew(t, Deps{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	s.Router().Get("/boom", func(http.ResponseWriter, *http.Request) { panic("secret internal detail") })
	srv := httptest.NewServer(specChecked(t, s))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/boom")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusInternalServerError || string(b) != "{\"error\":{\"code\":\"internal\",\"message\":\"internal error\"}}\n" {
		t.Fatalf("got %d %s", resp.StatusCode, b)
	}
}
