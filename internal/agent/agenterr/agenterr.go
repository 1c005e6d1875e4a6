// Package agenterr holds the host agent's domain errors: what went wrong,
// in the agent's own terms. The sandbox manager and the envd client return
// errors that match one of the sentinels below with errors.Is (and carry
// the request field at fault, when one is); the agent's RPC server maps
// them to Connect codes in one place (internal/agent/server).
package agenterr

import (
	"errors"
	"fmt"
)

// The agent's domain errors.
var (
	// ErrNotFound: no such sandbox, template, process, terminal or path.
	ErrNotFound = errors.New("not found")
	// ErrExists: a sandbox or template with that name exists.
	ErrExists = errors.New("already exists")
	// ErrInvalidArgument: a request field breaks a rule of the agent or of
	// the guest (a path longer than the guest allows, a bad name...).
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrInvalidState: the sandbox is not in the state the operation needs,
	// or left it while the operation ran (an exec racing a pause).
	ErrInvalidState = errors.New("invalid state")
	// ErrPermissionDenied: the guest user may not do this.
	ErrPermissionDenied = errors.New("permission denied")
	// ErrDiskFull: the sandbox's own disk is full.
	ErrDiskFull = errors.New("the sandbox's disk is full")
	// ErrTooLarge: over a size limit of the agent's API.
	ErrTooLarge = errors.New("too large")
	// ErrUnavailable: the guest or a host resource cannot be reached now;
	// a retry may work.
	ErrUnavailable = errors.New("unavailable")
)

// Error is a domain error with its message, the request field at fault
// and the cause. errors.Is(err, Kind) holds.
type Error struct {
	// Kind is one of the sentinels above.
	Kind  error
	Field string
	Msg   string
	Err   error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Msg + ": " + e.Err.Error()
	}
	return e.Msg
}

// Is matches the error's kind.
func (e *Error) Is(target error) bool { return target == e.Kind }

func (e *Error) Unwrap() error { return e.Err }

// New returns an error of kind with a formatted message.
func New(kind error, format string, args ...any) *Error {
	return &Error{Kind: kind, Msg: fmt.Sprintf(format, args...)}
}

// Wrap returns an error of kind with a formatted message and a cause.
func Wrap(kind, cause error, format string, args ...any) *Error {
	return &Error{Kind: kind, Msg: fmt.Sprintf(format, args...), Err: cause}
}

// Invalid is ErrInvalidArgument naming field.
func Invalid(field, format string, args ...any) *Error {
	return &Error{Kind: ErrInvalidArgument, Field: field, Msg: fmt.Sprintf(format, args...)}
}

// FieldOf returns the request field named by the outermost Error in err's
// chain that names one.
func FieldOf(err error) string {
	for err != nil {
		var e *Error
		if !errors.As(err, &e) {
			return ""
		}
		if e.Field != "" {
			return e.Field
		}
		err = e.Err
	}
	return ""
}
