package audit

import (
	"context"
	"strings"

	"github.com/wrenn-dev/wrenn/internal/db"
)

// SandboxChange is a sandbox status change the state seam made.
type SandboxChange struct {
	// Sandbox is the row after the change.
	Sandbox db.Sandbox
	From    string
	Reason  string
}

func (l *Logger) sandbox(ctx context.Context, q Querier, typ string, a Actor, c SandboxChange, st Status) error {
	data := map[string]any{"from": c.From, "status": c.Sandbox.Status, "reason": c.Reason}
	if c.Sandbox.HostID != nil {
		data["host_id"] = *c.Sandbox.HostID
	}
	if c.Sandbox.ErrorMessage != "" && st == StatusError {
		data["error"] = c.Sandbox.ErrorMessage
	}
	return l.record(ctx, q, entry{typ: typ, teamID: c.Sandbox.TeamID, actor: a, resID: c.Sandbox.ID, scope: ScopeTeam, status: st, data: data})
}

// SandboxCreated records a new sandbox row (pending, about to boot).
func (l *Logger) SandboxCreated(ctx context.Context, q Querier, a Actor, sb db.Sandbox) error {
	data := map[string]any{"template": sb.Template, "vcpus": sb.Vcpus, "memory_mb": sb.MemoryMb}
	if sb.HostID != nil {
		data["host_id"] = *sb.HostID
	}
	return l.record(ctx, q, entry{typ: SandboxCreatedType, teamID: sb.TeamID, actor: a, resID: sb.ID, scope: ScopeTeam, status: doneBy(a), data: data})
}

// SandboxRunning records a sandbox that booted, or that its host lists
// running again.
func (l *Logger) SandboxRunning(ctx context.Context, q Querier, a Actor, c SandboxChange) error {
	return l.sandbox(ctx, q, SandboxRunningType, a, c, doneBy(a))
}

// SandboxPaused records a pause asked for by a user or key (or reported by
// the host).
func (l *Logger) SandboxPaused(ctx context.Context, q Querier, a Actor, c SandboxChange) error {
	return l.sandbox(ctx, q, SandboxPausedType, a, c, doneBy(a))
}

// SandboxAutoPaused records a pause by the host's idle reaper.
func (l *Logger) SandboxAutoPaused(ctx context.Context, q Querier, a Actor, c SandboxChange) error {
	return l.sandbox(ctx, q, SandboxAutoPausedType, a, c, StatusInfo)
}

// SandboxResumed records a paused sandbox running again.
func (l *Logger) SandboxResumed(ctx context.Context, q Querier, a Actor, c SandboxChange) error {
	return l.sandbox(ctx, q, SandboxResumedType, a, c, doneBy(a))
}

// SandboxDestroyed records a sandbox stopped for good, or left stopping
// while its host is away (data.status says which).
func (l *Logger) SandboxDestroyed(ctx context.Context, q Querier, a Actor, c SandboxChange) error {
	return l.sandbox(ctx, q, SandboxDestroyedType, a, c, doneBy(a))
}

// SandboxError records a sandbox that failed (data.error says why).
func (l *Logger) SandboxError(ctx context.Context, q Querier, a Actor, c SandboxChange) error {
	return l.sandbox(ctx, q, SandboxErrorType, a, c, StatusError)
}

// SandboxMissing records a running sandbox whose host went silent.
func (l *Logger) SandboxMissing(ctx context.Context, q Querier, a Actor, c SandboxChange) error {
	return l.sandbox(ctx, q, SandboxMissingType, a, c, StatusWarning)
}

// SnapshotCreated records a snapshot taken of sandboxID.
func (l *Logger) SnapshotCreated(ctx context.Context, q Querier, a Actor, teamID string, snap db.Template, sandboxID string) error {
	return l.record(ctx, q, entry{typ: SnapshotCreatedType, teamID: teamID, actor: a, resID: snap.ID, scope: ScopeTeam, status: doneBy(a),
		data: map[string]any{"name": snap.Name, "sandbox_id": sandboxID, "size_bytes": snap.SizeBytes}})
}

// SnapshotDeleted records a snapshot deleted.
func (l *Logger) SnapshotDeleted(ctx context.Context, q Querier, a Actor, teamID string, snap db.Template) error {
	return l.record(ctx, q, entry{typ: SnapshotDeletedType, teamID: teamID, actor: a, resID: snap.ID, scope: ScopeTeam, status: doneBy(a),
		data: map[string]any{"name": snap.Name}})
}

