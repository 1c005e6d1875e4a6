package api

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/wrenn-dev/wrenn/internal/controlplane/auth"
	"github.com/wrenn-dev/wrenn/internal/controlplane/hostauth"
	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
	"github.com/wrenn-dev/wrenn/internal/hostreport"
)

// HostUserAuth turns a user session JWT into an AuthContext; the account
// service implements it.
type HostUserAuth interface {
	AuthenticateJWT(ctx context.Context, token string) (auth.AuthContext, error)
}

// mountHosts registers /v1/hosts. The routes are always registered (the
// spec test walks them); without Deps.Hosts they answer 503.
func (s *Server) mountHosts(r chi.Router) {
	r.Route("/v1/hosts", func(r chi.Router) {
		// Agents: a one-time token or a refresh token in the body.
		r.Post("/register", s.hostRegister)
		r.Post("/auth/refresh", s.hostRefresh)
		// Agents: their host JWT.
		r.With(s.requireHostJWT).Post("/{id}/heartbeat", s.hostHeartbeat)
		// Users: a session JWT.
		r.Group(func(r chi.Router) {
			r.Use(s.hostsReadyMW, s.hostUserSession)
			r.Post("/", s.createHost)
			r.Get("/", s.listHosts)
			r.Get("/{id}", s.getHost)
			r.Delete("/{id}", s.deleteHost)
			r.Post("/{id}/token", s.regenerateHostToken)
		})
	})
}

type hostIDKey struct{}

func bearer(r *http.Request) string {
	h := r.Header.Get("Authorization")
	if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		return strings.TrimSpace(h[7:])
	}
	return ""
}

func (s *Server) hostsReady(w http.ResponseWriter) bool {
	if s.deps.Hosts == nil {
		WriteError(w, service.CodeHostsUnavailable, "host management is not configured")
		return false
	}
	return true
}

// requireHostJWT admits host agents only: a user's JWT is signed with
// another key and has no host audience, so it never verifies here.
func (s *Server) requireHostJWT(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.hostsReady(w) {
			return
		}
		id, err := s.deps.Hosts.AuthenticateHost(bearer(r))
		if err != nil {
			s.writeHostError(w, r, err)
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), hostIDKey{}, id)))
	})
}

// hostUserSession admits user sessions only (API keys get 403, host JWTs
// 401), through the API's authentication when Service is configured.
func (s *Server) hostUserSession(next http.Handler) http.Handler {
	if s.deps.Service != nil {
		return s.authenticate(jwtOnly)(next)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok := bearer(r)
		if tok == "" || s.deps.HostUserAuth == nil {
			s.writeErr(w, r, service.Unauthorized(service.CodeUnauthenticated, "authentication required: send Authorization: Bearer <token>"))
			return
		}
		a, err := s.deps.HostUserAuth.AuthenticateJWT(r.Context(), tok)
		if err != nil {
			s.writeErr(w, r, err)
			return
		}
		next.ServeHTTP(w, r.WithContext(auth.WithContext(r.Context(), a)))
	})
}

func (s *Server) hostsReadyMW(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.hostsReady(w) {
			next.ServeHTTP(w, r)
		}
	})
}

// maxHostBody bounds host request bodies.
const maxHostBody = 64 << 10

// decodeHostBody reads a JSON object (see decodeJSON) of at most
// maxHostBody bytes; an error is answered in the API's format.
func (s *Server) decodeHostBody(w http.ResponseWriter, r *http.Request, v any, optional bool) bool {
	r.Body = http.MaxBytesReader(w, r.Body, maxHostBody)
	if err := decodeJSON(r, v, optional); err != nil {
		s.writeErr(w, r, err)
		return false
	}
	return true
}

// writeHostError adds the affected sandboxes to a 409 for a busy host;
// everything else goes through the API's one error mapping.
func (s *Server) writeHostError(w http.ResponseWriter, r *http.Request, err error) {
	var inUse *hostauth.HostInUseError
	if errors.As(err, &inUse) {
		WriteJSON(w, StatusOf(service.CodeHostHasSandboxes.Kind()), map[string]any{
			"error":     errorDetail{Code: string(service.CodeHostHasSandboxes), Message: "the host still has sandboxes; delete with ?force=true to destroy them"},
			"sandboxes": inUse.Sandboxes,
		})
		return
	}
	s.writeErr(w, r, err)
}

