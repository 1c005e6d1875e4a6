// Package envdwire names the Wrenn-only extensions of the envd wire
// protocol that both envd and its clients use. E2B's messages are never
// changed; extensions are request headers or separate endpoints.
package envdwire

import (
	"net/http"
	"path"
	"strings"
)

// DetachHeader on a process.Process/Start request, with the value "true",
// makes envd end the stream right after the start event while the process
// runs on in the background with its output kept for Connect (up to the
// replay bound). Without it, a client that starts a process and hangs up at
// once may already have been sent, and so be counted as having received,
// its first output, which a later Connect would then not replay.
const DetachHeader = "Wrenn-Detach"

// ErrorReasonHeader is set in the metadata of a Connect error answered by
// envd when the plain code is ambiguous: ResourceExhausted means a full
// disk, too many watchers or too many entries alike. Clients that do not
// know it (E2B's SDKs) see the same code and message as before.
const ErrorReasonHeader = "Wrenn-Error-Reason"

// ReasonDiskFull is ErrorReasonHeader's value for ENOSPC in the guest.
const ReasonDiskFull = "disk-full"

// E2BVersion is the version of E2B's envd whose behaviour Wrenn's envd
// gives, as E2B's SDKs read it (the sandbox's envdVersion) to choose what
// they use: 0.4.0 and later run commands as the default user, 0.5.2 close
// stdin, 0.5.7 upload raw bodies, 0.6.2 file metadata, 0.6.3 entries in
// watch events. (0.6.4, watching network mounts, is not claimed.)
const E2BVersion = "0.6.3"

// Port is envd's port in the guest (E2B's).
const Port = 49983

// PublicPath reports whether method and path are part of envd's public
// surface, which SDKs call with the sandbox's access token: the process
// and filesystem services, files, health, metrics and envs. Everything
// else (/init, Wrenn's /wrenn/...) only the host agent may call.
func PublicPath(method, p string) bool {
	if path.Clean(p) != p {
		return false // dot segments or doubled slashes would land elsewhere
	}
	switch {
	case strings.HasPrefix(p, "/process.Process/"), strings.HasPrefix(p, "/filesystem.Filesystem/"):
		return method == http.MethodPost || method == http.MethodGet
	case p == "/files":
		return method == http.MethodGet || method == http.MethodPost
	case p == "/health", p == "/metrics", p == "/envs":
		return method == http.MethodGet
	}
	return false
}
