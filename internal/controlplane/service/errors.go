// Package service holds the control plane's rules: accounts, teams, API
// keys, sandboxes and their state machine, snapshots and the reconciler.
// It returns typed *Error values; the HTTP layer maps their Kind to a status
// in one place.
package service

import (
	"errors"
	"fmt"

	"connectrpc.com/connect"
)

// Kind classifies an error for the API.
type Kind int

const (
	KindInternal     Kind = iota // 500: a bug or a broken dependency
	KindInvalid                  // 400: bad input
	KindUnauthorized             // 401: missing or wrong credentials
	KindForbidden                // 403: authenticated but not allowed
	KindNotFound                 // 404: unknown, or another team's
	KindConflict                 // 409: wrong state, duplicate
	KindTooLarge                 // 413: body over the limit
	KindRateLimited              // 429
	KindUnavailable              // 503: no host, agent unreachable
	KindUpstream                 // 502: the agent failed
)

// Error is the service's error type.
type Error struct {
	Kind    Kind
	Code    string // snake_case, stable
	Message string // safe to show to the caller
	Field   string // the offending input field, when there is one
	Err     error  // cause, for logs only
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Code + ": " + e.Message + ": " + e.Err.Error()
	}
	return e.Code + ": " + e.Message
}

func (e *Error) Unwrap() error { return e.Err }

// AsError finds the *Error in err's chain.
func AsError(err error) (*Error, bool) {
	var e *Error
	ok := errors.As(err, &e)
	return e, ok
}

// Invalid is a 400 naming the field.
func Invalid(field, format string, args ...any) *Error {
	return &Error{Kind: KindInvalid, Code: "invalid_request", Field: field, Message: fmt.Sprintf(format, args...)}
}

// NotFound is a 404.
func NotFound(code, message string) *Error {
	return &Error{Kind: KindNotFound, Code: code, Message: message}
}

// Conflict is a 409.
func Conflict(code, message string) *Error {
	return &Error{Kind: KindConflict, Code: code, Message: message}
}

// Forbidden is a 403.
func Forbidden(code, message string) *Error {
	return &Error{Kind: KindForbidden, Code: code, Message: message}
}

// Unauthorized is a 401.
func Unauthorized(code, message string) *Error {
	return &Error{Kind: KindUnauthorized, Code: code, Message: message}
}

// Internal wraps an unexpected failure; the cause is logged, not shown.
func Internal(what string, err error) *Error {
	return &Error{Kind: KindInternal, Code: "internal", Message: "internal error", Err: fmt.Errorf("%s: %w", what, err)}
}

var errSandboxNotFound = NotFound("sandbox_not_found", "sandbox not found")

// fromAgent turns a host agent RPC error into a service error. The agent's
// message is shown for caller mistakes (not found, wrong state, bad
// argument), which are about the caller's own sandbox.
func fromAgent(what string, err error) *Error {
	if err == nil {
		return nil
	}
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return &Error{Kind: KindUnavailable, Code: "agent_unavailable", Message: "the sandbox's host agent is unavailable", Err: fmt.Errorf("%s: %w", what, err)}
	}
	msg := ce.Message()
	switch ce.Code() {
	case connect.CodeNotFound:
		return &Error{Kind: KindNotFound, Code: "not_found", Message: msg, Err: err}
	case connect.CodeFailedPrecondition:
		return &Error{Kind: KindConflict, Code: "invalid_state", Message: msg, Err: err}
	case connect.CodeAlreadyExists, connect.CodeAborted:
		return &Error{Kind: KindConflict, Code: "conflict", Message: msg, Err: err}
	case connect.CodeInvalidArgument, connect.CodeOutOfRange:
		return &Error{Kind: KindInvalid, Code: "invalid_request", Message: msg, Err: err}
	case connect.CodePermissionDenied:
		return &Error{Kind: KindForbidden, Code: "forbidden", Message: msg, Err: err}
	case connect.CodeResourceExhausted:
		return &Error{Kind: KindUnavailable, Code: "host_capacity", Message: "the host has no capacity left: " + msg, Err: err}
	case connect.CodeUnavailable, connect.CodeDeadlineExceeded, connect.CodeCanceled:
		return &Error{Kind: KindUnavailable, Code: "agent_unavailable", Message: "the sandbox's host agent is unavailable", Err: fmt.Errorf("%s: %w", what, err)}
	default:
		return &Error{Kind: KindUpstream, Code: "agent_error", Message: "the host agent failed to " + what, Err: err}
	}
}
