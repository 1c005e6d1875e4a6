package service

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/wrenn-dev/wrenn/internal/controlplane/audit"
	"github.com/wrenn-dev/wrenn/internal/controlplane/auth"
	"github.com/wrenn-dev/wrenn/internal/controlplane/ids"
	"github.com/wrenn-dev/wrenn/internal/db"
)

// ScopePlatform asks GET /v1/audit-logs for the platform's rows (shared
// hosts, failed logins), which belong to no team; platform admins only.
const ScopePlatform = "platform"

// ListAuditLogsInput are the query parameters of GET /v1/audit-logs.
type ListAuditLogsInput struct {
	// Scope is "" (the caller's team) or ScopePlatform.
	Scope         string
	ResourceTypes []string
	Actions       []string
	Statuses      []string
	ActorID       string
	ResourceID    string
	Since, Until  *time.Time
	Limit         int
	Cursor        string
}

// AuditLog is one row of the audit trail.
type AuditLog struct {
	ID           string          `json:"id"`
	EventID      string          `json:"event_id"`
	TeamID       string          `json:"team_id,omitempty"`
	Actor        AuditActor      `json:"actor"`
	ResourceType string          `json:"resource_type"`
	ResourceID   string          `json:"resource_id"`
	Action       string          `json:"action"`
	Scope        string          `json:"scope"`
	Status       string          `json:"status"`
	Metadata     json.RawMessage `json:"metadata"`
	CreatedAt    time.Time       `json:"created_at"`
}

// AuditActor is who acted.
type AuditActor struct {
	Type string `json:"type"`
	ID   string `json:"id"`
	Name string `json:"name"`
}

// AuditLogPage is one page, newest first.
type AuditLogPage struct {
	AuditLogs  []AuditLog `json:"audit_logs"`
	NextCursor string     `json:"next_cursor,omitempty"`
}

func toAuditLog(l db.AuditLog) AuditLog {
	out := AuditLog{ID: l.ID, EventID: l.EventID, Actor: AuditActor{Type: l.ActorType, ID: l.ActorID, Name: l.ActorName},
		ResourceType: l.ResourceType, ResourceID: l.ResourceID, Action: l.Action, Scope: l.Scope, Status: l.Status,
		Metadata: l.Metadata, CreatedAt: l.CreatedAt}
	if l.TeamID != nil {
		out.TeamID = *l.TeamID
	}
	return out
}

// checkOneOf rejects values outside allowed, naming the parameter.
func checkOneOf(field string, values, allowed []string) error {
	for _, v := range values {
		if !slices.Contains(allowed, v) {
			return Invalid(field, "unknown %s %q; use %s", field, v, strings.Join(allowed, ", "))
		}
	}
	return nil
}

// ListAuditLogs pages through the trail the caller may read: its team's
// team-scoped rows, and for owners and admins also the admin-scoped ones;
// platform admins may ask for the platform's rows instead.
func (s *Service) ListAuditLogs(ctx context.Context, a auth.AuthContext, in ListAuditLogsInput) (AuditLogPage, error) {
	if in.Limit == 0 {
		in.Limit = 50
	}
	if in.Limit < 1 || in.Limit > MaxPageSize {
		return AuditLogPage{}, Invalid("limit", "limit must be between 1 and %d", MaxPageSize)
	}
	statuses := make([]string, len(audit.Statuses))
	for i, st := range audit.Statuses {
		statuses[i] = string(st)
	}
	for _, c := range []struct {
		field           string
		values, allowed []string
	}{
		{"resource_type", in.ResourceTypes, audit.ResourceTypes()},
		{"action", in.Actions, audit.Actions()},
		{"status", in.Statuses, statuses},
	} {
		if err := checkOneOf(c.field, c.values, c.allowed); err != nil {
			return AuditLogPage{}, err
		}
	}
	if in.Since != nil && in.Until != nil && in.Since.After(*in.Until) {
		return AuditLogPage{}, Invalid("since", "since must not be after until")
	}
	p := db.ListAuditLogsParams{TeamKey: a.TeamID, Scopes: []string{string(audit.ScopeTeam)}, ResourceTypes: in.ResourceTypes,
		Actions: in.Actions, Statuses: in.Statuses, Since: in.Since, Until: in.Until, MaxRows: int32(in.Limit + 1)}
	if p.ResourceTypes == nil {
		p.ResourceTypes = []string{}
	}
	if p.Actions == nil {
		p.Actions = []string{}
	}
	if p.Statuses == nil {
		p.Statuses = []string{}
	}
	if canManage(a.Role) {
		p.Scopes = append(p.Scopes, string(audit.ScopeAdmin))
	}
	switch in.Scope {
	case "":
	case ScopePlatform:
		if !a.IsAdmin {
			return AuditLogPage{}, Forbidden(CodeForbidden, "scope=platform is for platform admins")
		}
		p.TeamKey, p.Scopes = "", []string{string(audit.ScopeTeam), string(audit.ScopeAdmin)}
	default:
		return AuditLogPage{}, Invalid("scope", "unknown scope %q; use %s or leave it out for the team's", in.Scope, ScopePlatform)
	}
	if in.ActorID != "" {
		p.ActorID = &in.ActorID
	}
	if in.ResourceID != "" {
		p.ResourceID = &in.ResourceID
	}
	if in.Cursor != "" {
		t, id, err := DecodeCursor(in.Cursor, ids.AuditLog)
		if err != nil {
			return AuditLogPage{}, Invalid("cursor", "cursor is not one this API returned")
		}
		p.BeforeAt, p.BeforeID = &t, &id
	}
	rows, err := s.q.ListAuditLogs(ctx, p)
	if err != nil {
		return AuditLogPage{}, Internal("list audit logs", fmt.Errorf("team %s: %w", a.TeamID, err))
	}
	page := AuditLogPage{}
	rows, page.NextCursor = pageOf(rows, in.Limit, func(r db.AuditLog) (time.Time, string) { return r.CreatedAt, r.ID })
	page.AuditLogs = make([]AuditLog, 0, len(rows))
	for _, r := range rows {
		page.AuditLogs = append(page.AuditLogs, toAuditLog(r))
	}
	return page, nil
}
