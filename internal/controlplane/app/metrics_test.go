package app

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/wrenn-dev/wrenn/internal/db"
	"github.com/wrenn-dev/wrenn/internal/telemetry/telemetrytest"
	"github.com/wrenn-dev/wrenn/internal/testenv"
)

const metricsToken = "scrape-token-0123456789"

// /metrics: never on the API port by default; on the API port behind the
// token when only a token is set; on its own listener when one is set. A
// scrape parses with Prometheus's parser and holds the named series.
func TestPrometheusMetrics(t *testing.T) {
	cases := []struct {
		name             string
		listen, token    string
		onAPI, onOwnPort bool
	}{
		{name: "default: not served"},
		{name: "token only: on the API port behind it", token: metricsToken, onAPI: true},
		{name: "own listener with token", listen: "127.0.0.1:0", token: metricsToken, onOwnPort: true},
		{name: "own listener without token", listen: "127.0.0.1:0", onOwnPort: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pool, dbURL := testenv.MigratedPool(t)
			// A host whose agent is gone: the reconciler's calls to it fail
			// and must show in wrenn_agent_rpc_errors_total.
			dead, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			deadAddr := dead.Addr().String()
			dead.Close()
			q := db.New(pool)
			if _, err := q.UpsertHost(t.Context(), db.UpsertHostParams{ID: "host-gone", Address: deadAddr, Status: "online"}); err != nil {
				t.Fatal(err)
			}
			if _, err := q.HeartbeatHost(t.Context(), db.HeartbeatHostParams{ID: "host-gone"}); err != nil {
				t.Fatal(err)
			}
			env := map[string]string{"DATABASE_URL": dbURL, "REDIS_URL": testenv.RedisURL(t), "WRENN_CP_LISTEN_ADDR": "127.0.0.1:0",
				"WRENN_RECONCILE_INTERVAL": "200ms", "WRENN_METRICS_LISTEN_ADDR": tc.listen, "WRENN_METRICS_TOKEN": tc.token}
			cfg := testConfig(t, env)
			ctx, stop := context.WithCancel(t.Context())
			started := make(chan Started, 1)
			done := make(chan error, 1)
			go func() { done <- Run(ctx, cfg, slog.New(slog.DiscardHandler), func(s Started) { started <- s }) }()
			defer func() {
				stop()
				if err := <-done; err != nil {
					t.Error(err)
				}
			}()
			var st Started
			select {
			case st = <-started:
			case err := <-done:
				t.Fatal(err)
			case <-time.After(20 * time.Second):
				t.Fatal("the control plane did not start")
			}
			api := "http://" + st.Addr.String()
			telemetrytest.Get(t, api+"/health", "")
			telemetrytest.Get(t, api+"/v1/sandboxes", "")
			telemetrytest.Get(t, api+"/v1/sandboxes/sb-nope", "")
			if (st.MetricsAddr != nil) != tc.onOwnPort {
				t.Fatalf("own metrics listener %v, want %v", st.MetricsAddr, tc.onOwnPort)
			}
			var url string
			switch {
			case tc.onAPI:
				url = api + "/metrics"
			case tc.onOwnPort:
				url = "http://" + st.MetricsAddr.String() + "/metrics"
				if code, _ := telemetrytest.Get(t, api+"/metrics", tc.token); code != http.StatusNotFound {
					t.Fatalf("API port /metrics = %d with its own listener, want 404", code)
				}
			default:
				for _, tok := range []string{"", metricsToken} {
					if code, _ := telemetrytest.Get(t, api+"/metrics", tok); code != http.StatusNotFound {
						t.Fatalf("API port /metrics = %d by default, want 404", code)
					}
				}
				return
			}
			if tc.token != "" {
				for _, bad := range []string{"", "wrong-token-0123456789"} {
					if code, _ := telemetrytest.Get(t, url, bad); code != http.StatusUnauthorized {
						t.Fatalf("scrape with token %q = %d, want 401", bad, code)
					}
				}
			}
			// Wait for a failed reconcile call to the gone host.
			deadline := time.Now().Add(10 * time.Second)
			var fams map[string]*dto.MetricFamily
			for {
				fams = telemetrytest.Scrape(t, url, tc.token)
				if telemetrytest.Find(fams, "wrenn_agent_rpc_errors_total", map[string]string{"procedure": "ListSandboxes", "code": "unavailable"}) != nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("no agent RPC error counted for the gone host; families %v", telemetrytest.Names(fams))
				}
				time.Sleep(100 * time.Millisecond)
			}
			for _, want := range []struct {
				name   string
				labels map[string]string
			}{
				{"wrenn_http_requests_total", map[string]string{"route": "/health", "method": "GET", "status": "200"}},
				{"wrenn_http_requests_total", map[string]string{"route": "/v1/sandboxes", "method": "GET", "status": "401"}},
				{"wrenn_http_requests_total", map[string]string{"route": "/v1/sandboxes/{sandbox_id}", "status": "401"}},
				{"wrenn_http_request_duration_seconds", map[string]string{"route": "/health", "status": "200"}},
				{"wrenn_sandboxes", map[string]string{"state": "running"}},
				{"wrenn_sandboxes", map[string]string{"state": "paused"}},
				{"wrenn_sandbox_operation_duration_seconds", map[string]string{"operation": "create", "outcome": "ok"}},
				{"wrenn_sandbox_operation_duration_seconds", map[string]string{"operation": "pause"}},
				{"wrenn_sandbox_operation_duration_seconds", map[string]string{"operation": "resume"}},
				{"go_goroutines", nil},
			} {
				if telemetrytest.Find(fams, want.name, want.labels) == nil {
					t.Errorf("no series %s%v; families: %v", want.name, want.labels, telemetrytest.Names(fams))
				}
			}
			if f := fams["wrenn_http_request_duration_seconds"]; f == nil || f.GetType() != dto.MetricType_HISTOGRAM {
				t.Errorf("wrenn_http_request_duration_seconds is not a histogram")
			}
		})
	}
}
