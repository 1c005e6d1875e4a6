package api

import (
	"net"
	"net/http"
	"time"

	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
)

func (s *Server) updateSandbox(w http.ResponseWriter, r *http.Request) {
	var in service.UpdateSandboxInput
	if err := decodeJSON(r, &in, false); err != nil {
		s.writeErr(w, r, err)
		return
	}
	sb, err := s.deps.Service.UpdateSandbox(r.Context(), caller(r), sandboxID(r), in)
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	WriteJSON(w, http.StatusOK, sb)
}

// previewURLInput is POST /v1/sandboxes/{id}/preview-urls.
type previewURLInput struct {
	Port   int `json:"port"`
	TTLSec int `json:"ttl_sec"`
}

// createPreviewURL signs a URL of one port of the team's sandbox for a
// browser (docs/proxy.md).
func (s *Server) createPreviewURL(w http.ResponseWriter, r *http.Request) {
	if s.deps.ProxyNames == nil {
		WriteError(w, service.CodeServiceUnavailable, "the sandbox proxy is not configured")
		return
	}
	var in previewURLInput
	if err := decodeJSON(r, &in, false); err != nil {
		s.writeErr(w, r, err)
		return
	}
	if in.TTLSec < 0 {
		s.writeErr(w, r, service.Invalid("ttl_sec", "ttl_sec must not be negative"))
		return
	}
	sb, err := s.deps.Service.GetSandbox(r.Context(), caller(r), sandboxID(r))
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	if sb.Status == service.StatusStopped || sb.Status == service.StatusError {
		s.writeErr(w, r, service.NotFound(service.CodeSandboxNotFound, "sandbox not found"))
		return
	}
	_, reqPort, _ := net.SplitHostPort(r.Host)
	p, err := s.deps.ProxyNames.NewPreview(sb.TeamID, sb.ID, in.Port, time.Duration(in.TTLSec)*time.Second, reqPort)
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	WriteJSON(w, http.StatusCreated, p)
}
