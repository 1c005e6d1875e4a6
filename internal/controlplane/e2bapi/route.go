package e2bapi

import (
	"net/http"
	"strconv"

	"github.com/wrenn-dev/wrenn/internal/controlplane/auth"
	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
	"github.com/wrenn-dev/wrenn/internal/envdwire"
)

// The headers E2B's SDKs put on envd traffic when E2B_SANDBOX_URL sends it
// to one address: which sandbox and port it is for.
const (
	sandboxIDHeader   = "E2b-Sandbox-Id"
	sandboxPortHeader = "E2b-Sandbox-Port"
	envdTokenHeader   = "X-Access-Token"
)

// Forwarder sends a request on to a port of a team's sandbox (the sandbox
// proxy); envd is whether envd's own port may be reached.
type Forwarder func(w http.ResponseWriter, r *http.Request, teamID, sandboxID string, port int, envd bool)

// Wrap routes requests that carry E2b-Sandbox-Id to that sandbox through
// the proxy, after their own checks, and hands every other request to next.
func (s *Server) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get(sandboxIDHeader) == "" || s.deps.Forward == nil {
			next.ServeHTTP(w, r)
			return
		}
		s.route(w, r)
	})
}

// route authorizes one request for a sandbox's port. envd's port takes the
// sandbox's envd token, which envd checks again, and only envd's public
// paths (never /init, which only the agent calls); any other port takes
// the owning team's API key, which the proxy does not pass on.
func (s *Server) route(w http.ResponseWriter, r *http.Request) {
	id := r.Header.Get(sandboxIDHeader)
	port, err := strconv.Atoi(r.Header.Get(sandboxPortHeader))
	if err != nil || port < 1 || port > 65535 {
		s.writeErr(w, r, service.Invalid(sandboxPortHeader, "%s must be a TCP port (1-65535)", sandboxPortHeader))
		return
	}
	var team string
	if port == envdwire.Port {
		if !envdwire.PublicPath(r.Method, r.URL.Path) {
			s.writeErr(w, r, service.Forbidden(service.CodeForbidden, r.Method+" "+r.URL.Path+" of envd is not reachable from outside the host"))
			return
		}
		team, err = s.deps.Service.AuthorizeEnvd(r.Context(), id, r.Header.Get(envdTokenHeader))
	} else {
		key := r.Header.Get("X-API-Key")
		if key == "" {
			s.writeErr(w, r, service.Unauthorized(service.CodeUnauthenticated, "a sandbox port other than envd's takes the owning team's X-API-Key"))
			return
		}
		var a auth.AuthContext
		a, err = s.deps.Service.AuthenticateAPIKey(r.Context(), key)
		team = a.TeamID
	}
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	s.deps.Forward(w, r, team, id, port, port == envdwire.Port)
}
