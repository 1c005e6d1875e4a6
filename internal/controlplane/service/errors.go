// Package service holds the control plane's rules: accounts, teams, API
// keys, sandboxes and their state machine, snapshots and the reconciler.
// It returns typed *Error values whose codes are all in one table (codes);
// the HTTP layer maps their Kind to a status in one place.
package service

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/wrenn-dev/wrenn/internal/agentwire"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// Kind classifies an error for the API, which maps each kind to an HTTP
// status in one table (api/errors.go). To add a kind, add it here and
// there.
type Kind int

const (
	KindInternal         Kind = iota // 500: a bug or a broken dependency
	KindInvalid                      // 400: bad input
	KindUnauthorized                 // 401: missing or wrong credentials
	KindForbidden                    // 403: authenticated but not allowed
	KindNotFound                     // 404: unknown, or another team's
	KindMethodNotAllowed             // 405: no such method on a route
	KindConflict                     // 409: wrong state, duplicate
	KindUnprocessable                // 422: understood, but refused as a repeat
	KindTooLarge                     // 413: body over the limit
	KindRateLimited                  // 429
	KindUpstream                     // 502: the agent failed
	KindUnavailable                  // 503: no host, agent or database reachable now
	KindStorageFull                  // 507: the sandbox's disk is full
	KindGatewayTimeout               // 504: a guest never answered the proxy
)

// Code is a stable snake_case error code of the API. Every code is a
// constant below and has one row in codes; docs/api.md lists them all (a
// test compares the two, both ways).
type Code string

const (
	CodeInternal Code = "internal"

	CodeInvalidRequest  Code = "invalid_request"
	CodeUnknownTemplate Code = "unknown_template"
	CodeURLNotAllowed   Code = "url_not_allowed"

	CodeUnauthenticated          Code = "unauthenticated"
	CodeInvalidToken             Code = "invalid_token"
	CodeInvalidCredentials       Code = "invalid_credentials"
	CodeInvalidAPIKey            Code = "invalid_api_key"
	CodeSessionRevoked           Code = "session_revoked"
	CodeInvalidRegistrationToken Code = "invalid_registration_token"
	CodeInvalidRefreshToken      Code = "invalid_refresh_token"
	CodeRefreshTokenReused       Code = "refresh_token_reused"
	CodeInvalidHostToken         Code = "invalid_host_token"
	CodeInvalidOAuthState        Code = "invalid_oauth_state"
	CodeOAuthDenied              Code = "oauth_denied"
	CodeOAuthCodeRejected        Code = "oauth_code_rejected"
	CodeEmailUnverified          Code = "email_unverified"
	CodeInvalidOAuthCode         Code = "invalid_oauth_code"
	CodeInvalidPreviewToken      Code = "invalid_preview_token"

	CodeForbidden       Code = "forbidden"
	CodeSessionRequired Code = "session_required"
	CodeCSRFFailed      Code = "csrf_failed"
	CodeJWTRequired     Code = "jwt_required"
	CodeAdminRequired   Code = "admin_required"
	CodeBYOCNotEnabled  Code = "byoc_not_enabled"
	CodeWrongPassword   Code = "wrong_password"
	CodePortNotAllowed  Code = "port_not_allowed"

	CodeNotFound         Code = "not_found"
	CodeSandboxNotFound  Code = "sandbox_not_found"
	CodeSnapshotNotFound Code = "snapshot_not_found"
	CodeTeamNotFound     Code = "team_not_found"
	CodeMemberNotFound   Code = "member_not_found"
	CodeUserNotFound     Code = "user_not_found"
	CodeAPIKeyNotFound   Code = "api_key_not_found"
	CodeHostNotFound     Code = "host_not_found"
	CodeChannelNotFound  Code = "channel_not_found"
	CodeTemplateNotFound Code = "template_not_found"
	CodeBuildNotFound    Code = "build_not_found"

	CodeProviderNotConfigured Code = "provider_not_configured"
	CodeIdentityNotFound      Code = "identity_not_found"

	CodeMethodNotAllowed Code = "method_not_allowed"

	CodeInvalidState        Code = "invalid_state"
	CodeConflict            Code = "conflict"
	CodeNameTaken           Code = "name_taken"
	CodeEmailTaken          Code = "email_taken"
	CodeAlreadyMember       Code = "already_member"
	CodeLastOwner           Code = "last_owner"
	CodeLastTeam            Code = "last_team"
	CodeNoTeam              Code = "no_team"
	CodeTeamHasSandboxes    Code = "team_has_sandboxes"
	CodeSnapshotInUse       Code = "snapshot_in_use"
	CodeSnapshotUnavailable Code = "snapshot_unavailable"
	CodeHostNotRegistered   Code = "host_not_registered"
	CodeHostHasSandboxes    Code = "host_has_sandboxes"
	CodeIdentityTaken       Code = "identity_taken"
	CodeAlreadyLinked       Code = "already_linked"
	CodeLastSignInMethod    Code = "last_sign_in_method"
	CodeSandboxPaused       Code = "sandbox_paused"

	CodeIdempotencyKeyInProgress Code = "idempotency_key_in_progress"
	CodeIdempotencyKeyReused     Code = "idempotency_key_reused"
	CodeTemplateInUse            Code = "template_in_use"
	CodeTemplateBuiltin          Code = "template_builtin"
	CodeBuildFinished            Code = "build_finished"

	CodeTooLarge Code = "too_large"

	CodeSandboxLimit Code = "sandbox_limit"
	CodeRateLimited  Code = "rate_limited"

	CodeAgentError          Code = "agent_error"
	CodeTemplateUnavailable Code = "template_unavailable"
	CodeProviderUnavailable Code = "provider_unavailable"
	CodeGuestUnreachable    Code = "guest_unreachable"
	CodeGuestTimeout        Code = "guest_timeout"

	CodeAgentUnavailable    Code = "agent_unavailable"
	CodeHostCapacity        Code = "host_capacity"
	CodeNoCapacity          Code = "no_capacity"
	CodeDatabaseUnavailable Code = "database_unavailable"
	CodeServiceUnavailable  Code = "service_unavailable"
	CodeHostsUnavailable    Code = "hosts_unavailable"
	CodeDocsUnavailable     Code = "docs_unavailable"
	CodeChannelsDisabled    Code = "channels_disabled"

	CodeDashboardUnavailable Code = "dashboard_unavailable"

	CodeSandboxDiskFull Code = "sandbox_disk_full"
)