// TeamCreated records a new team.
func (l *Logger) TeamCreated(ctx context.Context, q Querier, a Actor, teamID, name string) error {
	return l.record(ctx, q, entry{typ: TeamCreatedType, teamID: teamID, actor: a, resID: teamID, scope: ScopeTeam, status: doneBy(a),
		data: map[string]any{"name": name}})
}

// TeamRenamed records a team's new name.
func (l *Logger) TeamRenamed(ctx context.Context, q Querier, a Actor, teamID, oldName, newName string) error {
	return l.record(ctx, q, entry{typ: TeamRenamedType, teamID: teamID, actor: a, resID: teamID, scope: ScopeTeam, status: doneBy(a),
		data: map[string]any{"old_name": oldName, "name": newName}})
}

// TeamDeleted records a team deleted; its trail stays readable by
// platform operators in the database.
func (l *Logger) TeamDeleted(ctx context.Context, q Querier, a Actor, teamID, name string) error {
	return l.record(ctx, q, entry{typ: TeamDeletedType, teamID: teamID, actor: a, resID: teamID, scope: ScopeAdmin, status: doneBy(a),
		data: map[string]any{"name": name}})
}

// APIKeyCreated records a new API key (never the key itself).
func (l *Logger) APIKeyCreated(ctx context.Context, q Querier, a Actor, teamID, keyID, name string) error {
	return l.record(ctx, q, entry{typ: APIKeyCreatedType, teamID: teamID, actor: a, resID: keyID, scope: ScopeAdmin, status: doneBy(a),
		data: map[string]any{"name": name}})
}

// APIKeyRevoked records an API key deleted.
func (l *Logger) APIKeyRevoked(ctx context.Context, q Querier, a Actor, teamID, keyID, name string) error {
	return l.record(ctx, q, entry{typ: APIKeyRevokedType, teamID: teamID, actor: a, resID: keyID, scope: ScopeAdmin, status: doneBy(a),
		data: map[string]any{"name": name}})
}

// MemberAdded records a user added to a team with a role.
func (l *Logger) MemberAdded(ctx context.Context, q Querier, a Actor, teamID, userID, role string) error {
	return l.record(ctx, q, entry{typ: MemberAddedType, teamID: teamID, actor: a, resID: userID, scope: ScopeTeam, status: doneBy(a),
		data: map[string]any{"role": role}})
}

// MemberRemoved records a user removed from a team by someone else.
func (l *Logger) MemberRemoved(ctx context.Context, q Querier, a Actor, teamID, userID string) error {
	return l.record(ctx, q, entry{typ: MemberRemovedType, teamID: teamID, actor: a, resID: userID, scope: ScopeTeam, status: doneBy(a)})
}

// MemberLeft records a user who left a team.
func (l *Logger) MemberLeft(ctx context.Context, q Querier, a Actor, teamID, userID string) error {
	return l.record(ctx, q, entry{typ: MemberLeftType, teamID: teamID, actor: a, resID: userID, scope: ScopeTeam, status: doneBy(a)})
}

// MemberRoleChanged records a member's new role.
func (l *Logger) MemberRoleChanged(ctx context.Context, q Querier, a Actor, teamID, userID, oldRole, newRole string) error {
	return l.record(ctx, q, entry{typ: MemberRoleChangedType, teamID: teamID, actor: a, resID: userID, scope: ScopeAdmin, status: doneBy(a),
		data: map[string]any{"old_role": oldRole, "role": newRole}})
}

// host records a host event; a shared host (no team) is a platform row.
func (l *Logger) host(ctx context.Context, q Querier, typ string, a Actor, h db.Host, st Status, data map[string]any) error {
	team := ""
	if h.TeamID != nil {
		team = *h.TeamID
	}
	if data == nil {
		data = map[string]any{}
	}
	data["name"] = h.Name
	return l.record(ctx, q, entry{typ: typ, teamID: team, actor: a, resID: h.ID, scope: ScopeAdmin, status: st, data: data})
}

// HostCreated records a host added (waiting for its agent to register).
func (l *Logger) HostCreated(ctx context.Context, q Querier, a Actor, h db.Host) error {
	return l.host(ctx, q, HostCreatedType, a, h, doneBy(a), nil)
}

// HostRegistered records a host agent that registered with its token.
func (l *Logger) HostRegistered(ctx context.Context, q Querier, a Actor, h db.Host) error {
	return l.host(ctx, q, HostRegisteredType, a, h, StatusSuccess, map[string]any{"address": h.Address, "vmm": h.Vmm, "version": h.Version})
}

