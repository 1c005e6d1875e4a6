package sandbox

import (
	"errors"
	"fmt"
)

// Code classifies manager errors so the RPC server maps them to wire codes
// in one place.
type Code int

const (
	CodeInternal Code = iota
	CodeNotFound
	CodeInvalidArgument
	CodeFailedPrecondition
	CodeUnavailable
	CodeAlreadyExists
	CodeResourceExhausted
	CodePermissionDenied
)

func (c Code) String() string {
	switch c {
	case CodeNotFound:
		return "not found"
	case CodeInvalidArgument:
		return "invalid argument"
	case CodeFailedPrecondition:
		return "failed precondition"
	case CodeUnavailable:
		return "unavailable"
	case CodeAlreadyExists:
		return "already exists"
	case CodeResourceExhausted:
		return "resource exhausted"
	case CodePermissionDenied:
		return "permission denied"
	default:
		return "internal"
	}
}

// Error is a classified manager error.
type Error struct {
	Code Code
	Msg  string
	Err  error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Msg + ": " + e.Err.Error()
	}
	return e.Msg
}

func (e *Error) Unwrap() error { return e.Err }

func errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Msg: fmt.Sprintf(format, args...)}
}

func wrapErr(code Code, err error, format string, args ...any) *Error {
	return &Error{Code: code, Msg: fmt.Sprintf(format, args...), Err: err}
}

// CodeOf returns the code of the outermost *Error in err's chain, or
// CodeInternal.
func CodeOf(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}

func notFound(id string) *Error { return errorf(CodeNotFound, "sandbox %q not found", id) }