// codeInfo is what a code means for the API.
type codeInfo struct {
	kind Kind
	// retryAfter, when set, is sent as Retry-After.
	retryAfter time.Duration
}

// codes is the one table of error codes.
var codes = map[Code]codeInfo{
	CodeInternal: {kind: KindInternal},

	CodeInvalidRequest:  {kind: KindInvalid},
	CodeUnknownTemplate: {kind: KindInvalid},
	CodeURLNotAllowed:   {kind: KindInvalid},

	CodeUnauthenticated:          {kind: KindUnauthorized},
	CodeInvalidToken:             {kind: KindUnauthorized},
	CodeInvalidCredentials:       {kind: KindUnauthorized},
	CodeInvalidAPIKey:            {kind: KindUnauthorized},
	CodeSessionRevoked:           {kind: KindUnauthorized},
	CodeInvalidRegistrationToken: {kind: KindUnauthorized},
	CodeInvalidRefreshToken:      {kind: KindUnauthorized},
	CodeRefreshTokenReused:       {kind: KindUnauthorized},
	CodeInvalidHostToken:         {kind: KindUnauthorized},
	CodeInvalidOAuthState:        {kind: KindUnauthorized},
	CodeOAuthDenied:              {kind: KindUnauthorized},
	CodeOAuthCodeRejected:        {kind: KindUnauthorized},
	CodeEmailUnverified:          {kind: KindUnauthorized},
	CodeInvalidOAuthCode:         {kind: KindUnauthorized},
	CodeInvalidPreviewToken:      {kind: KindUnauthorized},

	CodeForbidden:       {kind: KindForbidden},
	CodeSessionRequired: {kind: KindForbidden},
	CodeCSRFFailed:      {kind: KindForbidden},
	CodeJWTRequired:     {kind: KindForbidden},
	CodeAdminRequired:   {kind: KindForbidden},
	CodeBYOCNotEnabled:  {kind: KindForbidden},
	CodeWrongPassword:   {kind: KindForbidden},
	CodePortNotAllowed:  {kind: KindForbidden},

	CodeNotFound:         {kind: KindNotFound},
	CodeSandboxNotFound:  {kind: KindNotFound},
	CodeSnapshotNotFound: {kind: KindNotFound},
	CodeTeamNotFound:     {kind: KindNotFound},
	CodeMemberNotFound:   {kind: KindNotFound},
	CodeUserNotFound:     {kind: KindNotFound},
	CodeAPIKeyNotFound:   {kind: KindNotFound},
	CodeHostNotFound:     {kind: KindNotFound},
	CodeChannelNotFound:  {kind: KindNotFound},
	CodeTemplateNotFound: {kind: KindNotFound},
	CodeBuildNotFound:    {kind: KindNotFound},

	CodeProviderNotConfigured: {kind: KindNotFound},
	CodeIdentityNotFound:      {kind: KindNotFound},

	CodeMethodNotAllowed: {kind: KindMethodNotAllowed},

	CodeInvalidState:        {kind: KindConflict},
	CodeConflict:            {kind: KindConflict},
	CodeNameTaken:           {kind: KindConflict},
	CodeEmailTaken:          {kind: KindConflict},
	CodeAlreadyMember:       {kind: KindConflict},
	CodeLastOwner:           {kind: KindConflict},
	CodeLastTeam:            {kind: KindConflict},
	CodeNoTeam:              {kind: KindConflict},
	CodeTeamHasSandboxes:    {kind: KindConflict},
	CodeSnapshotInUse:       {kind: KindConflict},
	CodeSnapshotUnavailable: {kind: KindConflict},
	CodeHostNotRegistered:   {kind: KindConflict},
	CodeHostHasSandboxes:    {kind: KindConflict},
	CodeIdentityTaken:       {kind: KindConflict},
	CodeAlreadyLinked:       {kind: KindConflict},
	CodeLastSignInMethod:    {kind: KindConflict},
	CodeSandboxPaused:       {kind: KindConflict},
	// The first request still runs; it ends within the lifecycle timeout.
	CodeIdempotencyKeyInProgress: {kind: KindConflict, retryAfter: time.Second},
	CodeIdempotencyKeyReused:     {kind: KindUnprocessable},
	CodeTemplateInUse:            {kind: KindConflict},
	CodeTemplateBuiltin:          {kind: KindConflict},
	CodeBuildFinished:            {kind: KindConflict},

	CodeTooLarge: {kind: KindTooLarge},

	CodeSandboxLimit: {kind: KindRateLimited, retryAfter: time.Minute},
	CodeRateLimited:  {kind: KindRateLimited, retryAfter: time.Minute},

	CodeAgentError:          {kind: KindUpstream},
	CodeTemplateUnavailable: {kind: KindUpstream},
	CodeProviderUnavailable: {kind: KindUpstream},
	CodeGuestUnreachable:    {kind: KindUpstream},
	CodeGuestTimeout:        {kind: KindGatewayTimeout},

	CodeAgentUnavailable: {kind: KindUnavailable},
	CodeHostCapacity:     {kind: KindUnavailable},
	// Room frees as sandboxes stop or pause.
	CodeNoCapacity:          {kind: KindUnavailable, retryAfter: 10 * time.Second},
	CodeDatabaseUnavailable: {kind: KindUnavailable, retryAfter: 5 * time.Second},
	CodeServiceUnavailable:  {kind: KindUnavailable},
	CodeHostsUnavailable:    {kind: KindUnavailable},
	CodeDocsUnavailable:     {kind: KindUnavailable},
	CodeChannelsDisabled:    {kind: KindUnavailable},

	CodeDashboardUnavailable: {kind: KindUnavailable},

	CodeSandboxDiskFull: {kind: KindStorageFull},
}

