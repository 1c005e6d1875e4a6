package sandbox

import (
	"fmt"

	"github.com/wrenn-dev/wrenn/internal/agent/agenterr"
)

// The manager's errors are agenterr's domain errors: callers test them with
// errors.Is(err, agenterr.ErrNotFound) and so on, and the RPC server maps
// them to wire codes. An error of no kind is an internal failure.

func errorf(kind error, format string, args ...any) error {
	if kind == nil {
		return fmt.Errorf(format, args...)
	}
	return agenterr.New(kind, format, args...)
}

func wrapErr(kind, err error, format string, args ...any) error {
	if kind == nil {
		return fmt.Errorf(format+": %w", append(args, err)...)
	}
	return agenterr.Wrap(kind, err, format, args...)
}

func notFound(id string) error { return errorf(agenterr.ErrNotFound, "sandbox %q not found", id) }
