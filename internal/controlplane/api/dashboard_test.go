package api

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/wrenn-dev/wrenn/internal/controlplane/dashboard"
)

// TestDashboardRouting: the dashboard gets the paths no API route takes,
// except under /v1/; without assets a browser is told how to build them.
func TestDashboardRouting(t *testing.T) {
	dash, err := dashboard.NewFS(fstest.MapFS{"index.html": {Data: []byte("<!doctype html><title>Wrenn</title>")}})
	if err != nil {
		t.Fatal(err)
	}
	const html = "text/html"
	tests := []struct {
		name       string
		dash       *dashboard.Handler
		path       string
		accept     string
		status     int
		code       string // error code, or "" for the page
		bodyPrefix string
	}{
		{"root", dash, "/", "", 200, "", "<!doctype html>"},
		{"page", dash, "/dashboard/capsules/list", html, 200, "", "<!doctype html>"},
		{"api paths stay the api's", dash, "/v1/nope", html, 404, "not_found", ""},
		{"health is still the api", dash, "/health", html, 200, "", "{"},
		{"program on a page path", dash, "/dashboard/keys", "application/json", 404, "not_found", ""},
		{"not built: browser told how", nil, "/dashboard/keys", html, 503, "dashboard_unavailable", ""},
		{"not built: program gets 404", nil, "/dashboard/keys", "", 404, "not_found", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := New(Deps{Logger: slog.New(slog.DiscardHandler), Dashboard: tt.dash})
			if err != nil {
				t.Fatal(err)
			}
			srv := httptest.NewServer(s)
			defer srv.Close()
			req, _ := http.NewRequest("GET", srv.URL+tt.path, nil)
			if tt.accept != "" {
				req.Header.Set("Accept", tt.accept)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.status {
				t.Fatalf("= %d, want %d: %s", resp.StatusCode, tt.status, b)
			}
			if tt.code == "" {
				if !strings.HasPrefix(string(b), tt.bodyPrefix) {
					t.Fatalf("body %q", b)
				}
				return
			}
			var ae apiErr
			if err := json.Unmarshal(b, &ae); err != nil || ae.Error.Code != tt.code {
				t.Fatalf("error %s, want code %s", b, tt.code)
			}
			if tt.code == "dashboard_unavailable" && !strings.Contains(ae.Error.Message, "make web") {
				t.Fatalf("message must say how to build: %q", ae.Error.Message)
			}
		})
	}
}