// Codes returns every error code with its kind.
func Codes() map[Code]Kind {
	out := make(map[Code]Kind, len(codes))
	for c, i := range codes {
		out[c] = i.kind
	}
	return out
}

// Kind is the code's kind (KindInternal for a code not in the table).
func (c Code) Kind() Kind { return codes[c].kind }

// Error is the service's error type. Build it with Errorf or one of the
// helpers below, so its Kind is the one the codes table gives its Code.
type Error struct {
	Kind    Kind
	Code    Code
	Message string // safe to show to the caller
	Field   string // the offending input field, when there is one
	Err     error  // cause, for logs only
}

func (e *Error) Error() string {
	if e.Err != nil {
		return string(e.Code) + ": " + e.Message + ": " + e.Err.Error()
	}
	return string(e.Code) + ": " + e.Message
}

func (e *Error) Unwrap() error { return e.Err }

// RetryAfter is how long the caller should wait before trying again (0:
// no advice).
func (e *Error) RetryAfter() time.Duration { return codes[e.Code].retryAfter }

// AsError finds the *Error in err's chain.
func AsError(err error) (*Error, bool) {
	var e *Error
	ok := errors.As(err, &e)
	return e, ok
}

// Errorf is an error with code and a message for the caller.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Kind: code.Kind(), Code: code, Message: fmt.Sprintf(format, args...)}
}