// HostDeleted records a host deleted, with how many sandboxes it stopped.
func (l *Logger) HostDeleted(ctx context.Context, q Querier, a Actor, h db.Host, sandboxesStopped int) error {
	return l.host(ctx, q, HostDeletedType, a, h, doneBy(a), map[string]any{"sandboxes_stopped": sandboxesStopped})
}

// HostMarkedDown records a host that stopped answering.
func (l *Logger) HostMarkedDown(ctx context.Context, q Querier, a Actor, h db.Host, reason string) error {
	return l.host(ctx, q, HostMarkedDownType, a, h, StatusWarning, map[string]any{"reason": reason})
}

// HostMarkedUp records an unreachable host that answers again.
func (l *Logger) HostMarkedUp(ctx context.Context, q Querier, a Actor, h db.Host) error {
	return l.host(ctx, q, HostMarkedUpType, a, h, StatusInfo, nil)
}

// Sign-in events. A user's events are rows of the team they concern: the
// session's, or the user's default team when no session names one ("" when
// the user has none).

// UserSignedUp records a new account; method is "password" or the OAuth
// provider that created it.
func (l *Logger) UserSignedUp(ctx context.Context, q Querier, a Actor, teamID, userID, method string) error {
	return l.record(ctx, q, entry{typ: UserSignedUpType, teamID: teamID, actor: a, resID: userID, scope: ScopeAdmin, status: StatusSuccess,
		data: map[string]any{"method": method}})
}

// UserLoggedIn records a sign-in through an OAuth provider.
func (l *Logger) UserLoggedIn(ctx context.Context, q Querier, a Actor, teamID, userID, provider string) error {
	return l.record(ctx, q, entry{typ: UserLoggedInType, teamID: teamID, actor: a, resID: userID, scope: ScopeAdmin, status: StatusSuccess,
		data: map[string]any{"provider": provider}})
}

// IdentityLinked records a provider account linked to a user; login is
// the provider's name for it.
func (l *Logger) IdentityLinked(ctx context.Context, q Querier, a Actor, teamID, userID, provider, login string) error {
	return l.record(ctx, q, entry{typ: IdentityLinkedType, teamID: teamID, actor: a, resID: userID, scope: ScopeAdmin, status: StatusSuccess,
		data: map[string]any{"provider": provider, "login": login}})
}

// IdentityUnlinked records a provider account unlinked from a user.
func (l *Logger) IdentityUnlinked(ctx context.Context, q Querier, a Actor, teamID, userID, provider string) error {
	return l.record(ctx, q, entry{typ: IdentityUnlinkedType, teamID: teamID, actor: a, resID: userID, scope: ScopeAdmin, status: StatusSuccess,
		data: map[string]any{"provider": provider}})
}

// LoginFailed records a failed password login. userID is "" for an
// unknown email; the row is a platform row (no team) either way, since a
// failed login belongs to no team.
func (l *Logger) LoginFailed(ctx context.Context, q Querier, email, userID, reason string) error {
	resID := userID
	if resID == "" {
		resID = "unknown"
	}
	// Whatever was typed is kept, but no more of it than an email can be.
	if len(email) > maxEmailLen {
		email = strings.ToValidUTF8(email[:maxEmailLen], "")
	}
	return l.record(ctx, q, entry{typ: LoginFailedType, actor: ActorAnonymous, resID: resID, scope: ScopeAdmin, status: StatusWarning,
		data: map[string]any{"email": email, "reason": reason}})
}

// PasswordChanged records a user's new password, in the team of the session
// that changed it.
func (l *Logger) PasswordChanged(ctx context.Context, q Querier, a Actor, teamID, userID string) error {
	return l.record(ctx, q, entry{typ: PasswordChangedType, teamID: teamID, actor: a, resID: userID, scope: ScopeAdmin, status: StatusSuccess})
}

// channel records a channel event; data never holds a config value.
func (l *Logger) channel(ctx context.Context, q Querier, typ string, a Actor, ch db.Channel, st Status, data map[string]any) error {
	if data == nil {
		data = map[string]any{}
	}
	data["name"], data["provider"] = ch.Name, ch.Provider
	return l.record(ctx, q, entry{typ: typ, teamID: ch.TeamID, actor: a, resID: ch.ID, scope: ScopeAdmin, status: st, data: data})
}

