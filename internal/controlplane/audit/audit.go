// Package audit is the append-only trail of user and system actions and the
// source of the lifecycle event stream: every row written here is also an
// event (its outbox entry is inserted by the same statement), which the
// events relay publishes to Redis once the transaction commits.
//
// Each event has one named method on Logger. Callers pass the queries of
// the transaction that makes the change, so a committed change always has
// its row and its event and a rolled-back one has neither. Nothing here
// talks to Redis, so recording never waits on it.
package audit

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/wrenn-dev/wrenn/internal/controlplane/ids"
	"github.com/wrenn-dev/wrenn/internal/db"
)

// ActorType says what kind of party acted.
type ActorType string

const (
	ActorUser   ActorType = "user"
	ActorAPIKey ActorType = "api_key"
	ActorSystem ActorType = "system"
)

// Actor is who acted: a user, an API key, or a named part of the control
// plane.
type Actor struct {
	Type ActorType
	ID   string
	Name string
}

// Scope says who may read a row: every member of its team, or only its
// owners and admins.
type Scope string

const (
	ScopeTeam  Scope = "team"
	ScopeAdmin Scope = "admin"
)

// Status is how an action turned out.
type Status string

const (
	StatusSuccess Status = "success"
	StatusInfo    Status = "info"
	StatusWarning Status = "warning"
	StatusError   Status = "error"
)

// Statuses lists every status, for filter validation.
var Statuses = []Status{StatusSuccess, StatusInfo, StatusWarning, StatusError}

// Event types: resource type, a dot, the action. The list is the contract
// of the wrenn:events stream (docs/events.md).
const (
	SandboxCreatedType    = "sandbox.created"
	SandboxRunningType    = "sandbox.running"
	SandboxPausedType     = "sandbox.paused"
	SandboxAutoPausedType = "sandbox.auto_paused"
	SandboxResumedType    = "sandbox.resumed"
	SandboxDestroyedType  = "sandbox.destroyed"
	SandboxErrorType      = "sandbox.error"
	SandboxMissingType    = "sandbox.missing"

	SnapshotCreatedType = "snapshot.created"
	SnapshotDeletedType = "snapshot.deleted"

	TeamCreatedType = "team.created"
	TeamRenamedType = "team.renamed"
	TeamDeletedType = "team.deleted"

	APIKeyCreatedType = "api_key.created"
	APIKeyRevokedType = "api_key.revoked"

	MemberAddedType       = "member.added"
	MemberRemovedType     = "member.removed"
	MemberLeftType        = "member.left"
	MemberRoleChangedType = "member.role_changed"

	HostCreatedType    = "host.created"
	HostRegisteredType = "host.registered"
	HostDeletedType    = "host.deleted"
	HostMarkedDownType = "host.marked_down"
	HostMarkedUpType   = "host.marked_up"

	LoginFailedType      = "auth.login_failed"
	PasswordChangedType  = "user.password_changed"
	UserSignedUpType     = "user.signed_up"
	UserLoggedInType     = "user.logged_in"
	IdentityLinkedType   = "identity.linked"
	IdentityUnlinkedType = "identity.unlinked"

	ChannelCreatedType       = "channel.created"
	ChannelUpdatedType       = "channel.updated"
	ChannelConfigRotatedType = "channel.config_rotated"
	ChannelDeletedType       = "channel.deleted"
	ChannelDisabledType      = "channel.disabled"

	TemplateBuildStartedType   = "template.build_started"
	TemplateBuildSucceededType = "template.build_succeeded"
	TemplateBuildFailedType    = "template.build_failed"
	TemplateBuildCancelledType = "template.build_cancelled"
	TemplateDeletedType        = "template.deleted"
)

// EventTypes is every event type the control plane records, in the order
// docs/events.md lists them. A new event adds its type here with its
// Logger method.
var EventTypes = []string{
	SandboxCreatedType, SandboxRunningType, SandboxPausedType, SandboxAutoPausedType, SandboxResumedType,
	SandboxDestroyedType, SandboxErrorType, SandboxMissingType,
	SnapshotCreatedType, SnapshotDeletedType,
	TeamCreatedType, TeamRenamedType, TeamDeletedType,
	APIKeyCreatedType, APIKeyRevokedType,
	MemberAddedType, MemberRemovedType, MemberLeftType, MemberRoleChangedType,
	HostCreatedType, HostRegisteredType, HostDeletedType, HostMarkedDownType, HostMarkedUpType,
	LoginFailedType, PasswordChangedType, UserSignedUpType, UserLoggedInType, IdentityLinkedType, IdentityUnlinkedType,
	ChannelCreatedType, ChannelUpdatedType, ChannelConfigRotatedType, ChannelDeletedType, ChannelDisabledType,
	TemplateBuildStartedType, TemplateBuildSucceededType, TemplateBuildFailedType, TemplateBuildCancelledType, TemplateDeletedType,
}

// KnownEventType reports whether t is one of EventTypes.
func KnownEventType(t string) bool { return slices.Contains(EventTypes, t) }

// ResourceTypes are the resource halves of EventTypes; Actions the action
// halves (filters of GET /v1/audit-logs accept exactly these).
func ResourceTypes() []string { return typeParts(0) }

// Actions: see ResourceTypes.
func Actions() []string { return typeParts(1) }

func typeParts(i int) []string {
	var out []string
	for _, t := range EventTypes {
		p := strings.SplitN(t, ".", 2)[i]
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

// Querier writes rows; *db.Queries of the change's transaction.
type Querier interface {
	InsertAuditLog(ctx context.Context, arg db.InsertAuditLogParams) error
}

// Logger records actions: New records, Disabled (like the zero value)
// does not. It holds no connection: every method writes through the
// Querier of the caller's transaction.
type Logger struct {
	enabled bool
}

// New returns the logger the control plane runs with.
func New() *Logger { return &Logger{enabled: true} }

// Disabled returns a logger that records nothing; benchmarks use it to
// measure what the trail costs.
func Disabled() *Logger { return &Logger{} }

// entry is one row before it is written.
type entry struct {
	typ    string
	teamID string // "" for a platform row
	actor  Actor
	resID  string
	scope  Scope
	status Status
	data   map[string]any
}

// record writes e with a fresh row and event id.
func (l *Logger) record(ctx context.Context, q Querier, e entry) error {
	if !l.enabled {
		return nil
	}
	if e.actor.Type == "" {
		return fmt.Errorf("audit %s of %s: the actor type is required", e.typ, e.resID)
	}
	resType, action, _ := strings.Cut(e.typ, ".")
	data := e.data
	if data == nil {
		data = map[string]any{}
	}
	md, err := json.Marshal(data)
	if err != nil {
		return fmt.Errorf("audit %s of %s: encode data: %w", e.typ, e.resID, err)
	}
	var team *string
	if e.teamID != "" {
		team = &e.teamID
	}
	err = q.InsertAuditLog(ctx, db.InsertAuditLogParams{ID: ids.New(ids.AuditLog), EventID: ids.New(ids.Event), TeamID: team,
		ActorType: string(e.actor.Type), ActorID: e.actor.ID, ActorName: e.actor.Name,
		ResourceType: resType, ResourceID: e.resID, Action: action, Scope: string(e.scope), Status: string(e.status), Metadata: md})
	if err != nil {
		return fmt.Errorf("audit %s of %s: %w", e.typ, e.resID, err)
	}
	return nil
}

// doneBy is the status of a routine action: success when a user or key
// asked for it, info when the control plane did it on its own.
func doneBy(a Actor) Status {
	if a.Type == ActorSystem {
		return StatusInfo
	}
	return StatusSuccess
}
