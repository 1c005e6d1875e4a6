package agentwire

import "strconv"

// The sandbox HTTP proxy's contract between the control plane and the
// agent: the control plane sends a user's request for TCP port P of sandbox
// S to the agent at ProxyPath(S, P, path); the agent forwards it to the
// guest. An answer the agent made itself (the guest was not reached)
// carries ProxyErrorHeader with one of the Proxy* reasons, so the control
// plane tells it from the guest's own answers (the agent removes that
// header from every guest answer).
const (
	ProxyPathPrefix  = "/proxy/"
	ProxyErrorHeader = "X-Wrenn-Proxy-Error"
)

// Reasons an agent gives in ProxyErrorHeader.
const (
	// ProxyNotFound: the agent has no such sandbox.
	ProxyNotFound = "sandbox_not_found"
	// ProxyNotRunning: the sandbox exists but is not running (paused).
	ProxyNotRunning = "not_running"
	// ProxyBadRequest: the path names no sandbox and port.
	ProxyBadRequest = "bad_request"
	// ProxyRefused: nothing accepted the connection in the guest (after
	// retrying while a just-started server binds), or it reset.
	ProxyRefused = "guest_unreachable"
	// ProxyTimeout: the guest never answered the connection.
	ProxyTimeout = "guest_timeout"
)

// ProxyPath is the agent path under which sandbox id's port is reached:
// the guest path follows it (ProxyPath(id, 8080) + "/index.html").
func ProxyPath(id string, port int) string {
	return ProxyPathPrefix + id + "/" + strconv.Itoa(port)
}