// Invalid is a 400 naming the field.
func Invalid(field, format string, args ...any) *Error {
	e := Errorf(CodeInvalidRequest, format, args...)
	e.Field = field
	return e
}

// NotFound is a 404.
func NotFound(code Code, message string) *Error { return Errorf(code, "%s", message) }

// Conflict is a 409.
func Conflict(code Code, message string) *Error { return Errorf(code, "%s", message) }

// Forbidden is a 403.
func Forbidden(code Code, message string) *Error { return Errorf(code, "%s", message) }

// Unauthorized is a 401.
func Unauthorized(code Code, message string) *Error { return Errorf(code, "%s", message) }

// Internal wraps an unexpected failure; the cause is logged, not shown. A
// database that cannot be reached is no bug: it answers 503
// database_unavailable with Retry-After, so clients retry.
func Internal(what string, err error) *Error {
	cause := fmt.Errorf("%s: %w", what, err)
	if dbUnavailable(err) {
		return &Error{Kind: CodeDatabaseUnavailable.Kind(), Code: CodeDatabaseUnavailable, Message: "the database is unavailable; try again shortly", Err: cause}
	}
	return &Error{Kind: CodeInternal.Kind(), Code: CodeInternal, Message: "internal error", Err: cause}
}

// dbUnavailable reports whether err says the database cannot be reached
// (refused or dropped connections, a server shutting down or starting up),
// as opposed to a query that failed.
func dbUnavailable(err error) bool {
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) {
		return true
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		// Class 08: connection exception; 57P01-03: admin or crash
		// shutdown, cannot connect now; 53300: too many connections.
		return strings.HasPrefix(pe.Code, "08") || pe.Code == "57P01" || pe.Code == "57P02" || pe.Code == "57P03" || pe.Code == "53300"
	}
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, pgconn.ErrConnClosed) || errors.Is(err, io.ErrUnexpectedEOF)
}

var errSandboxNotFound = NotFound(CodeSandboxNotFound, "sandbox not found")

// FromAgent turns a host agent RPC error into a service error: the one
// place the agent's Connect codes and error details (internal/agentwire)
// are read, for unary calls and streams alike. The agent's message is
// shown for caller mistakes (not found, wrong state, bad argument, full
// disk), which are about the caller's own sandbox.
func FromAgent(what string, err error) *Error {
	if err == nil {
		return nil
	}
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return &Error{Kind: CodeAgentUnavailable.Kind(), Code: CodeAgentUnavailable, Message: "the sandbox's host agent is unavailable", Err: fmt.Errorf("%s: %w", what, err)}
	}
	msg := ce.Message()
	detail := agentwire.Detail(ce)
	e := func(code Code, message string) *Error {
		return &Error{Kind: code.Kind(), Code: code, Message: message, Err: fmt.Errorf("%s: %w", what, err)}
	}
	switch ce.Code() {
	case connect.CodeNotFound:
		return e(CodeNotFound, msg)
	case connect.CodeFailedPrecondition:
		return e(CodeInvalidState, msg)
	case connect.CodeAlreadyExists, connect.CodeAborted:
		return e(CodeConflict, msg)
	case connect.CodeInvalidArgument, connect.CodeOutOfRange:
		se := e(CodeInvalidRequest, msg)
		se.Field = detail.GetField()
		return se
	case connect.CodePermissionDenied:
		return e(CodeForbidden, msg)
	case connect.CodeResourceExhausted:
		if detail.GetReason() == pb.ErrorReason_ERROR_REASON_DISK_FULL {
			return e(CodeSandboxDiskFull, "the sandbox's disk is full: "+msg)
		}
		return e(CodeHostCapacity, "the host has no capacity left: "+msg)
	case connect.CodeUnavailable, connect.CodeDeadlineExceeded, connect.CodeCanceled:
		return e(CodeAgentUnavailable, "the sandbox's host agent is unavailable")
	default:
		return e(CodeAgentError, "the host agent failed to "+what)
	}
}
