package service

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/wrenn-dev/wrenn/internal/agentwire"
	"github.com/wrenn-dev/wrenn/internal/controlplane/ids"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

func TestCursorRoundTrip(t *testing.T) {
	at := time.Date(2026, 11, 30, 12, 0, 0, 123456000, time.UTC)
	c := EncodeCursor(at, "sb-abcdefghijklmnopqrst")
	got, id, err := DecodeCursor(c, ids.Sandbox)
	if err != nil || !got.Equal(at) || id != "sb-abcdefghijklmnopqrst" {
		t.Fatalf("round trip: %v %s %v", got, id, err)
	}
	for _, bad := range []string{"", "!!", "bm9waXBl", EncodeCursor(at, "usr-abc")[:10]} {
		if _, _, err := DecodeCursor(bad, ids.Sandbox); err == nil {
			t.Errorf("cursor %q accepted", bad)
		}
	}
}

func TestFromAgent(t *testing.T) {
	tests := []struct {
		err   error
		kind  Kind
		code  Code
		field string
	}{
		{connect.NewError(connect.CodeNotFound, errors.New("no such file")), KindNotFound, "not_found", ""},
		{connect.NewError(connect.CodeFailedPrecondition, errors.New("paused")), KindConflict, "invalid_state", ""},
		{connect.NewError(connect.CodeInvalidArgument, errors.New("bad path")), KindInvalid, "invalid_request", ""},
		{connect.NewError(connect.CodeUnavailable, errors.New("dial tcp: refused")), KindUnavailable, "agent_unavailable", ""},
		{connect.NewError(connect.CodeDeadlineExceeded, errors.New("slow")), KindUnavailable, "agent_unavailable", ""},
		{connect.NewError(connect.CodeResourceExhausted, errors.New("full")), KindUnavailable, "host_capacity", ""},
		{connect.NewError(connect.CodeInternal, errors.New("qemu crashed")), KindUpstream, "agent_error", ""},
		{errors.New("plain network error"), KindUnavailable, "agent_unavailable", ""},
		// The agent's error details (internal/agentwire) refine the code.
		{agentwire.DiskFull(errors.New("no space left")), KindStorageFull, "sandbox_disk_full", ""},
		{agentwire.NewError(connect.CodeInvalidArgument, pb.ErrorReason_ERROR_REASON_UNSPECIFIED, "path", errors.New("path too long")), KindInvalid, "invalid_request", "path"},
	}
	for _, tt := range tests {
		got := FromAgent("do it", tt.err)
		if got.Kind != tt.kind || got.Code != tt.code || got.Message == "" || got.Field != tt.field {
			t.Errorf("%v: got %+v", tt.err, got)
		}
		if tt.kind == KindUpstream && got.Message != "the host agent failed to do it" {
			t.Errorf("internal agent detail leaked: %q", got.Message)
		}
	}
	if FromAgent("x", nil) != nil {
		t.Fatal("nil error mapped to non-nil")
	}
}

// A database that cannot be reached is 503 database_unavailable with
// Retry-After; a query that failed is still a 500.
func TestInternalClassifiesDatabaseOutages(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, refused := pgconn.Connect(ctx, "postgres://x@"+addr+"/x?sslmode=disable&connect_timeout=5")
	if refused == nil {
		t.Fatal("connect to a closed port succeeded")
	}
	tests := []struct {
		name string
		err  error
		code Code
	}{
		{"connection refused", refused, CodeDatabaseUnavailable},
		{"admin shutdown", &pgconn.PgError{Code: "57P01", Message: "terminating connection due to administrator command"}, CodeDatabaseUnavailable},
		{"starting up", &pgconn.PgError{Code: "57P03", Message: "the database system is starting up"}, CodeDatabaseUnavailable},
		{"connection failure", &pgconn.PgError{Code: "08006"}, CodeDatabaseUnavailable},
		{"network", &net.OpError{Op: "read", Net: "tcp", Err: errors.New("connection reset by peer")}, CodeDatabaseUnavailable},
		{"unique violation", &pgconn.PgError{Code: "23505"}, CodeInternal},
		{"a bug", errors.New("nil map"), CodeInternal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Internal("load", fmt.Errorf("query: %w", tt.err))
			if got.Code != tt.code || got.Kind != tt.code.Kind() || (tt.code == CodeDatabaseUnavailable) != (got.RetryAfter() > 0) {
				t.Fatalf("got %+v (retry after %v), want code %s", got, got.RetryAfter(), tt.code)
			}
		})
	}
}
