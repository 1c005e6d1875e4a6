package e2bapi

import (
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5/middleware"

	"github.com/wrenn-dev/wrenn/internal/controlplane/api"
	"github.com/wrenn-dev/wrenn/internal/controlplane/auth"
	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
)

// errorBody is E2B's error format: the HTTP status again as code, and a
// message. (The SDKs map the status to their error classes.)
type errorBody struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

// writeErr answers err in E2B's format, logging server-side failures.
func (s *Server) writeErr(w http.ResponseWriter, r *http.Request, err error) {
	se, ok := service.AsError(err)
	if !ok {
		se = service.Internal("unclassified", err)
	}
	// Wrenn's one table of kinds and statuses holds here too: E2B's
	// contract uses the same statuses (400, 401, 404, 409, 429...).
	status := api.StatusOf(se.Kind)
	if status >= 500 {
		cause := se.Message
		if se.Err != nil {
			cause = errors.Unwrap(se).Error()
		}
		s.deps.Logger.Log(r.Context(), slog.LevelWarn, "e2b request failed", "method", r.Method, "path", r.URL.Path,
			"status", status, "code", se.Code, "err", cause, "request_id", middleware.GetReqID(r.Context()))
	}
	if d := se.RetryAfter(); d > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int(d.Round(time.Second)/time.Second)))
	}
	api.WriteJSON(w, status, errorBody{Code: status, Message: se.Message})
}

// authenticate takes a Wrenn API key in X-API-Key (header names are case
// insensitive: the SDK sends X-API-KEY), as E2B's API takes its keys.
func (s *Server) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := r.Header.Get("X-API-Key")
		if key == "" {
			s.writeErr(w, r, service.Unauthorized(service.CodeUnauthenticated, "authentication required: send X-API-Key: <Wrenn API key>"))
			return
		}
		ac, err := s.deps.Service.AuthenticateAPIKey(r.Context(), key)
		if err != nil {
			s.writeErr(w, r, err)
			return
		}
		next.ServeHTTP(w, r.WithContext(auth.WithContext(r.Context(), ac)))
	})
}

func caller(r *http.Request) auth.AuthContext {
	ac, _ := auth.FromContext(r.Context())
	return ac
}
