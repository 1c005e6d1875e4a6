package api

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"time"

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

// WriteError answers with code's status and the API's error format.
func WriteError(w http.ResponseWriter, code service.Code, message string) {
	writeError(w, service.Errorf(code, "%s", message))
}

// WriteServiceError answers with se in the API's error format (for
// handlers outside the router, such as the sandbox proxy's).
func WriteServiceError(w http.ResponseWriter, se *service.Error) { writeError(w, se) }

// WriteJSON writes v as JSON with the given status.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// kindStatus is the one place where error kinds become HTTP statuses, for
// REST answers and stream errors alike.
var kindStatus = map[service.Kind]int{
	service.KindInternal:         http.StatusInternalServerError,
	service.KindInvalid:          http.StatusBadRequest,
	service.KindUnauthorized:     http.StatusUnauthorized,
	service.KindForbidden:        http.StatusForbidden,
	service.KindNotFound:         http.StatusNotFound,
	service.KindMethodNotAllowed: http.StatusMethodNotAllowed,
	service.KindConflict:         http.StatusConflict,
	service.KindUnprocessable:    http.StatusUnprocessableEntity,
	service.KindTooLarge:         http.StatusRequestEntityTooLarge,
	service.KindRateLimited:      http.StatusTooManyRequests,
	service.KindUpstream:         http.StatusBadGateway,
	service.KindUnavailable:      http.StatusServiceUnavailable,
	service.KindStorageFull:      http.StatusInsufficientStorage,
	service.KindGatewayTimeout:   http.StatusGatewayTimeout,
}

// StatusOf is the HTTP status of an error kind (kindStatus); the E2B API
// (e2bapi) answers with it too.
func StatusOf(k service.Kind) int {
	if st, ok := kindStatus[k]; ok {
		return st
	}
	return http.StatusInternalServerError
}

// asServiceError is err as a service error; anything else is a bug and
// becomes "internal error" (the cause is logged, not shown).
func asServiceError(what string, err error) *service.Error {
	if se, ok := service.AsError(err); ok {
		return se
	}
	return service.Internal(what, err)
}

// writeError writes se: status, Retry-After when the code advises one,
// and the body.
func writeError(w http.ResponseWriter, se *service.Error) {
	if d := se.RetryAfter(); d > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int(d.Round(time.Second)/time.Second)))
	}
	WriteJSON(w, StatusOf(se.Kind), errorBody{Error: errorDetail{Code: string(se.Code), Message: se.Message, Field: se.Field}})
}

// writeErr answers with err in the API's format, logging server-side
// failures.
func (s *Server) writeErr(w http.ResponseWriter, r *http.Request, err error) {
	se := asServiceError("unclassified", err)
	s.logFailure(r, se)
	writeError(w, se)
}

// logFailure logs se when it is the server's failure (5xx), not the caller's.
func (s *Server) logFailure(r *http.Request, se *service.Error) {
	if status := StatusOf(se.Kind); status >= 500 {
		lvl := slog.LevelWarn
		if status == http.StatusInternalServerError {
			lvl = slog.LevelError
		}
		s.deps.Logger.Log(r.Context(), lvl, "request failed", "method", r.Method, "path", r.URL.Path,
			"status", status, "code", se.Code, "err", errString(se), "request_id", middleware.GetReqID(r.Context()))
	}
}

func errString(e *service.Error) string {
	if e.Err == nil {
		return e.Message
	}
	return errors.Unwrap(e).Error()
}
