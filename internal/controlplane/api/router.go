// Package api is the control plane's HTTP layer: routing, authentication
// middleware, request decoding and the one error format. Handlers stay thin
// and call the service layer, which holds the rules.
package api

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"

	"github.com/wrenn-dev/wrenn/internal/controlplane/builds"
	"github.com/wrenn-dev/wrenn/internal/controlplane/channels"
	"github.com/wrenn-dev/wrenn/internal/controlplane/clientip"
	"github.com/wrenn-dev/wrenn/internal/controlplane/dashboard"
	"github.com/wrenn-dev/wrenn/internal/controlplane/hostauth"
	"github.com/wrenn-dev/wrenn/internal/controlplane/lease"
	"github.com/wrenn-dev/wrenn/internal/controlplane/metrics"
	"github.com/wrenn-dev/wrenn/internal/controlplane/proxy/proxyurl"
	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
	"github.com/wrenn-dev/wrenn/internal/telemetry"
)

// HealthChecker reports whether a dependency (database, Redis) answers.
type HealthChecker interface {
	Ping(ctx context.Context) error
}

// LeaseReader lists who runs each singleton loop, for GET /health.
type LeaseReader interface {
	Holders(ctx context.Context) ([]lease.Holder, error)
}

// BacklogReporter counts events committed but not yet on the stream.
type BacklogReporter interface {
	Backlog(ctx context.Context) (int64, error)
}

// Deps are what the HTTP layer needs; constructed by the caller.
type Deps struct {
	Logger *slog.Logger
	// Checks are run by GET /health, by name.
	Checks map[string]HealthChecker
	// Version is reported by GET /health.
	Version string
	// Replica is this process's id and Leases who holds each singleton
	// loop's lease, both reported by GET /health (when set).
	Replica string
	Leases  LeaseReader
	// EventBacklog, when set, is reported by GET /health as event_backlog.
	EventBacklog BacklogReporter
	// Hosts serves /v1/hosts (registration, heartbeats, host management);
	// without it those routes answer 503. User sessions on host management
	// routes are checked by Service, or by HostUserAuth when Service is nil.
	Hosts        *hostauth.Service
	HostUserAuth HostUserAuth

	// Service serves accounts, teams, API keys, sandboxes and snapshots;
	// without it those routes answer 503.
	Service *service.Service
	// Builds serves /v1/admin/builds; without it those routes answer 503.
	Builds *builds.Service
	// OAuth serves sign-in and linking through providers; nil: every
	// provider answers provider_not_configured.
	OAuth *service.OAuth
	// SecureCookies marks cookies Secure (CP_PUBLIC_URL is https): the
	// OAuth state and the browser session's, which are also Secure on TLS
	// requests.
	SecureCookies bool
	// Channels serves /v1/channels; without it (no WRENN_ENCRYPTION_KEY)
	// those routes answer 503 channels_disabled.
	Channels *channels.Service
	// Stats serves GET /v1/sandboxes/stats and the history form of
	// /v1/sandboxes/{id}/metrics; without it those answer 503.
	Stats *metrics.Reader
	// HTTPMetrics, when set, records every request by route pattern.
	HTTPMetrics *telemetry.HTTP
	// Metrics, when set, serves GET /metrics on this handler (only with a
	// token: see telemetry.OnMainPort).
	Metrics http.Handler
	// RateLimiter guards signup, login and OAuth callbacks; nil disables the limit.
	RateLimiter RateLimiter
	// TrustedProxies are the peers whose forwarding headers name the
	// client (see clientip); empty: the TCP peer is the client.
	TrustedProxies []netip.Prefix
	// MaxBodyBytes bounds JSON bodies (default 1 MiB); MaxUploadBytes one
	// file upload (default 1 GiB).
	MaxBodyBytes   int64
	MaxUploadBytes int64
	// ProxyNames formats sandbox proxy URLs and signs preview tokens
	// (POST /v1/sandboxes/{id}/preview-urls); nil: that route answers 503.
	ProxyNames *proxyurl.Names
	// Dashboard serves the web dashboard at / (paths no route takes);
	// nil: a browser loading a page there is told how to build it.
	Dashboard *dashboard.Handler
}

// Server is the control plane's HTTP handler.
type Server struct {
	deps     Deps
	clientIP clientip.Resolver
	router   chi.Router
	spec     []byte
}

