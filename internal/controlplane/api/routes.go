package api

import (
	"net/http"

	"github.com/go-chi/chi/v5"

	"github.com/wrenn-dev/wrenn/internal/controlplane/ids"
	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
)

// mountV1 registers the REST API of accounts, teams, keys, sandboxes and
// snapshots. User management takes only session JWTs; sandbox operations
// take JWTs or API keys. The routes are always registered (the spec test
// walks them); without Deps.Service they answer 503.
func (s *Server) mountV1(root chi.Router) {
	root.Group(func(r chi.Router) {
		r.Use(s.serviceReady)
		r.Route("/v1/auth", s.authRoutes)
		r.Route("/v1/me", s.meRoutes)
		r.Route("/v1/teams", s.teamRoutes)
		r.Route("/v1/api-keys", s.keyRoutes)
		// The dashboard calls sandboxes capsules; both paths serve the same API.
		r.Route("/v1/sandboxes", s.sandboxRoutes)
		r.Route("/v1/capsules", s.sandboxRoutes)
		r.Route("/v1/snapshots", s.snapshotRoutes)
		r.Route("/v1/channels", s.channelRoutes)
		r.Route("/v1/templates", s.templateRoutes)
		r.Route("/v1/admin/builds", s.buildRoutes)
		r.Route("/v1/admin/templates", s.adminTemplateRoutes)
		r.Route("/v1/audit-logs", s.auditRoutes)
	})
}

// fixedRoute and sandboxRoute name an idempotent operation (the same under
// /v1/sandboxes and /v1/capsules); a sandbox's pause is not another's.
func fixedRoute(name string) func(*http.Request) string {
	return func(*http.Request) string { return name }
}

func sandboxRoute(name string) func(*http.Request) string {
	return func(r *http.Request) string { return name + ":" + sandboxID(r) }
}

func (s *Server) serviceReady(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.deps.Service == nil {
			WriteError(w, service.CodeServiceUnavailable, "the control plane service is not configured")
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (s *Server) authRoutes(r chi.Router) {
	body := LimitBody(s.deps.MaxBodyBytes)
	r.With(body, s.rateLimit("signup")).Post("/signup", s.signup)
	r.With(body, s.rateLimit("login")).Post("/login", s.login)
	r.With(body, s.authenticate(jwtOnly)).Post("/switch-team", s.switchTeam)
	// Sign-in through providers. The callback is where a provider's answer
	// is spent, so it shares the signup/login rate limit's window.
	r.Get("/providers", s.oauthProviders)
	r.With(body, s.rateLimit("oauth-exchange")).Post("/oauth/exchange", s.oauthExchange)
	r.Get("/oauth/{provider}", s.oauthStart)
	r.With(s.rateLimit("oauth")).Get("/oauth/{provider}/callback", s.oauthCallback)
	r.Post("/logout", s.logout)
}

func (s *Server) meRoutes(r chi.Router) {
	r.Use(LimitBody(s.deps.MaxBodyBytes), s.authenticate(jwtOnly))
	r.Get("/", s.getMe)
	r.Patch("/", s.patchMe)
	r.Post("/password", s.changePassword)
	r.Get("/identities", s.listIdentities)
	r.Post("/identities/{provider}", s.linkIdentity)
	r.Delete("/identities/{provider}", s.unlinkIdentity)
}

func (s *Server) teamRoutes(r chi.Router) {
	r.Use(LimitBody(s.deps.MaxBodyBytes), s.authenticate(jwtOnly))
	r.Get("/", s.listTeams)
	r.Post("/", s.createTeam)
	r.Get("/{team_id}", s.getTeam)
	r.Patch("/{team_id}", s.renameTeam)
	r.Delete("/{team_id}", s.deleteTeam)
	r.Get("/{team_id}/members", s.listMembers)
	r.Post("/{team_id}/members", s.addMember)
	r.Patch("/{team_id}/members/{user_id}", s.updateMember)
	r.Delete("/{team_id}/members/{user_id}", s.removeMember)
}

func (s *Server) keyRoutes(r chi.Router) {
	r.Use(LimitBody(s.deps.MaxBodyBytes), s.authenticate(jwtOnly))
	r.Get("/", s.listAPIKeys)
	r.Post("/", s.createAPIKey)
	r.Delete("/{key_id}", s.deleteAPIKey)
}

func (s *Server) snapshotRoutes(r chi.Router) {
	r.Use(LimitBody(s.deps.MaxBodyBytes), s.authenticate(jwtOrKey))
	r.With(s.idempotent(fixedRoute("snapshots.create"), func() string { return ids.New(ids.Template) })).Post("/", s.createSnapshot)
	r.Get("/", s.listSnapshots)
	r.Delete("/{name}", s.deleteSnapshot)
}

func (s *Server) sandboxRoutes(r chi.Router) {
	r.Use(s.authenticate(jwtOrKey))
	body := LimitBody(s.deps.MaxBodyBytes)
	r.With(body, s.idempotent(fixedRoute("sandboxes.create"), func() string { return ids.New(ids.Sandbox) })).Post("/", s.createSandbox)
	r.Get("/", s.listSandboxes)
	r.Get("/stats", s.sandboxStats)
	r.Route("/{sandbox_id}", func(r chi.Router) {
		r.Get("/", s.getSandbox)
		r.Delete("/", s.deleteSandbox)
		r.Get("/exec/stream", s.execStream)
		r.Get("/processes/{process}/stream", s.processStream)
		r.Get("/pty", s.pty)
		// The upload limit is applied by the handler itself.
		r.Post("/files/write", s.writeFile)
		r.Get("/processes", s.listProcesses)
		r.Delete("/processes/{process}", s.killProcess)
		r.Get("/metrics", s.sandboxMetrics)
		r.Group(func(r chi.Router) {
			r.Use(body)
			r.Post("/exec", s.execSandbox)
			r.With(s.idempotent(sandboxRoute("sandboxes.pause"), nil)).Post("/pause", s.pauseSandbox)
			r.With(s.idempotent(sandboxRoute("sandboxes.resume"), nil)).Post("/resume", s.resumeSandbox)
			r.Post("/ping", s.pingSandbox)
			r.Patch("/", s.updateSandbox)
			r.Post("/preview-urls", s.createPreviewURL)
			r.Post("/files/read", s.readFile)
			r.Post("/files/list", s.listDir)
			r.Post("/files/mkdir", s.makeDir)
			r.Post("/files/remove", s.removePath)
		})
	})
}