// ChannelCreated records a new notification channel.
func (l *Logger) ChannelCreated(ctx context.Context, q Querier, a Actor, ch db.Channel) error {
	return l.channel(ctx, q, ChannelCreatedType, a, ch, doneBy(a), map[string]any{"events": ch.Events})
}

// ChannelUpdated records a channel renamed, refiltered, enabled or
// disabled by a user or key (ch is the row after the change).
func (l *Logger) ChannelUpdated(ctx context.Context, q Querier, a Actor, ch db.Channel) error {
	return l.channel(ctx, q, ChannelUpdatedType, a, ch, doneBy(a), map[string]any{"events": ch.Events, "enabled": ch.Enabled})
}

// ChannelConfigRotated records a channel's config replaced; configSet
// names the fields set, never their values.
func (l *Logger) ChannelConfigRotated(ctx context.Context, q Querier, a Actor, ch db.Channel, configSet []string) error {
	return l.channel(ctx, q, ChannelConfigRotatedType, a, ch, doneBy(a), map[string]any{"config_set": configSet})
}

// ChannelDeleted records a channel deleted with its deliveries.
func (l *Logger) ChannelDeleted(ctx context.Context, q Querier, a Actor, ch db.Channel) error {
	return l.channel(ctx, q, ChannelDeletedType, a, ch, doneBy(a), nil)
}

// ChannelDisabled records a channel the dispatcher turned off because its
// endpoint said it is gone.
func (l *Logger) ChannelDisabled(ctx context.Context, q Querier, a Actor, ch db.Channel, reason string) error {
	return l.channel(ctx, q, ChannelDisabledType, a, ch, StatusWarning, map[string]any{"reason": reason})
}

// build records a template build event. Built templates are the
// platform's, so the row is a platform row like the template's.
func (l *Logger) build(ctx context.Context, q Querier, typ string, a Actor, b db.TemplateBuild, st Status, data map[string]any) error {
	if data == nil {
		data = map[string]any{}
	}
	data["name"] = b.Name
	return l.record(ctx, q, entry{typ: typ, actor: a, resID: b.ID, scope: ScopeAdmin, status: st, data: data})
}

// TemplateBuildStarted records a worker taking a build (attempt 2 is the
// reaper's retry).
func (l *Logger) TemplateBuildStarted(ctx context.Context, q Querier, a Actor, b db.TemplateBuild) error {
	return l.build(ctx, q, TemplateBuildStartedType, a, b, StatusInfo, map[string]any{"attempt": b.Attempts, "worker": b.Worker})
}

// TemplateBuildSucceeded records a build that made its template.
func (l *Logger) TemplateBuildSucceeded(ctx context.Context, q Querier, a Actor, b db.TemplateBuild) error {
	data := map[string]any{}
	if b.TemplateID != nil {
		data["template_id"] = *b.TemplateID
	}
	return l.build(ctx, q, TemplateBuildSucceededType, a, b, StatusSuccess, data)
}

// TemplateBuildFailed records a build that failed (data.error says why).
func (l *Logger) TemplateBuildFailed(ctx context.Context, q Querier, a Actor, b db.TemplateBuild) error {
	return l.build(ctx, q, TemplateBuildFailedType, a, b, StatusError, map[string]any{"error": b.ErrorMessage})
}

// TemplateBuildCancelled records a build ended by a cancel request.
func (l *Logger) TemplateBuildCancelled(ctx context.Context, q Querier, a Actor, b db.TemplateBuild) error {
	return l.build(ctx, q, TemplateBuildCancelledType, a, b, doneBy(a), nil)
}

// TemplateDeleted records a platform template deleted (a platform row).
func (l *Logger) TemplateDeleted(ctx context.Context, q Querier, a Actor, tpl db.Template) error {
	return l.record(ctx, q, entry{typ: TemplateDeletedType, actor: a, resID: tpl.ID, scope: ScopeAdmin, status: doneBy(a),
		data: map[string]any{"name": tpl.Name}})
}

// maxEmailLen is the longest email address (RFC 5321 path limit).
const maxEmailLen = 254

// ActorAnonymous is the party behind an unauthenticated request.
var ActorAnonymous = Actor{Type: ActorSystem, ID: "anonymous", Name: "unauthenticated request"}

// ActorHostAgent is a host agent acting with its own credentials.
func ActorHostAgent(hostID string) Actor {
	return Actor{Type: ActorSystem, ID: hostID, Name: "host agent"}
}
