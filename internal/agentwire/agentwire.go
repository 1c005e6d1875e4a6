// Package agentwire is the host agent's RPC error contract, shared by the
// side that answers (the agent's server, and the control plane's test
// agent) and the side that reads (the control plane's service layer).
// An agent error is a Connect code plus, when the code alone does not say
// what the user must be told, one hostagent.v1.ErrorDetail as a Connect
// error detail (proto/hostagent/v1/errors.proto): the reason (DISK_FULL
// with RESOURCE_EXHAUSTED) and the request field at fault (with
// INVALID_ARGUMENT). Nobody reads the message to classify an error.
package agentwire

import (
	"errors"
	"fmt"
	"strings"

	"connectrpc.com/connect"

	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// NewError returns a Connect error with code, carrying reason and field as
// an ErrorDetail when either is set.
func NewError(code connect.Code, reason pb.ErrorReason, field string, err error) *connect.Error {
	ce := connect.NewError(code, err)
	if reason == pb.ErrorReason_ERROR_REASON_UNSPECIFIED && field == "" {
		return ce
	}
	// NewErrorDetail only fails for a message that cannot be marshalled.
	if d, derr := connect.NewErrorDetail(&pb.ErrorDetail{Reason: reason, Field: field}); derr == nil {
		ce.AddDetail(d)
	}
	return ce
}

// DiskFull is the agent's answer when the sandbox's disk is full.
func DiskFull(err error) *connect.Error {
	return NewError(connect.CodeResourceExhausted, pb.ErrorReason_ERROR_REASON_DISK_FULL, "", err)
}

// Detail returns the ErrorDetail a Connect error in err's chain carries
// (an empty one when there is none).
func Detail(err error) *pb.ErrorDetail {
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return &pb.ErrorDetail{}
	}
	for _, d := range ce.Details() {
		v, derr := d.Value()
		if derr != nil {
			continue
		}
		if ed, ok := v.(*pb.ErrorDetail); ok {
			return ed
		}
	}
	return &pb.ErrorDetail{}
}

// Linux's limits inside a guest: a path is at most PATH_MAX-1 bytes, each
// name in it at most NAME_MAX.
const (
	GuestPathMax = 4095
	GuestNameMax = 255
)

// CheckGuestPath says why the guest's kernel would refuse path (nil: it
// would not). An agent answers such a path with INVALID_ARGUMENT naming
// the field "path".
func CheckGuestPath(path string) error {
	switch {
	case path == "":
		return errors.New("path is required")
	case len(path) > GuestPathMax:
		return fmt.Errorf("path has %d bytes; the sandbox allows at most %d", len(path), GuestPathMax)
	case strings.IndexByte(path, 0) >= 0:
		return errors.New("path contains a NUL byte")
	}
	for _, name := range strings.Split(path, "/") {
		if len(name) > GuestNameMax {
			return fmt.Errorf("a name in path has %d bytes; the sandbox allows at most %d", len(name), GuestNameMax)
		}
	}
	return nil
}