// New builds the router.
func New(deps Deps) (*Server, error) {
	spec, err := buildSpec()
	if err != nil {
		return nil, fmt.Errorf("build openapi spec: %w", err)
	}
	if deps.MaxBodyBytes <= 0 {
		deps.MaxBodyBytes = 1 << 20
	}
	if deps.MaxUploadBytes <= 0 {
		deps.MaxUploadBytes = 1 << 30
	}
	s := &Server{deps: deps, clientIP: clientip.New(deps.TrustedProxies), router: chi.NewRouter(), spec: spec}
	r := s.router
	r.Use(middleware.RequestID, s.recoverer, s.accessLog)
	if deps.HTTPMetrics != nil {
		r.Use(deps.HTTPMetrics.Middleware(s.routePattern))
	}
	r.NotFound(s.notFound)
	r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		WriteError(w, service.CodeMethodNotAllowed, r.Method+" is not allowed on "+r.URL.Path)
	})
	r.Get("/health", s.health)
	if deps.Metrics != nil {
		r.Method(http.MethodGet, "/metrics", deps.Metrics)
	}
	r.Get("/openapi.yaml", s.serveOpenAPI)
	r.Get("/docs", serveDocsIndex)
	r.Get("/docs/*", serveDocsAsset)
	s.mountHosts(r)
	s.mountV1(r)
	return s, nil
}

// routePattern is the full route pattern of a request ("" for none),
// looked up in the router rather than read from the request's routing
// context, which holds only a prefix when a group's middleware (such as
// authentication) answered before the route itself was reached.
func (s *Server) routePattern(r *http.Request) string {
	mux, ok := s.router.(*chi.Mux)
	if !ok {
		return ""
	}
	return mux.Find(chi.NewRouteContext(), r.Method, r.URL.Path)
}

// Router exposes the router so other route groups can be mounted.
func (s *Server) Router() chi.Router { return s.router }

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.router.ServeHTTP(w, r) }

// notFound: paths no API route takes belong to the dashboard, except
// under /v1/, which is the API's alone.
func (s *Server) notFound(w http.ResponseWriter, r *http.Request) {
	if !strings.HasPrefix(r.URL.Path, "/v1/") {
		if s.deps.Dashboard != nil && s.deps.Dashboard.Serve(w, r) {
			return
		}
		if s.deps.Dashboard == nil && dashboard.IsNavigation(r) {
			WriteError(w, service.CodeDashboardUnavailable, dashboard.ErrNotBuilt.Error())
			return
		}
	}
	WriteError(w, service.CodeNotFound, "no such route: "+r.Method+" "+r.URL.Path)
}

func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	checks := make(map[string]string, len(s.deps.Checks))
	status := http.StatusOK
	for name, c := range s.deps.Checks {
		if err := c.Ping(ctx); err != nil {
			s.deps.Logger.WarnContext(ctx, "health check failed", "check", name, "err", err)
			checks[name] = "unavailable"
			status = http.StatusServiceUnavailable
			continue
		}
		checks[name] = "ok"
	}
	body := map[string]any{"status": "ok", "version": s.deps.Version, "checks": checks}
	if s.deps.Replica != "" {
		body["replica"] = s.deps.Replica
	}
	if s.deps.Leases != nil {
		// Which replica leads each singleton loop; a failure here is the
		// database's, already reported by its check.
		if hs, err := s.deps.Leases.Holders(ctx); err == nil {
			leases := make(map[string]lease.Holder, len(hs))
			for _, h := range hs {
				leases[h.Name] = h
			}
			body["leases"] = leases
		}
	}
	if s.deps.EventBacklog != nil {
		// A growing backlog with Redis up means no replica relays.
		if n, err := s.deps.EventBacklog.Backlog(ctx); err != nil {
			s.deps.Logger.WarnContext(ctx, "health: count event backlog", "err", err)
		} else {
			body["event_backlog"] = n
		}
	}
	if status != http.StatusOK {
		body["status"] = "degraded"
	}
	WriteJSON(w, status, body)
}

func (s *Server) serveOpenAPI(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/yaml")
	_, _ = w.Write(s.spec)
}

// recoverer turns a handler panic into a 500 in the API's error format and
// logs it; the stack never reaches the client.
func (s *Server) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.deps.Logger.ErrorContext(r.Context(), "handler panic", "panic", v, "method", r.Method, "path", r.URL.Path)
				WriteError(w, service.CodeInternal, "internal error")
			}
		}()
		next.ServeHTTP(w, r)
	})
}

func (s *Server) accessLog(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
		next.ServeHTTP(ww, r)
		// Only the path is logged: query strings may carry tokens.
		s.deps.Logger.LogAttrs(r.Context(), slog.LevelDebug, "http request",
			slog.String("method", r.Method), slog.String("path", r.URL.Path),
			slog.Int("status", ww.Status()), slog.Duration("took", time.Since(start)),
			slog.String("request_id", middleware.GetReqID(r.Context())))
	})
}
