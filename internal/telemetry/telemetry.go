// Package telemetry defines the Prometheus series of the control plane and
// the host agent in one place, and serves them at /metrics. Each role has
// one constructor (NewControlPlane, NewAgent) that registers all of its
// series on its own registry (no global registry), so a later feature adds
// its series there and gets them on /metrics with no other wiring.
package telemetry

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/wrenn-dev/wrenn/internal/config"
)

// namespace prefixes every series: wrenn_...
const namespace = "wrenn"

// newRegistry is a registry with the Go runtime and process collectors.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// durationBuckets span what the platform times: HTTP calls of a few
// milliseconds to VM boots and snapshots of a minute or more.
var durationBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300}

// HTTP counts and times HTTP requests by route pattern (never the raw
// path: ids would make a series per sandbox), method and status.
type HTTP struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

func newHTTP(reg prometheus.Registerer) *HTTP {
	h := &HTTP{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "http_requests_total",
			Help: "HTTP requests by route pattern, method and status."}, []string{"route", "method", "status"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: namespace, Name: "http_request_duration_seconds",
			Help: "HTTP request latency by route pattern, method and status.", Buckets: durationBuckets}, []string{"route", "method", "status"}),
	}
	reg.MustRegister(h.requests, h.duration)
	return h
}

// Middleware records every request; route names the request's route
// pattern once it has been served ("" becomes "unmatched").
func (h *HTTP) Middleware(route func(*http.Request) string) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			start := time.Now()
			sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
			next.ServeHTTP(sw, r)
			rt := route(r)
			if rt == "" {
				rt = "unmatched"
			}
			labels := prometheus.Labels{"route": rt, "method": r.Method, "status": strconv.Itoa(sw.status)}
			h.requests.With(labels).Inc()
			h.duration.With(labels).Observe(time.Since(start).Seconds())
		})
	}
}

// statusWriter remembers the status; Unwrap keeps http.ResponseController
// (flush, hijack for WebSockets) working through it.
type statusWriter struct {
	http.ResponseWriter
	status int
	wrote  bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wrote {
		w.status, w.wrote = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	w.wrote = true
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// rpcCode is the code label of a Connect call's outcome.
func rpcCode(err error) string {
	if err == nil {
		return "ok"
	}
	return connect.CodeOf(err).String()
}

// Handler serves the registry's series in the Prometheus text format; when
// token is set, only to requests bearing it.
func Handler(g prometheus.Gatherer, token string) http.Handler {
	h := promhttp.HandlerFor(g, promhttp.HandlerOpts{})
	if token == "" {
		return h
	}
	want := []byte("Bearer " + token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="metrics"`)
			http.Error(w, "a valid metrics bearer token is required", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// OnMainPort reports whether /metrics goes on the process's main port:
// only when no separate listener is configured and a token guards it, so
// an unauthenticated /metrics is never open on the public port.
func OnMainPort(cfg config.Metrics) bool { return cfg.ListenAddr == "" && cfg.Token != "" }

// Serve serves /metrics alone on cfg.ListenAddr until ctx ends; it returns
// at once when no separate listener is configured. ready, if not nil, is
// told the bound address.
func Serve(ctx context.Context, cfg config.Metrics, g prometheus.Gatherer, log *slog.Logger, ready func(net.Addr)) error {
	if cfg.ListenAddr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", cfg.ListenAddr)
	if err != nil {
		return fmt.Errorf("metrics listener %s: %w", cfg.ListenAddr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", Handler(g, cfg.Token))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	log.Info("metrics listening", "addr", ln.Addr().String())
	if ready != nil {
		ready(ln.Addr())
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve metrics: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("shut down metrics listener: %w", err)
	}
	return nil
}
