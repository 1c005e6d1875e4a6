package service

import (
	"context"
	"time"

	"github.com/wrenn-dev/wrenn/internal/controlplane/auth"
	"github.com/wrenn-dev/wrenn/internal/controlplane/ids"
	"github.com/wrenn-dev/wrenn/internal/db"
)

// Roles, strongest first.
const (
	RoleOwner  = "owner"
	RoleAdmin  = "admin"
	RoleMember = "member"
)

func validRole(r string) bool { return r == RoleOwner || r == RoleAdmin || r == RoleMember }

func canManage(role string) bool { return role == RoleOwner || role == RoleAdmin }

// CanManage reports whether a team role may change the team's settings
// (members, channels): owners and admins.
func CanManage(role string) bool { return canManage(role) }

// Team is a team seen by a member.
type Team struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Role      string    `json:"role"`
	IsDefault bool      `json:"is_default"`
	CreatedAt time.Time `json:"created_at"`
}

// Member is a team member.
type Member struct {
	UserID   string    `json:"user_id"`
	Email    string    `json:"email"`
	Name     string    `json:"name"`
	Role     string    `json:"role"`
	JoinedAt time.Time `json:"joined_at"`
}

// membership returns the caller's role in teamID; a team the caller is not
// in does not exist for them.
func (s *Service) membership(ctx context.Context, q *db.Queries, a auth.AuthContext, teamID string) (db.GetMembershipRow, error) {
	m, err := q.GetMembership(ctx, db.GetMembershipParams{UserID: a.UserID, TeamID: teamID})
	if isNoRows(err) {
		return m, NotFound(CodeTeamNotFound, "team not found")
	}
	if err != nil {
		return m, Internal("load membership", err)
	}
	return m, nil
}

// ListTeams lists the caller's teams.
func (s *Service) ListTeams(ctx context.Context, a auth.AuthContext) ([]Team, error) {
	rows, err := s.q.ListUserTeams(ctx, a.UserID)
	if err != nil {
		return nil, Internal("list teams", err)
	}
	out := make([]Team, 0, len(rows))
	for _, r := range rows {
		out = append(out, Team{ID: r.ID, Name: r.Name, Role: r.Role, IsDefault: r.IsDefault, CreatedAt: r.CreatedAt})
	}
	return out, nil
}

// GetTeam returns one of the caller's teams.
func (s *Service) GetTeam(ctx context.Context, a auth.AuthContext, teamID string) (Team, error) {
	m, err := s.membership(ctx, s.q, a, teamID)
	if err != nil {
		return Team{}, err
	}
	t, err := s.q.GetTeam(ctx, teamID)
	if err != nil {
		return Team{}, wrapDB("get team", err)
	}
	return Team{ID: t.ID, Name: t.Name, Role: m.Role, CreatedAt: t.CreatedAt}, nil
}

// TeamInput is POST /v1/teams and PATCH /v1/teams/{id}.
type TeamInput struct {
	Name string `json:"name"`
}

// CreateTeam makes a team owned by the caller.
func (s *Service) CreateTeam(ctx context.Context, a auth.AuthContext, in TeamInput) (Team, error) {
	name, err := checkName("name", in.Name, true, 100)
	if err != nil {
		return Team{}, err
	}
	var t db.Team
	err = s.inTx(ctx, func(q *db.Queries) error {
		var err error
		if t, err = q.CreateTeam(ctx, db.CreateTeamParams{ID: ids.New(ids.Team), Name: name}); err != nil {
			return err
		}
		if err := q.AddMember(ctx, db.AddMemberParams{UserID: a.UserID, TeamID: t.ID, Role: RoleOwner}); err != nil {
			return err
		}
		return s.audit.TeamCreated(ctx, q, ActorOf(a), t.ID, t.Name)
	})
	if err != nil {
		return Team{}, Internal("create team", err)
	}
	return Team{ID: t.ID, Name: t.Name, Role: RoleOwner, CreatedAt: t.CreatedAt}, nil
}

// RenameTeam needs admin or owner.
func (s *Service) RenameTeam(ctx context.Context, a auth.AuthContext, teamID string, in TeamInput) (Team, error) {
	m, err := s.membership(ctx, s.q, a, teamID)
	if err != nil {
		return Team{}, err
	}
	if !canManage(m.Role) {
		return Team{}, Forbidden(CodeForbidden, "only a team owner or admin can rename the team")
	}
	name, err := checkName("name", in.Name, true, 100)
	if err != nil {
		return Team{}, err
	}
	var t db.Team
	err = s.inTx(ctx, func(q *db.Queries) error {
		var err error
		if t, err = q.RenameTeam(ctx, db.RenameTeamParams{ID: teamID, Name: name}); err != nil {
			return err
		}
		return s.audit.TeamRenamed(ctx, q, ActorOf(a), teamID, m.TeamName, t.Name)
	})
	if err != nil {
		return Team{}, wrapDB("rename team", err)
	}
	return Team{ID: t.ID, Name: t.Name, Role: m.Role, CreatedAt: t.CreatedAt}, nil
}

