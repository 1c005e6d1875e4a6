package api

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"

	"github.com/go-chi/chi/v5/middleware"

	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
)

// errorBody is the one error format of the REST API:
// {"error":{"code":"snake_case","message":"human text"}}, plus "field" when
// one input field is at fault.
type errorBody struct {
	Error errorDetail `json:"error"`
}

type errorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Field   string `json:"field,omitempty"`
}

// WriteError writes the API's error format with the given status.
func WriteError(w http.ResponseWriter, status int, code, message string) {
	WriteJSON(w, status, errorBody{Error: errorDetail{Code: code, Message: message}})
}

// WriteJSON writes v as JSON with the given status.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// statusOf is the one place where error kinds become HTTP statuses.
func statusOf(k service.Kind) int {
	switch k {
	case service.KindInvalid:
		return http.StatusBadRequest
	case service.KindUnauthorized:
		return http.StatusUnauthorized
	case service.KindForbidden:
		return http.StatusForbidden
	case service.KindNotFound:
		return http.StatusNotFound
	case service.KindConflict:
		return http.StatusConflict
	case service.KindTooLarge:
		return http.StatusRequestEntityTooLarge
	case service.KindRateLimited:
		return http.StatusTooManyRequests
	case service.KindUnavailable:
		return http.StatusServiceUnavailable
	case service.KindUpstream:
		return http.StatusBadGateway
	default:
		return http.StatusInternalServerError
	}
}

// writeErr answers with err in the API's format. Anything that is not a
// service error is a bug: logged, shown as "internal error".
func (s *Server) writeErr(w http.ResponseWriter, r *http.Request, err error) {
	se, ok := service.AsError(err)
	if !ok {
		se = service.Internal("unclassified", err)
	}
	status := statusOf(se.Kind)
	if status >= 500 {
		lvl := slog.LevelWarn
		if status == http.StatusInternalServerError {
			lvl = slog.LevelError
		}
		s.deps.Logger.Log(r.Context(), lvl, "request failed", "method", r.Method, "path", r.URL.Path,
			"status", status, "code", se.Code, "err", errString(se), "request_id", middleware.GetReqID(r.Context()))
	}
	if se.Kind == service.KindRateLimited {
		w.Header().Set("Retry-After", "60")
	}
	WriteJSON(w, status, errorBody{Error: errorDetail{Code: se.Code, Message: se.Message, Field: se.Field}})
}

func errString(e *service.Error) string {
	if e.Err == nil {
		return e.Message
	}
	return errors.Unwrap(e).Error()
}
