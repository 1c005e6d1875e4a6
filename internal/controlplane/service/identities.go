package service

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/wrenn-dev/wrenn/internal/controlplane/auth"
	"github.com/wrenn-dev/wrenn/internal/controlplane/auth/oauth"
	"github.com/wrenn-dev/wrenn/internal/db"
)

// Identity is a provider account linked to a user.
type Identity struct {
	Provider  string    `json:"provider"`
	Login     string    `json:"login"`
	Email     string    `json:"email"`
	CreatedAt time.Time `json:"created_at"`
}

// Identities is GET /v1/me/identities: the caller's ways of signing in.
type Identities struct {
	Identities  []Identity `json:"identities"`
	HasPassword bool       `json:"has_password"`
}

// ListIdentities lists the caller's linked providers.
func (s *Service) ListIdentities(ctx context.Context, a auth.AuthContext) (Identities, error) {
	u, err := s.q.GetUserByID(ctx, a.UserID)
	if err != nil {
		return Identities{}, wrapDB("list identities", err)
	}
	rows, err := s.q.ListIdentities(ctx, a.UserID)
	if err != nil {
		return Identities{}, Internal("list identities", err)
	}
	out := Identities{Identities: make([]Identity, 0, len(rows)), HasPassword: u.PasswordHash != nil}
	for _, r := range rows {
		out.Identities = append(out.Identities, Identity{Provider: r.Provider, Login: r.Login, Email: r.Email, CreatedAt: r.CreatedAt})
	}
	return out, nil
}

// UnlinkIdentity removes the caller's identity at provider, unless it is
// their only way to sign in (no password, no other identity). The user row
// is locked so two unlinks at once cannot both see another way left.
func (s *Service) UnlinkIdentity(ctx context.Context, a auth.AuthContext, provider string) error {
	return wrapDB("unlink identity", s.inTx(ctx, func(q *db.Queries) error {
		u, err := q.LockUser(ctx, a.UserID)
		if err != nil {
			return err
		}
		rows, err := q.ListIdentities(ctx, a.UserID)
		if err != nil {
			return err
		}
		linked := false
		for _, r := range rows {
			linked = linked || r.Provider == provider
		}
		if !linked {
			return NotFound(CodeIdentityNotFound, "no "+provider+" account is linked")
		}
		if u.PasswordHash == nil && len(rows) == 1 {
			return Conflict(CodeLastSignInMethod, provider+" is this account's only way to sign in; link another provider first")
		}
		if _, err := q.DeleteIdentity(ctx, db.DeleteIdentityParams{UserID: a.UserID, Provider: provider}); err != nil {
			return err
		}
		return s.audit.IdentityUnlinked(ctx, q, ActorOf(a), a.TeamID, a.UserID, provider)
	}))
}

// linkIdentity links a provider account to userID (the signed-in user who
// started the flow). Linking the same account again is a no-op; an account
// linked to someone else, or a second account of one provider, is refused.
func (s *Service) linkIdentity(ctx context.Context, userID, provider string, p oauth.Profile) error {
	return wrapDB("link identity", s.inTx(ctx, func(q *db.Queries) error {
		u, err := q.LockUser(ctx, userID)
		if isNoRows(err) {
			return Unauthorized(CodeInvalidToken, "the account that started linking no longer exists")
		}
		if err != nil {
			return err
		}
		owner, err := q.GetUserByIdentity(ctx, db.GetUserByIdentityParams{Provider: provider, ProviderUserID: p.ID})
		if err == nil && owner.ID == userID {
			return nil
		}
		if err == nil {
			return Conflict(CodeIdentityTaken, "this "+provider+" account is linked to another Wrenn account")
		}
		if !isNoRows(err) {
			return err
		}
		_, err = q.CreateIdentity(ctx, db.CreateIdentityParams{UserID: userID, Provider: provider, ProviderUserID: p.ID, Login: p.Login, Email: p.Email})
		var pe *pgconn.PgError
		if isUniqueViolation(err) && errors.As(err, &pe) && pe.ConstraintName == "user_identities_pkey" {
			return Conflict(CodeAlreadyLinked, "another "+provider+" account is already linked; unlink it first")
		}
		if isUniqueViolation(err) {
			return Conflict(CodeIdentityTaken, "this "+provider+" account is linked to another Wrenn account")
		}
		if err != nil {
			return err
		}
		team, err := defaultTeamID(ctx, q, userID)
		if err != nil {
			return err
		}
		return s.audit.IdentityLinked(ctx, q, userActor(u), team, userID, provider, p.Login)
	}))
}
