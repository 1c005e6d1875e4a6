package api

import (
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
)

func (s *Server) auditRoutes(r chi.Router) {
	r.Use(s.authenticate(jwtOnly))
	r.Get("/", s.listAuditLogs)
}

// queryTime reads an RFC 3339 time parameter; nil when absent.
func queryTime(r *http.Request, name string) (*time.Time, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return nil, nil
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return nil, service.Invalid(name, "%s must be an RFC 3339 time such as 2026-01-02T15:04:05Z", name)
	}
	return &t, nil
}

func (s *Server) listAuditLogs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	in := service.ListAuditLogsInput{Scope: q.Get("scope"), ResourceTypes: multiValues(q, "resource_type"),
		Actions: multiValues(q, "action"), Statuses: multiValues(q, "status"), ActorID: q.Get("actor_id"),
		ResourceID: q.Get("resource_id"), Cursor: q.Get("cursor")}
	var err error
	if in.Limit, err = pageLimit(q); err == nil {
		if in.Since, err = queryTime(r, "since"); err == nil {
			in.Until, err = queryTime(r, "until")
		}
	}
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	page, err := s.deps.Service.ListAuditLogs(r.Context(), caller(r), in)
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	WriteJSON(w, http.StatusOK, page)
}
