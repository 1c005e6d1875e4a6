// Package e2bapi serves E2B's REST API (the routes the E2B SDKs call, with
// E2B's request and response shapes and error format) on the control plane's
// own listener, outside /v1, so the unmodified SDKs drive Wrenn sandboxes.
// Handlers translate shapes only: every rule is the sandbox service's, the
// same Wrenn's own API calls.
package e2bapi

import (
	"log/slog"

	"github.com/go-chi/chi/v5"

	"github.com/wrenn-dev/wrenn/internal/controlplane/api"
	"github.com/wrenn-dev/wrenn/internal/controlplane/proxy/proxyurl"
	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
)

// Deps are what the E2B routes need; constructed by the caller.
type Deps struct {
	Logger  *slog.Logger
	Service *service.Service
	// Names gives each sandbox's domain, so the SDK's getHost(port) names
	// "<port>-<sandbox id>.<domain>", a hostname the sandbox proxy serves;
	// nil: none is returned.
	Names *proxyurl.Names
	// Forward reaches sandbox ports for requests routed by the
	// E2b-Sandbox-Id header (Wrap); nil: those requests go to the API.
	Forward Forwarder
	// MaxBodyBytes bounds JSON bodies (default 1 MiB).
	MaxBodyBytes int64
}

// Server serves the E2B routes.
type Server struct {
	deps Deps
}

// New makes the E2B routes' server.
func New(deps Deps) *Server {
	if deps.MaxBodyBytes <= 0 {
		deps.MaxBodyBytes = 1 << 20
	}
	return &Server{deps: deps}
}

// Mount registers the E2B routes on r (the control plane's root router).
func (s *Server) Mount(r chi.Router) {
	r.Group(func(r chi.Router) {
		r.Use(s.authenticate, api.LimitBody(s.deps.MaxBodyBytes))
		r.Post("/sandboxes", s.create)
		r.Post("/v2/sandboxes", s.create)
		r.Get("/sandboxes", s.listRunning)
		r.Get("/v2/sandboxes", s.list)
		r.Get("/sandboxes/{sandboxID}", s.get)
		r.Delete("/sandboxes/{sandboxID}", s.kill)
		r.Post("/sandboxes/{sandboxID}/timeout", s.setTimeout)
		r.Post("/sandboxes/{sandboxID}/pause", s.pause)
		r.Post("/sandboxes/{sandboxID}/connect", s.connect)
		r.Post("/v2/sandboxes/{sandboxID}/connect", s.connect)
		r.Post("/sandboxes/{sandboxID}/resume", s.resume)
		r.Post("/sandboxes/{sandboxID}/refreshes", s.refresh)
		r.Get("/sandboxes/{sandboxID}/metrics", s.metrics)
		r.Get("/templates", s.templates)
	})
}