// DeleteTeam needs the owner, a team without live sandboxes, and not the
// caller's only team (they would be locked out).
func (s *Service) DeleteTeam(ctx context.Context, a auth.AuthContext, teamID string) error {
	return s.inTx(ctx, func(q *db.Queries) error {
		m, err := s.membership(ctx, q, a, teamID)
		if err != nil {
			return err
		}
		if m.Role != RoleOwner {
			return Forbidden(CodeForbidden, "only a team owner can delete the team")
		}
		teams, err := q.ListUserTeams(ctx, a.UserID)
		if err != nil {
			return Internal("delete team", err)
		}
		if len(teams) <= 1 {
			return Conflict(CodeLastTeam, "you cannot delete your only team")
		}
		if err := q.LockTeamSandboxes(ctx, teamID); err != nil {
			return Internal("delete team", err)
		}
		live, err := q.ListSandboxes(ctx, db.ListSandboxesParams{TeamID: teamID, Statuses: StatusStrings(LiveStatuses()), Metadata: []byte("{}"), Lim: 1})
		if err != nil {
			return Internal("delete team", err)
		}
		if len(live) > 0 {
			return Conflict(CodeTeamHasSandboxes, "destroy the team's sandboxes before deleting it")
		}
		if err := q.DeleteTeam(ctx, teamID); err != nil {
			return Internal("delete team", err)
		}
		return wrapDB("delete team", s.audit.TeamDeleted(ctx, q, ActorOf(a), teamID, m.TeamName))
	})
}

// ListMembers is open to every member.
func (s *Service) ListMembers(ctx context.Context, a auth.AuthContext, teamID string) ([]Member, error) {
	if _, err := s.membership(ctx, s.q, a, teamID); err != nil {
		return nil, err
	}
	rows, err := s.q.ListMembers(ctx, teamID)
	if err != nil {
		return nil, Internal("list members", err)
	}
	out := make([]Member, 0, len(rows))
	for _, r := range rows {
		out = append(out, Member{UserID: r.UserID, Email: r.Email, Name: r.Name, Role: r.Role, JoinedAt: r.CreatedAt})
	}
	return out, nil
}

// AddMemberInput is POST /v1/teams/{id}/members.
type AddMemberInput struct {
	Email string `json:"email"`
	Role  string `json:"role"`
}

// AddMember adds an existing user. Admins may add members and admins; only
// owners may add owners.
func (s *Service) AddMember(ctx context.Context, a auth.AuthContext, teamID string, in AddMemberInput) (Member, error) {
	m, err := s.membership(ctx, s.q, a, teamID)
	if err != nil {
		return Member{}, err
	}
	if !canManage(m.Role) {
		return Member{}, Forbidden(CodeForbidden, "only a team owner or admin can add members")
	}
	if in.Role == "" {
		in.Role = RoleMember
	}
	if !validRole(in.Role) {
		return Member{}, Invalid("role", "role must be owner, admin or member")
	}
	if in.Role == RoleOwner && m.Role != RoleOwner {
		return Member{}, Forbidden(CodeForbidden, "only an owner can add an owner")
	}
	email, err := normalizeEmail(in.Email)
	if err != nil {
		return Member{}, err
	}
	u, err := s.q.GetUserByEmail(ctx, email)
	if isNoRows(err) {
		return Member{}, &Error{Kind: CodeUserNotFound.Kind(), Code: CodeUserNotFound, Field: "email", Message: "no user with this email; they must sign up first"}
	}
	if err != nil {
		return Member{}, Internal("add member", err)
	}
	err = s.inTx(ctx, func(q *db.Queries) error {
		if err := q.AddMember(ctx, db.AddMemberParams{UserID: u.ID, TeamID: teamID, Role: in.Role}); err != nil {
			return err
		}
		return s.audit.MemberAdded(ctx, q, ActorOf(a), teamID, u.ID, in.Role)
	})
	if isUniqueViolation(err) {
		return Member{}, Conflict(CodeAlreadyMember, "this user is already a member of the team")
	}
	if err != nil {
		return Member{}, Internal("add member", err)
	}
	return Member{UserID: u.ID, Email: u.Email, Name: u.Name, Role: in.Role, JoinedAt: time.Now().UTC()}, nil
}

// UpdateMemberInput is PATCH /v1/teams/{id}/members/{user_id}.
type UpdateMemberInput struct {
	Role string `json:"role"`
}