func userAuth(r *http.Request) auth.AuthContext {
	return caller(r)
}

func (s *Server) createHost(w http.ResponseWriter, r *http.Request) {
	var in hostauth.CreateHostInput
	if !s.decodeHostBody(w, r, &in, false) {
		return
	}
	out, err := s.deps.Hosts.CreateHost(r.Context(), userAuth(r), in)
	if err != nil {
		s.writeHostError(w, r, err)
		return
	}
	WriteJSON(w, http.StatusCreated, out)
}

func (s *Server) listHosts(w http.ResponseWriter, r *http.Request) {
	out, err := s.deps.Hosts.ListHosts(r.Context(), userAuth(r))
	if err != nil {
		s.writeHostError(w, r, err)
		return
	}
	WriteJSON(w, http.StatusOK, map[string]any{"hosts": out})
}

func (s *Server) getHost(w http.ResponseWriter, r *http.Request) {
	out, err := s.deps.Hosts.GetHost(r.Context(), userAuth(r), chi.URLParam(r, "id"))
	if err != nil {
		s.writeHostError(w, r, err)
		return
	}
	WriteJSON(w, http.StatusOK, out)
}

func (s *Server) regenerateHostToken(w http.ResponseWriter, r *http.Request) {
	out, err := s.deps.Hosts.RegenerateToken(r.Context(), userAuth(r), chi.URLParam(r, "id"))
	if err != nil {
		s.writeHostError(w, r, err)
		return
	}
	WriteJSON(w, http.StatusOK, out)
}

func (s *Server) deleteHost(w http.ResponseWriter, r *http.Request) {
	force := false
	switch v := r.URL.Query().Get("force"); v {
	case "", "false", "0":
	case "true", "1":
		force = true
	default:
		WriteError(w, service.CodeInvalidRequest, "force must be true or false, got "+v)
		return
	}
	out, err := s.deps.Hosts.DeleteHost(r.Context(), userAuth(r), chi.URLParam(r, "id"), force)
	if err != nil {
		s.writeHostError(w, r, err)
		return
	}
	WriteJSON(w, http.StatusOK, out)
}

func (s *Server) hostRegister(w http.ResponseWriter, r *http.Request) {
	if !s.hostsReady(w) {
		return
	}
	var in hostauth.RegisterInput
	if !s.decodeHostBody(w, r, &in, false) {
		return
	}
	out, err := s.deps.Hosts.Register(r.Context(), in)
	if err != nil {
		s.writeHostError(w, r, err)
		return
	}
	WriteJSON(w, http.StatusOK, out)
}

func (s *Server) hostRefresh(w http.ResponseWriter, r *http.Request) {
	if !s.hostsReady(w) {
		return
	}
	var in hostauth.RefreshInput
	// A malformed body is an auth failure too: the agent is not let in.
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxHostBody))
	if err := dec.Decode(&in); err != nil || in.RefreshToken == "" {
		WriteError(w, service.CodeInvalidRefreshToken, "a refresh_token is required")
		return
	}
	out, err := s.deps.Hosts.Refresh(r.Context(), in)
	if err != nil {
		s.writeHostError(w, r, err)
		return
	}
	WriteJSON(w, http.StatusOK, out)
}

func (s *Server) hostHeartbeat(w http.ResponseWriter, r *http.Request) {
	caller, _ := r.Context().Value(hostIDKey{}).(string)
	// The body (the host's resource report) is optional: an empty one keeps
	// what the host reported before.
	var in *hostreport.Resources
	if !s.decodeHostBody(w, r, &in, true) {
		return
	}
	out, err := s.deps.Hosts.Heartbeat(r.Context(), caller, chi.URLParam(r, "id"), in)
	if err != nil {
		s.writeHostError(w, r, err)
		return
	}
	WriteJSON(w, http.StatusOK, map[string]any{"status": out.Status})
}