// UpdateMemberRole changes a role. Owners may set any role; admins may only
// move non-owners between member and admin. A team keeps at least one owner.
func (s *Service) UpdateMemberRole(ctx context.Context, a auth.AuthContext, teamID, userID string, in UpdateMemberInput) error {
	if !validRole(in.Role) {
		return Invalid("role", "role must be owner, admin or member")
	}
	return s.inTx(ctx, func(q *db.Queries) error {
		m, err := s.membership(ctx, q, a, teamID)
		if err != nil {
			return err
		}
		if !canManage(m.Role) {
			return Forbidden(CodeForbidden, "only a team owner or admin can change roles")
		}
		owners, err := q.LockTeamOwners(ctx, teamID)
		if err != nil {
			return Internal("update member", err)
		}
		target, err := q.GetMembership(ctx, db.GetMembershipParams{UserID: userID, TeamID: teamID})
		if isNoRows(err) {
			return NotFound(CodeMemberNotFound, "member not found")
		}
		if err != nil {
			return Internal("update member", err)
		}
		if m.Role != RoleOwner && (target.Role == RoleOwner || in.Role == RoleOwner) {
			return Forbidden(CodeForbidden, "only an owner can grant or change the owner role")
		}
		if target.Role == RoleOwner && in.Role != RoleOwner && len(owners) <= 1 {
			return Conflict(CodeLastOwner, "the team needs another owner first")
		}
		if _, err := q.UpdateMemberRole(ctx, db.UpdateMemberRoleParams{TeamID: teamID, UserID: userID, Role: in.Role}); err != nil {
			return Internal("update member", err)
		}
		if target.Role == in.Role {
			return nil
		}
		return wrapDB("update member", s.audit.MemberRoleChanged(ctx, q, ActorOf(a), teamID, userID, target.Role, in.Role))
	})
}

// RemovedMember is the answer to removing a member (or leaving): the API keys
// the member had created in the team, revoked in the same transaction.
type RemovedMember struct {
	RevokedAPIKeyIDs []string `json:"revoked_api_key_ids"`
}

// RemoveMember removes someone (owner/admin; admins cannot remove owners) or
// lets a member leave. The last owner cannot leave. The keys the member
// created in the team go with them: a key must not outlive its creator's access.
func (s *Service) RemoveMember(ctx context.Context, a auth.AuthContext, teamID, userID string) (RemovedMember, error) {
	var out RemovedMember
	err := s.inTx(ctx, func(q *db.Queries) error {
		m, err := s.membership(ctx, q, a, teamID)
		if err != nil {
			return err
		}
		self := userID == a.UserID
		if !self && !canManage(m.Role) {
			return Forbidden(CodeForbidden, "only a team owner or admin can remove members")
		}
		owners, err := q.LockTeamOwners(ctx, teamID)
		if err != nil {
			return Internal("remove member", err)
		}
		target, err := q.GetMembership(ctx, db.GetMembershipParams{UserID: userID, TeamID: teamID})
		if isNoRows(err) {
			return NotFound(CodeMemberNotFound, "member not found")
		}
		if err != nil {
			return Internal("remove member", err)
		}
		if !self && target.Role == RoleOwner && m.Role != RoleOwner {
			return Forbidden(CodeForbidden, "only an owner can remove an owner")
		}
		if target.Role == RoleOwner && len(owners) <= 1 {
			return Conflict(CodeLastOwner, "the team's last owner cannot leave; make someone else owner first")
		}
		if _, err := q.RemoveMember(ctx, db.RemoveMemberParams{TeamID: teamID, UserID: userID}); err != nil {
			return Internal("remove member", err)
		}
		revoked, err := q.RevokeMemberAPIKeys(ctx, db.RevokeMemberAPIKeysParams{TeamID: teamID, UserID: &userID})
		if err != nil {
			return Internal("revoke member api keys", err)
		}
		out.RevokedAPIKeyIDs = make([]string, 0, len(revoked))
		actor := ActorOf(a)
		for _, k := range revoked {
			out.RevokedAPIKeyIDs = append(out.RevokedAPIKeyIDs, k.ID)
			if err := s.audit.APIKeyRevoked(ctx, q, actor, teamID, k.ID, k.Name); err != nil {
				return wrapDB("remove member", err)
			}
		}
		record := s.audit.MemberRemoved
		if self {
			record = s.audit.MemberLeft
		}
		return wrapDB("remove member", record(ctx, q, actor, teamID, userID))
	})
	if err != nil {
		return RemovedMember{}, err
	}
	s.log.InfoContext(ctx, "team member removed", "team_id", teamID, "user_id", userID, "by", a.UserID,
		"revoked_api_key_ids", out.RevokedAPIKeyIDs)
	return out, nil
}
